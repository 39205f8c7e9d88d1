import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import smooth_photo
from models.clip import CLIPW, make_word_tokenizer, tiny_clip_config
from models.views import PhotoTiles, explain_photo
from train import label
from train.label import apply_class_prior, label_folder, load_class_prior
from utils import encoding
from utils.encoding import LabelError
from utils.data import (DatasetError, DatasetMismatchError, ImageFiles, check_compatible, class_of,
                        collate_images, load_dataset, read_failed, read_image, save_dataset, stratified_split)
from utils.images import ImageLoadError, load_image
from utils.knowledge import KnowledgeBase, load_knowledge
from utils.summarizer import summarize

KB = load_knowledge("fruit")
GOOD = ["flat.png", "fresh/a0.jpg", "fresh/a1.jpg", "rotten/deep/r1.jpg", "rotten/r0.jpg"]
MAX_PIXELS = 5000  # the 64x48 images pass, big.png (80x80) does not


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    tokenizer = make_word_tokenizer(KB.sentences() + KB.kind_sentences())
    return CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu")


photo = smooth_photo


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for seed, name in enumerate(GOOD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        photo(seed).save(root / name)
    photo(9, (80, 80)).save(root / "big.png")
    (root / "rotten" / "corrupt.jpg").write_bytes((root / "fresh" / "a0.jpg").read_bytes()[:300])
    (root / "notes.jpg").write_text("not a picture")
    (root / "fresh" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")  # listed, never lost
    (root / "readme.txt").write_text("skipped: not an image extension")
    photo(10).save(root / ".hidden.jpg")
    (root / ".cache").mkdir()
    photo(11).save(root / ".cache" / "thumb.jpg")
    (root / "empty").mkdir()
    return root


def run(folder, out, clip, **kwargs):
    kwargs = {"top_k": 3, "workers": 0, "progress": False, "max_pixels": MAX_PIXELS, **kwargs}
    return label_folder(folder, out, clip, KB, **kwargs)


def test_a_knowledge_base_without_kinds_labels_without_them(folder, clip, tmp_path):
    solar = load_knowledge("solar_cell")  # lists no product kinds: the captions name its domain noun
    table = load_dataset(label_folder(folder, tmp_path / "ds", clip, solar, top_k=2, workers=0, progress=False,
                                      max_pixels=MAX_PIXELS)).table
    assert "kind" not in table.columns and "kind_prob" not in table.columns
    assert all(caption == summarize([(row.prompt_1, row.prob_1), (row.prompt_2, row.prob_2)], solar)
               for caption, row in zip(table["caption"], table.itertuples()))


def test_labels_a_folder(folder, clip, tmp_path):
    out = run(folder, tmp_path / "ds", clip)
    data = load_dataset(out)
    table = data.table
    assert list(table.columns) == ["id", "path", "class", "caption", "kind", "kind_prob", "prompt_1", "prob_1",
                                   "prompt_2", "prob_2", "prompt_3", "prob_3"]
    assert table["path"].tolist() == GOOD
    assert table["class"].tolist() == ["", "fresh", "fresh", "rotten", "rotten"]
    assert table["id"].tolist() == ["flat", "fresh/a0", "fresh/a1", "rotten/deep/r1", "rotten/r0"]
    probs = table[["prob_1", "prob_2", "prob_3"]].to_numpy()
    assert (np.diff(probs, axis=1) <= 0).all() and (probs > 0).all() and (probs.sum(axis=1) <= 1 + 1e-5).all()
    # A 64x48 photo is labeled from its most defective square tile, the one the app captions it from.
    tiles = PhotoTiles(tuple(KB.healthy_mask()))
    expected = torch.cat([tiles.encode(clip, [load_image(folder / path)], KB.sentences())[0]
                          for path in GOOD])  # one photo at a time: the folder's batches give the same rows
    kinds = clip.probabilities(expected, KB.kind_sentences())
    for (_, row), kind_probs in zip(table.iterrows(), kinds):
        top = [(row[f"prompt_{i}"], row[f"prob_{i}"]) for i in (1, 2, 3)]
        best = int(kind_probs.argmax())  # CLIP's likeliest kind names the product
        assert row["kind"] == KB.kinds[best].id and row["kind_prob"] == pytest.approx(kind_probs[best].item(), abs=1e-4)
        assert row["caption"] == summarize(top, KB, kind=row["kind"])
    # Row i of the embeddings is the image of CSV row i (decoded and encoded outside the pipeline).
    assert data.embeddings.shape == (5, clip.embed_dim)
    torch.testing.assert_close(data.embeddings, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(data.embeddings, clip.encode_images([folder / path for path in GOOD]), atol=1e-3)
    app = explain_photo(clip, load_image(folder / GOOD[1]), KB.sentences(), KB.healthy_mask(), k=3)
    torch.testing.assert_close(data.embeddings[1], app.explanation.embedding[0].detach(), atol=1e-5, rtol=0)

    failed = dict(read_failed(out))
    assert set(failed) == {"big.png", "notes.jpg", "rotten/corrupt.jpg", "fresh/logo.svg"}
    assert "over the limit" in failed["big.png"]
    assert "unsupported image format (.svg)" in failed["fresh/logo.svg"]
    assert "not a readable image" in failed["notes.jpg"]
    assert "corrupt or truncated" in failed["rotten/corrupt.jpg"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 5 and manifest["failed"] == 4 and manifest["top_k"] == 3
    assert manifest["knowledge_hash"] == KB.hash() and manifest["clip"] == clip.name
    assert manifest["embed_dim"] == clip.embed_dim and manifest["source"] == str(folder.resolve())
    assert not (out / ".parts").exists()


def test_empty_folder_is_a_clear_error(tmp_path, clip):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(LabelError, match="no readable image files"):
        run(tmp_path / "images", tmp_path / "out", clip)
    with pytest.raises(LabelError, match="no such folder"):
        run(tmp_path / "missing", tmp_path / "out", clip)
    assert not (tmp_path / "out").exists()


def test_interrupted_run_resumes_to_the_same_result(folder, clip, tmp_path, monkeypatch):
    whole = run(folder, tmp_path / "whole", clip, shard_size=2)
    write_part = encoding._write_part
    written = []

    def write_then_die(*args):
        if written:
            raise KeyboardInterrupt
        written.append(args[1])
        write_part(*args)

    monkeypatch.setattr(encoding, "_write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(folder, tmp_path / "resumed", clip, shard_size=2)
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    assert [p.name for p in (tmp_path / "resumed" / ".parts").glob("shard-*")] == ["shard-000000.safetensors"]

    resumed_shards = []
    monkeypatch.setattr(encoding, "_write_part", lambda *args: (resumed_shards.append(args[1]), write_part(*args)))
    resumed = run(folder, tmp_path / "resumed", clip, shard_size=2)
    assert resumed_shards == [1, 2, 3, 4]  # 9 files in shards of 2: shard 0 was kept
    # a resumed shard is encoded in exactly the batches of an uninterrupted run (utils/encoding.py)
    assert torch.equal(load_dataset(resumed).embeddings, load_dataset(whole).embeddings)  # bitwise: same batches
    for name in ("caption_mapping.csv", "failed_images.txt"):
        assert (resumed / name).read_bytes() == (whole / name).read_bytes()
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (whole, resumed)]
    assert [{k: v for k, v in m.items() if k != "created"} for m in manifests][0] == \
        {k: v for k, v in manifests[1].items() if k != "created"}
    assert not (resumed / ".parts").exists()


def test_finished_run_is_kept_and_mismatches_refused(folder, clip, tmp_path, monkeypatch):
    out = run(folder, tmp_path / "ds", clip)
    before = (out / "manifest.json").read_text()

    def must_not_encode(*args, **kwargs):
        raise AssertionError("a finished dataset with the same inputs was encoded again")

    (out / ".parts").mkdir()  # as left by a run killed between writing the manifest and cleaning up
    (out / ".parts" / "shard-000000.safetensors").write_bytes(b"stale")
    with monkeypatch.context() as patch:
        patch.setattr(label, "encode_shards", must_not_encode)
        assert run(folder, out, clip) == out
    assert (out / "manifest.json").read_text() == before and not (out / ".parts").exists()

    other = KnowledgeBase.from_dict({**KB.to_dict(), "template": "a {domain} showing {prompt}"})
    with pytest.raises(DatasetMismatchError, match="--overwrite"):
        label_folder(folder, out, clip, other, workers=0, progress=False, max_pixels=MAX_PIXELS)
    assert (out / "manifest.json").read_text() == before
    label_folder(folder, out, clip, other, workers=0, progress=False, max_pixels=MAX_PIXELS, overwrite=True)
    assert load_dataset(out).manifest["knowledge_hash"] == other.hash()

    # A half-done run is protected the same way.
    monkeypatch.setattr(encoding, "_write_part", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(folder, tmp_path / "half", clip)
    with pytest.raises(DatasetMismatchError, match="unfinished"):
        label_folder(folder, tmp_path / "half", clip, other, workers=0, progress=False)


def test_other_top_k_relabels_without_refusing(folder, clip, tmp_path):
    out = run(folder, tmp_path / "ds", clip, top_k=2)
    assert load_dataset(run(folder, out, clip, top_k=4)).top_k == 4


def test_foreign_files_are_not_overwritten(folder, clip, tmp_path):
    (tmp_path / "caption_mapping.csv").write_text("mine")
    with pytest.raises(DatasetError, match="not a dataset this tool wrote"):
        run(folder, tmp_path, clip)
    assert (tmp_path / "caption_mapping.csv").read_text() == "mine"


def test_class_prior_moves_mass_toward_the_folders_group(folder, clip, tmp_path):
    healthy = torch.tensor(KB.healthy_mask())
    probs = torch.softmax(torch.randn(3, len(KB.prompts)), dim=1)
    prior = load_class_prior({"rotten": "defect", "fresh": "healthy"}, KB)
    moved = apply_class_prior(probs, ["rotten", "fresh", "other"], prior, KB, weight=4.0)
    torch.testing.assert_close(moved.sum(dim=1), torch.ones(3))
    assert moved[0, ~healthy].sum() > probs[0, ~healthy].sum()
    assert moved[1, healthy].sum() > probs[1, healthy].sum()
    torch.testing.assert_close(moved[2], probs[2])
    # Within the favoured group the ranking is CLIP's: all its prompts scale alike.
    ratio = moved[0, ~healthy] / probs[0, ~healthy]
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))

    every = len(KB.prompts)
    plain = load_dataset(run(folder, tmp_path / "plain", clip, top_k=every)).table
    with pytest.warns(UserWarning, match="missing_folder"):
        tipped = load_dataset(run(folder, tmp_path / "prior", clip, top_k=every,
                                  class_prior={"rotten": "defect", "fresh": ["fresh", "ripe"],
                                               "missing_folder": "healthy"})).table

    def mass(table, healthy_ids):
        return np.array([sum(row[f"prob_{i}"] for i in range(1, every + 1)
                             if (row[f"prompt_{i}"] in healthy_ids)) for _, row in table.iterrows()])

    healthy_ids = {p.id for p in KB.prompts if p.healthy}
    before, after = mass(plain, healthy_ids), mass(tipped, healthy_ids)
    classes = plain["class"].to_numpy()
    assert (after[classes == "rotten"] < before[classes == "rotten"]).all()
    assert (after[classes == "fresh"] > before[classes == "fresh"]).all()
    assert np.allclose(after[classes == ""], before[classes == ""])


def test_class_prior_file_and_errors(tmp_path):
    path = tmp_path / "prior.yaml"
    path.write_text("moldy: [green_mold, blue_mold]\nok: healthy\n")
    assert load_class_prior(path, KB) == {"moldy": ["green_mold", "blue_mold"], "ok": ["fresh", "ripe"]}
    with pytest.raises(LabelError, match="no prompt 'purple_mold'"):
        load_class_prior({"moldy": ["purple_mold"]}, KB)
    with pytest.raises(LabelError, match="expected 'healthy', 'defect'"):
        load_class_prior({"moldy": "rotten"}, KB)


def test_workers_give_the_same_numbers(folder, clip, tmp_path):
    a = load_dataset(run(folder, tmp_path / "a", clip, workers=0, batch_size=2))
    b = load_dataset(run(folder, tmp_path / "b", clip, workers=2, batch_size=2))
    torch.testing.assert_close(a.embeddings, b.embeddings, atol=1e-6, rtol=0)
    assert a.table["caption"].tolist() == b.table["caption"].tolist()


def test_command_line(folder, clip, tmp_path, capsys):
    clip.save_pretrained(tmp_path / "clip")
    out = tmp_path / "ds"
    label.main(["--images", str(folder), "--out", str(out), "--clip", str(tmp_path / "clip"), "--device", "cpu",
                "--workers", "0", "--top-k", "2", "--max-pixels", str(MAX_PIXELS), "--quiet"])
    assert "5 rows, 4 images failed" in capsys.readouterr().out
    assert load_dataset(out).manifest["clip"] == str(tmp_path / "clip")
    with pytest.raises(SystemExit) as exit:
        label.main(["--images", str(tmp_path / "nothing"), "--out", str(out)])
    assert exit.value.code == 1 and "no such folder" in capsys.readouterr().err


def test_separate_shard_processes_then_merge(folder, clip, tmp_path):
    out = tmp_path / "ds"
    for index in (0, 1):
        run(folder, out, clip, shard_size=3, num_shards=2, shard_index=index)
        assert not (out / "manifest.json").exists()
    assert len(list((out / ".parts").glob("shard-*"))) == 3
    merged = run(folder, out, clip, shard_size=3)
    whole = run(folder, tmp_path / "whole", clip, shard_size=3)
    # each shard is encoded in the same batches whichever process runs it (utils/encoding.py)
    assert torch.equal(load_dataset(merged).embeddings, load_dataset(whole).embeddings)  # bitwise: same batches


# utils/data.py

def test_stratified_split_is_balanced_and_deterministic():
    classes = ["a"] * 20 + ["b"] * 3 + ["c"] * 2 + ["d"]
    train, val = stratified_split(classes, val_fraction=0.1, seed=1)
    assert sorted(train + val) == list(range(len(classes))) and not set(train) & set(val)
    val_classes = [classes[i] for i in val]
    assert val_classes.count("a") == 2 and val_classes.count("b") == 1 and val_classes.count("c") == 1
    assert "d" not in val_classes
    assert stratified_split(classes, 0.1, seed=1) == (train, val)
    assert stratified_split(classes, 0.1, seed=2) != (train, val)
    assert stratified_split(classes, 0.0) == (list(range(len(classes))), [])


def test_stratified_split_keeps_groups_together():
    groups = [i // 5 for i in range(50)]  # five captions per image
    train, val = stratified_split([""] * 50, 0.2, seed=0, groups=groups)
    assert len(val) == 10
    assert not {groups[i] for i in train} & {groups[i] for i in val}


def test_class_of():
    assert class_of("/data/x/rotten/deep/a.jpg", "/data/x") == "rotten"
    assert class_of("/data/x/a.jpg", "/data/x") == ""
    assert class_of("fresh/a.jpg", "/data/x") == "fresh"


def test_dataset_round_trip_and_checks(tmp_path):
    table = pd.DataFrame({"id": ["a", "b"], "path": ["a.jpg", "b.jpg"], "class": ["", "x"],
                          "caption": ["A fruit.", "B fruit."], "prompt_1": ["fresh", "rot"], "prob_1": [0.5, 0.25]})
    save_dataset(tmp_path, torch.eye(2, 4), table, {"clip": "c", "knowledge_hash": "h"}, [("z.jpg", "bad\tone")])
    data = load_dataset(tmp_path)
    assert torch.equal(data.embeddings, torch.eye(2, 4)) and data.table.equals(table)  # bitwise: stored bytes
    assert data.manifest["count"] == 2 and data.manifest["failed"] == 1 and data.manifest["embed_dim"] == 4
    assert read_failed(tmp_path) == [("z.jpg", "bad one")] and data.top_k == 1
    check_compatible(data.manifest, clip="c", knowledge_hash="h", embed_dim=4)
    with pytest.raises(DatasetMismatchError, match="knowledge_hash 'h'"):
        check_compatible(data.manifest, clip="c", knowledge_hash="other")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DatasetError, match="no readable manifest"):
        load_dataset(tmp_path)
    assert not list(tmp_path.glob(".*tmp"))


def test_image_files_report_errors_and_draft_stays_close(tmp_path, clip):
    photo(1, (640, 480)).save(tmp_path / "big.jpg", quality=95)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    files = ImageFiles([tmp_path / "big.jpg", tmp_path / "bad.jpg", tmp_path / "gone.jpg"], clip)
    indices, pixels, failed = collate_images([files[i] for i in range(3)])
    assert indices == [0] and pixels.shape == (1, 3, 32, 32)
    assert [i for i, _ in failed] == [1, 2] and "no such file" in failed[1][1]
    full = clip.pixel_values(tmp_path / "big.jpg")
    assert (pixels - full).abs().mean() < 0.02  # draft decode: same picture within a grey level or so
    assert read_image(tmp_path / "big.jpg", draft_size=32).size == (80, 60)  # 1/8 scale, sides still >= 32
    with pytest.raises(ImageLoadError, match="over the limit"):
        read_image(tmp_path / "big.jpg", max_pixels=1000, draft_size=32)


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 1), (3, 2), (16, 2)])
def test_default_workers_leave_the_encoder_a_core(monkeypatch, cores, workers):
    from utils import encoding

    monkeypatch.setattr(encoding.os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert encoding.default_workers() == workers


def test_min_share_keeps_weak_second_defects_out_of_the_captions(folder, clip, tmp_path, monkeypatch):
    from utils.caption_words import named_defects

    defects = {"class_prior": {"fresh": "defect", "rotten": "defect"}, "prior_weight": 50.0}  # near-even defects
    default = load_dataset(run(folder, tmp_path / "default", clip, **defects))
    alone = load_dataset(run(folder, tmp_path / "alone", clip, min_share=1.0, **defects))
    counts = [[len(named_defects(c, KB)) for c in data.table["caption"]] for data in (default, alone)]
    assert max(counts[0]) > 1 and max(counts[1]) == 1  # the top defect only, where the default names more
    assert default.manifest["min_share"] == 0.1 and alone.manifest["min_share"] == 1.0
    assert run(folder, tmp_path / "alone", clip, **defects) == tmp_path / "alone"
    assert load_dataset(tmp_path / "alone").manifest["min_share"] == 0.1  # another share relabels
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    del manifest["min_share"]  # as labeled before the flag: made with the default, so done
    (tmp_path / "default" / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(label, "encode_shards", lambda *a, **k: pytest.fail("labeled a finished dataset again"))
    run(folder, tmp_path / "default", clip, **defects)
    with pytest.raises(LabelError, match="min_share"):
        run(folder, tmp_path / "bad", clip, min_share=1.5)
