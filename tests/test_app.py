"""The app served for real on 127.0.0.1 with tiny models, scripted through gradio_client like a user's script."""
import os
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app as app_module
from conftest import make_tiny_captioner
from models.clip import CLIPW, make_word_tokenizer, tiny_clip_config
from models.config import GenerationOptions
from models.inspector import Inspector
from utils.knowledge import load_knowledge
from utils.reviews import ReviewStore
from utils.plot import percent_text, title_for

MAX_MB = 1  # small, so a too-large upload is cheap to make
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")  # gradio's own pandas use
FAST = dict(max_new_tokens=4)  # generation settings that keep each call quick


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(inspector, downloads, concurrency=1):
    """(app, client) for the app launched in this process; close the app when done. Reviews go next to the
    downloads, never into the repository."""
    app = app_module.build_app(inspector, concurrency=concurrency, max_image_mb=MAX_MB, examples=[],
                               review_dir=downloads / "reviews")
    _, url, _ = app_module.launch(app, max_image_mb=MAX_MB, server_name="127.0.0.1", server_port=free_port(),
                                  prevent_thread_lock=True, quiet=True)
    try:
        return app, Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
    except Exception:
        app.close()
        raise


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    captioner = make_tiny_captioner("opt")
    inspector = Inspector(captioner.clip, "fruit", captioner, max_pixels=MAX_MB * app_module.PIXELS_PER_MB)
    # concurrency 4: concurrent requests must really overlap on the shared models
    downloads = tmp_path_factory.mktemp("downloads")
    app, client = serve(inspector, downloads, concurrency=4)
    try:
        yield SimpleNamespace(client=client, inspector=inspector, reviews=downloads / "reviews")
    finally:
        app.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Eight different noise photos of assorted sizes, as JPEG files."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        size = (int(rng.integers(48, 120)), int(rng.integers(48, 120)))
        path = folder / f"photo_{seed}.jpg"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def explain(client, path, **options):
    return client.predict(handle_file(str(path)), **{**FAST, **options}, api_name="/explain")


def test_explain_returns_the_documented_types(served, photos):
    caption, top, combined, gallery, caption_map, verdict, details, phrases, pick, phrase_maps, note = explain(
        served.client, photos[0], k=3)
    assert isinstance(caption, str) and caption
    confidences = [c["confidence"] for c in top["confidences"]]
    assert len(confidences) == 3 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1
    assert top["label"] == top["confidences"][0]["label"]
    assert Image.open(combined).size[0] > 0 and Image.open(caption_map).size[0] > 0
    # labels read as the legends do, "description (62.3%)", so 0.5% never shows as "0%"
    assert all(c["label"].endswith(f" ({percent_text(c['confidence'])})") for c in top["confidences"])
    assert [item["caption"] for item in gallery] == [title_for(c["label"].rsplit(" (", 1)[0], c["confidence"])
                                                     for c in top["confidences"]]
    assert all(Image.open(item["image"]).size[0] > 0 for item in gallery)
    assert details["verdict"] in ("pass", "fail", "review") and details["caption"] == caption
    assert f"<b>{details['verdict'].upper()}</b>" in verdict and details["verdict_reasons"][0] in verdict
    assert [t["text"] for t in details["top_k"]] == [c["label"].rsplit(" (", 1)[0] for c in top["confidences"]]
    assert details["settings"]["k"] == 3 and details["settings"]["generation"]["max_new_tokens"] == 4
    assert note.startswith("Kind: **") and "greedy decoding" in note and "whole photo" in note
    assert details["view"] == "tiles" and isinstance(details["phrases"], list)
    assert "".join(item["token"] for item in phrases).split() == caption.split()  # every word, in order
    assert len(phrase_maps) == 1 + len(details["phrases"]) and phrase_maps[0]["caption"] == "whole caption"


def test_the_note_says_which_view_was_used(served, photos):
    *_, note = explain(served.client, photos[2], k=1, caption_map=False, view="center")
    assert "center square only" in note


def test_a_sampled_caption_reports_its_seed_and_the_seed_gives_it_again(served, photos):
    caption, *_, note = explain(served.client, photos[0], k=1, caption_map=False, temperature=1.0, seed=-1)
    seed = int(re.search(r"seed (\d+)", note).group(1))
    again, *_, again_note = explain(served.client, photos[0], k=1, caption_map=False, temperature=1.0, seed=seed)
    assert again == caption and f"seed {seed}" in again_note
    *_, hot = explain(served.client, photos[0], k=1, caption_map=False, temperature=2.0)
    assert "gibberish" in hot  # the hint comes with the caption it explains


def test_settings_reach_the_inspector(served, photos):
    _, top, _, gallery, caption_map, *_ = explain(served.client, photos[1], k=2, method="relevancy",
                                                  caption_map=False)
    assert len(top["confidences"]) == 2 and len(gallery) == 2 and caption_map is None
    with pytest.raises(Exception, match="unknown method"):
        explain(served.client, photos[1], method="no-such-method")


def test_concurrent_calls_each_get_their_own_results(served, photos):
    def signature(path):
        caption, top, combined, *_ = explain(served.client, path, k=2, caption_map=False)
        return caption, [(c["label"], round(c["confidence"], 4)) for c in top["confidences"]], \
            np.asarray(Image.open(combined), dtype=np.float32)

    alone = [signature(path) for path in photos]
    with ThreadPoolExecutor(len(photos)) as pool:
        together = list(pool.map(signature, photos))
    assert len({str(top) for _, top, _ in alone}) == len(photos)  # the photos really differ
    for (caption, top, picture), (caption_c, top_c, picture_c) in zip(alone, together):
        assert (caption_c, top_c) == (caption, top)
        assert picture_c.shape == picture.shape and np.abs(picture_c - picture).mean() < 1.0  # same heat maps


def test_bad_uploads_get_a_clear_error_and_the_server_stays_up(served, photos, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not a photo")
    truncated = tmp_path / "broken.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:300])
    huge = tmp_path / "huge.png"  # a small file of too many pixels (a decompression bomb in miniature)
    Image.new("RGB", (2100, 2000), "white").save(huge)
    too_big = tmp_path / "too_big.png"  # over the upload limit itself
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(too_big)
    for path, message in [(not_image, "notes.txt: not a readable image"), (truncated, "broken.jpg: corrupt"),
                          (huge, "over the limit")]:
        with pytest.raises(Exception, match=message):
            explain(served.client, path)
    with pytest.raises(Exception, match="exceeds the maximum file size"):
        explain(served.client, too_big)
    caption, top, *_ = explain(served.client, photos[2])
    assert caption and top["confidences"]


def test_batch_gives_table_csv_and_gallery_and_survives_bad_files(served, photos, tmp_path):
    bad = tmp_path / "readme.txt"
    bad.write_text("not a photo")
    files = [photos[3], bad, photos[4]]
    table, csv, gallery = served.client.predict([handle_file(str(p)) for p in files], k=3, **FAST,
                                                api_name="/batch")
    frame = pd.DataFrame(table["data"], columns=table["headers"])
    assert list(frame.columns) == app_module.BATCH_COLUMNS
    assert list(frame["file"]) == ["photo_3.jpg", "readme.txt", "photo_4.jpg"]
    good, failed = frame.iloc[[0, 2]], frame.iloc[1]
    assert good["caption"].str.len().gt(0).all() and (good["error"] == "").all()
    assert good["probability"].between(0, 1).all()
    assert "not a readable image" in failed["error"] and not failed["caption"]
    saved = pd.read_csv(csv, keep_default_na=False)
    assert list(saved["file"]) == list(frame["file"]) and list(saved["caption"]) == list(frame["caption"])
    assert [item["caption"] for item in gallery] == ["photo_3.jpg", "photo_4.jpg"]
    found = served.inspector.inspect(photos[3], k=3, caption_map=False, generation=GenerationOptions(**FAST))
    defect = next(p for p, _ in found.top_k if not p.healthy)  # the likeliest defect over the whole base
    assert good.iloc[0]["top defect"] == defect.text
    assert good.iloc[0]["verdict"] == found.verdict.decision and good.iloc[0]["reason"] == "; ".join(
        found.verdict.reasons)
    assert set(good["caption check"]) <= {"agrees", "disagrees"} and list(saved["verdict"]) == list(frame["verdict"])


def test_flag_stores_the_operators_correction_with_the_photo(served, photos):
    caption, *_, details, _, _, _, _ = explain(served.client, photos[6], k=3)
    status = served.client.predict(handle_file(str(photos[6])), details, "wrong", ["bruise", "a cut in the skin"],
                                   "A fruit with a brown bruise.", "seen at dock 4", api_name="/flag")
    assert status.startswith("Saved: review")
    row = ReviewStore(served.reviews).rows()[-1]
    assert row["judgement"] == "wrong" and row["descriptions"] == ["bruise", "cut"]  # texts or ids, stored as ids
    assert row["corrected_caption"] == "A fruit with a brown bruise." and row["note"] == "seen at dock 4"
    assert row["caption"] == caption and row["verdict"] == details["verdict"] and row["top_k"] == details["top_k"]
    assert (served.reviews / row["image"]).read_bytes() == photos[6].read_bytes()
    table = pd.read_csv(served.reviews / "reviews.csv", keep_default_na=False)
    assert row["id"] in set(table["id"])
    for judgement, ticked, message in [("", [], "right or wrong"), ("wrong", ["purple spots"], "not in knowledge")]:
        with pytest.raises(Exception, match=message):
            served.client.predict(handle_file(str(photos[6])), details, judgement, ticked, "", "", api_name="/flag")


def test_the_batch_table_can_show_only_what_needs_review():
    frame = pd.DataFrame([["a.jpg", "pass", "", "", "", "", 0.1, ""], ["b.jpg", "review", "", "", "", "", 0.4, ""],
                          ["c.txt", "", "", "", "", "", None, "not a readable image"]], columns=app_module.BATCH_COLUMNS)
    assert list(app_module._needing_review(frame, True)["file"]) == ["b.jpg", "c.txt"]
    assert app_module._needing_review(frame, False) is frame


def test_every_batch_writes_its_own_csv_and_old_ones_go(tmp_path):
    stale = tmp_path / "batch-old"
    stale.mkdir()
    os.utime(stale, (0, 0))
    frame = pd.DataFrame([["a.jpg", "review", "A fruit.", "uncertain", "agrees", "green mold", 0.5, ""]],
                         columns=app_module.BATCH_COLUMNS)
    paths = set()
    threads = [threading.Thread(target=lambda: paths.add(app_module._write_csv(frame, tmp_path))) for _ in range(4)]
    [thread.start() for thread in threads]
    [thread.join() for thread in threads]
    assert len(paths) == 4 and all(pd.read_csv(path, keep_default_na=False).equals(frame) for path in paths)
    assert not stale.exists()


def test_zero_shot_mode_captions_from_the_knowledge_base(tmp_path, photos):
    knowledge = load_knowledge("fruit")
    tokenizer = make_word_tokenizer(knowledge.sentences() + knowledge.kind_sentences())
    clip = CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu")
    app, client = serve(Inspector(clip, knowledge), tmp_path)
    try:
        caption, top, combined, gallery, caption_map, _, details, *_, note = explain(client, photos[5], k=4)
        table, _, _ = client.predict([handle_file(str(photos[5]))], api_name="/batch")
    finally:
        app.close()
    kind = re.search(r"Kind: \*\*(\w+)\*\*", note).group(1)  # CLIP's kind names the product
    assert caption.startswith(("A ", "An ")) and kind in caption and caption.endswith(".")
    assert len(top["confidences"]) == 4 and len(gallery) == 4 and combined and caption_map is None
    assert table["data"][0][2] == caption and table["data"][0][1] == details["verdict"]
    assert "zero-shot" in note


def test_help_documents_every_flag(capsys, monkeypatch):
    monkeypatch.setenv("CLIPCAP_AUTH", "operator:hunter2")
    with pytest.raises(SystemExit) as exit:
        app_module.parse_args(["--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    for flag in ["--checkpoint", "--clip", "--lm", "--knowledge", "--device", "--host", "--port", "--share",
                 "--auth", "--max-image-mb", "--lm-precision", "--concurrency", "--review-dir", "CLIPCAP_AUTH"]:
        assert flag in text
    assert "hunter2" not in text


def test_flags_that_do_not_go_together_are_refused(monkeypatch):
    for argv in (["--clip", "x", "--checkpoint", "y"], ["--clip", "x", "--lm", "smollm2"], ["--auth", "nopassword"]):
        with pytest.raises(SystemExit):
            app_module.parse_args(argv)
    monkeypatch.setenv("CLIPCAP_AUTH", "operator:s3cret:x")
    assert app_module.parse_args([]).auth == ("operator", "s3cret:x")


def test_missing_demo_bundle_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(app_module, "DEMO_BUNDLE", tmp_path / "demo")
    with pytest.raises(SystemExit, match="make demo.*--checkpoint DIR.*--clip"):
        app_module.demo_bundle()


def test_main_loads_a_bundle_and_passes_the_flags_on(monkeypatch, tmp_path):
    captioner = make_tiny_captioner("opt")
    captioner.clip.save_pretrained(tmp_path / "clip")
    captioner.lm.save_pretrained(tmp_path / "lm")
    captioner.tokenizer.save_pretrained(tmp_path / "lm")
    captioner.config.clip, captioner.config.lm = str(tmp_path / "clip"), str(tmp_path / "lm")
    captioner.save_pretrained(tmp_path / "bundle")
    launched = {}
    monkeypatch.setattr(app_module, "launch", lambda app, **options: launched.update(options, app=app))
    app_module.main(["--checkpoint", str(tmp_path / "bundle"), "--device", "cpu", "--port", "7999",
                     "--auth", "operator:secret", "--max-image-mb", "2", "--lm-precision", "bf16"])
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999
    assert launched["auth"] == ("operator", "secret") and launched["max_image_mb"] == 2
    assert {"explain", "batch"} <= {fn.api_name for fn in launched["app"].fns.values()}


def test_sigterm_removes_the_apps_temp_folder(tmp_path):
    """`kill` / `docker stop` must not leave the per-run folder (batch CSVs) behind."""
    import signal
    import subprocess
    import sys
    import time

    knowledge = load_knowledge("fruit")
    tokenizer = make_word_tokenizer(knowledge.sentences() + knowledge.kind_sentences())
    CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu").save_pretrained(
        tmp_path / "clip")
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--clip", str(tmp_path / "clip"), "--device", "cpu",
                               "--port", str(port)], env={**os.environ, "TMPDIR": str(temp)},
                              cwd=app_module.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not list(temp.glob("clipcap-app-*")) or not _listening(port):
            assert server.poll() is None and time.time() < deadline, server.stdout.read()
            time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        server.kill()
    assert not list(temp.glob("clipcap-app-*"))


def _listening(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
