"""The review store: every flag kept whole under concurrency and kills; what a review teaches."""
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils import reviews as reviews_module
from utils.knowledge import load_knowledge
from utils.reviews import COLUMNS, ReviewError, ReviewStore, latest_per_image, training_caption

ROOT = Path(__file__).resolve().parents[1]
KB = load_knowledge("fruit")
MODEL = {"caption": "A fruit with green mold.", "verdict": "fail", "verdict_reasons": ["green mold 90%"],
         "top_k": [{"id": "green_mold", "text": "green mold", "prob": 0.9}], "bundle": "b", "knowledge": "fruit",
         "settings": {"k": 3}}


def jpeg(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def check_consistent(root):
    """Every row file parses and has its image; the CSV lists exactly the row files, each row complete."""
    store = ReviewStore(root)
    rows = store.rows()
    for row in rows:
        assert (root / row["image"]).is_file() and set(COLUMNS) <= set(row)
    table = pd.read_csv(root / "reviews.csv", dtype=str, keep_default_na=False)
    assert list(table.columns) == COLUMNS
    assert sorted(table["id"]) == sorted(row["id"] for row in rows)
    assert (table["sha256"].str.len() == 64).all() and table["judgement"].isin(["right", "wrong"]).all()
    return rows


def test_a_flag_stores_the_image_and_one_plain_row(tmp_path):
    photo = jpeg(tmp_path / "apple.jpg")
    row = ReviewStore(tmp_path / "reviews").add(photo, "wrong", descriptions=["bruise"], caption="  A fruit with  a "
                                                "brown bruise. ", note="looked twice", model=MODEL, user="ann")
    root = tmp_path / "reviews"
    assert (root / row["image"]).read_bytes() == photo.read_bytes()  # byte for byte
    saved = json.loads((root / "rows" / f"{row['id']}.json").read_text())
    assert saved["corrected_caption"] == "A fruit with a brown bruise." and saved["descriptions"] == ["bruise"]
    assert saved["caption"] == MODEL["caption"] and saved["top_k"] == MODEL["top_k"] and saved["user"] == "ann"
    assert saved["original_name"] == "apple.jpg" and saved["time"].endswith("+00:00")
    assert len(check_consistent(root)) == 1


def test_bad_flags_are_refused_and_nothing_is_written(tmp_path):
    store = ReviewStore(tmp_path / "reviews")
    with pytest.raises(ReviewError, match="judgement must be one of right, wrong"):
        store.add(jpeg(tmp_path / "a.jpg"), "maybe")
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(ReviewError, match="notes.jpg: not a readable image"):
        store.add(tmp_path / "notes.jpg", "wrong")
    with pytest.raises(ReviewError, match="needs the inspected image"):
        store.add(None, "wrong")
    assert not (tmp_path / "reviews").exists() or len(store) == 0


def test_eight_threads_flagging_at_once_keep_every_flag(tmp_path):
    photos = [jpeg(tmp_path / f"p{i}.jpg", seed=i) for i in range(8)]
    store = ReviewStore(tmp_path / "reviews")

    def flag(i):
        for j in range(3):
            store.add(photos[i], "wrong" if j % 2 else "right", note=f"{i}-{j}", model=MODEL)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(flag, range(8)))
    rows = check_consistent(tmp_path / "reviews")
    assert sorted(row["note"] for row in rows) == sorted(f"{i}-{j}" for i in range(8) for j in range(3))


def test_a_failed_write_leaves_no_half_row(tmp_path, monkeypatch):
    store = ReviewStore(tmp_path / "reviews")
    store.add(jpeg(tmp_path / "a.jpg"), "right", model=MODEL)

    def broken(path, data):  # the disk fills up half way through the row
        Path(path).parent.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            tmp.write_text(json.dumps(data)[:20])
            raise OSError("No space left on device")
        return reviews_module.atomic_write(path, write)

    monkeypatch.setattr(reviews_module, "write_json", broken)
    with pytest.raises(OSError, match="No space"):
        store.add(jpeg(tmp_path / "b.jpg", seed=1), "wrong", model=MODEL)
    assert len(check_consistent(tmp_path / "reviews")) == 1
    assert not list((tmp_path / "reviews" / "rows").glob(".*"))  # no temporary file left behind


KILLER = """
import sys
from utils.reviews import ReviewStore
store = ReviewStore(sys.argv[1])
print("ready", flush=True)
while True:
    store.add(sys.argv[2], "wrong", descriptions=["bruise"], caption="A fruit with a brown bruise.", note="x" * 2000)
"""


def test_a_process_killed_while_flagging_leaves_only_whole_rows(tmp_path):
    root = tmp_path / "reviews"
    writer = subprocess.Popen([sys.executable, "-c", KILLER, str(root), str(jpeg(tmp_path / "a.jpg"))], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        deadline = time.time() + 60
        while len(list((root / "rows").glob("*.json"))) < 5 and time.time() < deadline:
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    rows = ReviewStore(root).rows()
    assert len(rows) >= 5 and all(row["note"] == "x" * 2000 for row in rows)
    for row in rows:
        assert (root / row["image"]).is_file()
    ReviewStore(root).rebuild_csv()  # the CSV may lag the last row by one: rebuilt from rows/ it is complete
    check_consistent(root)


def test_what_a_review_teaches():
    row = {"judgement": "wrong", "caption": "A fresh fruit.", "descriptions": ["rot", "bruise"],
           "corrected_caption": ""}
    caption, _ = training_caption(row, KB)
    assert caption == "A fruit with soft brown rot and a brown bruise."
    pear = next(kind for kind in KB.kinds if kind.id == "pear")
    assert training_caption(row, KB, pear)[0] == "A pear with soft brown rot and a brown bruise."  # the kind CLIP sees
    assert training_caption({**row, "corrected_caption": "A pear with rot."}, KB)[0] == "A pear with rot."
    assert training_caption({**row, "descriptions": [], "judgement": "right"}, KB)[0] == "A fresh fruit."
    caption, why = training_caption({**row, "descriptions": []}, KB)
    assert caption is None and "without a corrected caption" in why
    older, newer = {"id": "1", "sha256": "s", "note": "old"}, {"id": "2", "sha256": "s", "note": "new"}
    assert latest_per_image([newer, older, {"id": "0", "sha256": "t"}]) == [{"id": "0", "sha256": "t"}, newer]
