import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import CAPTIONS, make_tiny_captioner
from models.config import GenerationOptions, InspectOptions
from models.vlm import ClipCaptioner
from train import evaluate as evaluate_script
from train import predict as predict_script
from train import train as train_script
from utils.caption_words import vocabulary
from utils.data import save_dataset
from utils.files import short_names
from utils.options import flag_names, from_dict
from utils.knowledge import load_knowledge

CLASSES = ["fresh", "mold", "spots", "cut"]  # one per caption in CAPTIONS
FAST = dict(epochs=2, batch_size=8, lr=3e-3, prefix_length=4, val_fraction=0.25, max_new_tokens=12,
            metrics=("bleu", "rouge", "cider"), device="cpu", progress=False)  # METEOR's java start costs ~15 s


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """The tiny CLIP and LM on disk, where manifests and bundles can name them."""
    root = tmp_path_factory.mktemp("models")
    captioner = make_tiny_captioner("opt")
    captioner.clip.save_pretrained(root / "clip")
    captioner.lm.save_pretrained(root / "lm")
    captioner.tokenizer.save_pretrained(root / "lm")
    return root


def make_dataset(directory, models_dir, per_caption=6, seed=0, **manifest):
    """Each caption's items sit near one random direction, so the mapper has something to learn."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(len(CAPTIONS), 32, generator=generator)
    rows, embeddings = [], []
    for c, (caption, cls) in enumerate(zip(CAPTIONS, CLASSES)):
        for i in range(per_caption):
            rows.append({"id": f"{cls}_{i}", "path": f"{cls}/{i}.jpg", "class": cls, "caption": caption,
                         "prompt_1": "fresh", "prob_1": 0.9})
            embeddings.append(centers[c] + 0.1 * torch.randn(32, generator=generator))
    embeddings = torch.nn.functional.normalize(torch.stack(embeddings), dim=-1)
    knowledge = load_knowledge("fruit")
    info = {"clip": str(models_dir / "clip"), "knowledge": "fruit", "knowledge_hash": knowledge.hash(), "top_k": 1,
            "source": "images", "created": "now", **manifest}
    return save_dataset(directory, embeddings, pd.DataFrame(rows), info)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("run")
    data = make_dataset(root / "data", models_dir, min_share=0.3)
    best = train_script.train([data], root / "out", lm=str(models_dir / "lm"), **FAST)
    return root, data, best


def test_two_epochs_write_metrics_curves_and_bundles(straight_run):
    root, _, best = straight_run
    out = root / "out"
    assert best == out / "best"
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == list(train_script.COLUMNS)
    assert table["epoch"].tolist() == [1, 2]
    assert table[["train_loss", "val_loss"]].map(math.isfinite).all().all()
    assert table["val_loss"].iloc[1] < table["val_loss"].iloc[0]  # it learns
    assert table[["exact_match", "token_f1", "bleu_4", "rouge_l", "cider"]].notna().all().all()
    assert table["meteor"].isna().all()  # left out of FAST: NaN, not a crash
    assert (out / "curves.png").stat().st_size > 1000
    for name in ("best", "last"):
        loaded = ClipCaptioner.from_pretrained(out / name, device="cpu")
        assert loaded.config.label_top_k == 1  # the labels' top-k: the phrase draft's hint summarizes as they do
        assert loaded.config.label_min_share == 0.3  # and their --min-share
        assert loaded.caption_words == vocabulary(CAPTIONS)  # the caption check's vocabulary
        captions = loaded.generate(embeddings=torch.randn(2, 32), max_new_tokens=5)
        assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert not (out / "best" / "optimizer.pt").exists() and (out / "state" / "optimizer.pt").exists()


def test_resume_after_a_crash_gives_the_same_numbers(straight_run, models_dir, monkeypatch, capsys):
    root, data, _ = straight_run
    out = root / "resumed"
    epoch_once = train_script.train_epoch

    def crash_in_second_epoch(run, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return epoch_once(run, epoch, *args)

    monkeypatch.setattr(train_script, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_script.train([data], out, lm=str(models_dir / "lm"), **FAST)
    assert len(pd.read_csv(out / "metrics.csv")) == 1
    monkeypatch.setattr(train_script, "train_epoch", epoch_once)
    with pytest.raises(FileExistsError, match="--resume"):
        train_script.train([data], out, lm=str(models_dir / "lm"), **FAST)
    with pytest.raises(ValueError, match="lr"):
        train_script.train([data], out, lm=str(models_dir / "lm"), resume=True, **{**FAST, "lr": 1e-3})

    config = root / "run.yaml"  # the command line: a YAML config, flags on top
    config.write_text(yaml.safe_dump({"datasets": [str(data)], "lm": str(models_dir / "lm"), "epochs": 7,
                                      "batch-size": 8, "lr": 3e-3, "prefix_length": 4, "val_fraction": 0.25,
                                      "max_new_tokens": 12, "metrics": "bleu,rouge,cider", "device": "cpu"}))
    train_script.main(["--config", str(config), "--epochs", "2", "--out", str(out), "--resume", "--no-progress"])
    straight = pd.read_csv(root / "out" / "metrics.csv").drop(columns="seconds")
    resumed = pd.read_csv(out / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(straight, resumed, rtol=1e-5)
    state = json.loads((out / "state" / "state.json").read_text())
    assert state["epoch"] == 2 and state["options"]["epochs"] == 2


def test_mismatched_manifests_are_refused(tmp_path, models_dir, straight_run):
    _, data, _ = straight_run
    other = make_dataset(tmp_path / "other", models_dir, per_caption=2, clip="openai/clip-vit-base-patch32")
    with pytest.raises(ValueError, match="clip.*different CLIPs"):
        train_script.train([data, other], tmp_path / "out", lm=str(models_dir / "lm"), **FAST)
    relabeled = make_dataset(tmp_path / "relabeled", models_dir, per_caption=2, knowledge_hash="0123456789abcdef")
    with pytest.raises(SystemExit) as stopped:
        train_script.main([str(data), str(relabeled), "--out", str(tmp_path / "out"), "--no-progress"])
    assert stopped.value.code == 2
    with pytest.raises(ValueError, match="allow-clip-mismatch"):
        train_script.train([data], tmp_path / "out", clip="some/other-clip", lm=str(models_dir / "lm"), **FAST)


def test_a_copied_clip_is_the_same_model_and_other_weights_are_not(tmp_path):
    from utils.training_data import same_model

    original, copied, other, empty = (tmp_path / name for name in ("clip", "renamed", "other", "empty"))
    for directory, weights in ((original, b"weights"), (copied, b"weights"), (other, b"weight5")):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(weights)
        (directory / "config.json").write_text(f'{{"name": "{directory.name}"}}')  # configs may differ
    empty.mkdir()
    assert same_model(str(original), str(copied)) and same_model(str(original), str(original / ".." / "clip"))
    assert not same_model(str(original), str(other))
    assert not same_model(str(empty), str(tmp_path / "empty2")) and same_model(str(empty), str(empty))
    assert not same_model(str(original), "openai/clip-vit-base-patch32")


def test_every_flag_is_documented_and_every_option_has_a_flag():
    parser = train_script.build_parser()
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented
    options = {a.dest for a in parser._actions} - {"help", "config", "datasets", "out"}
    assert options == set(flag_names(train_script.TrainOptions))
    assert {"lm", "mapper", "prefix_length", "epochs"} <= options  # the captioner's own config is nested in


def test_options_keep_the_captioner_config_nested():
    opts = from_dict(train_script.TrainOptions, {"lm": "smollm2", "prefix_length": 6, "epochs": 3})
    assert opts.model.lm == "smollm2" and opts.model.prefix_length == 6 and opts.epochs == 3
    with pytest.raises(ValueError, match="unknown keys.*'epochz'"):
        from_dict(train_script.TrainOptions, {"epochz": 3})


def test_evaluate_scores_several_bundles(straight_run, tmp_path, capsys):
    root, data, _ = straight_run
    table = evaluate_script.evaluate([root / "out" / "best", root / "out" / "last"], data, max_items=5, metrics=(),
                                     progress=False, generation=GenerationOptions(max_new_tokens=6))
    assert table["model"].tolist() == ["best", "last"] and (table["items"] == 5).all()
    assert table["loss"].map(math.isfinite).all() and table["token_f1"].between(0, 1).all()
    evaluate_script.main([str(root / "out" / "best"), "--data", str(data), "--split", "val", "--val-fraction", "0.25",
                          "--metrics", "none", "--csv", str(tmp_path / "eval.csv"), "--no-progress"])
    assert pd.read_csv(tmp_path / "eval.csv")["items"].tolist() == [8]  # the run's 8 validation images
    assert "exact_match" in capsys.readouterr().out
    assert short_names(["a/run1/best", "b/run2/best"]) == ["run1/best", "run2/best"]


def test_predict_writes_tables_and_overlays_and_skips_bad_images(straight_run, tmp_path):
    root, _, _ = straight_run
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, size in enumerate([(48, 32), (32, 40)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
            images / ("sub" if i else "") / f"photo{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    records, failed = predict_script.predict(root / "out" / "best", images, out, options=InspectOptions(k=2),
                                             progress=False, generation=GenerationOptions(max_new_tokens=4))
    assert [Path(f).name for f, _ in failed] == ["broken.jpg"]
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 2 and {"image", "model", "caption", "summary", "prompt_2", "prob_2"} <= set(table.columns)
    assert table["verdict"].isin(["pass", "fail", "review"]).all() and table["reason"].str.len().gt(0).all()
    assert {"caption_check", "top_defect", "top_defect_prob"} <= set(table.columns)
    assert (table["prob_1"] >= table["prob_2"]).all()
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["failed"][0]["image"].endswith("broken.jpg") and len(saved["predictions"]) == 2
    for record in saved["predictions"]:
        files = [record["overlays"]["combined"], record["overlays"]["caption"], *record["overlays"]["individual"]]
        assert len(files) == 4 and all(Image.open(out / f).size[0] > 0 for f in files)
    assert "broken.jpg" in (out / "failed_images.txt").read_text()
    predict_script.main([str(images / "photo0.png"), "--bundle", str(root / "out" / "best"), "--out",
                         str(tmp_path / "quick"), "--no-overlays", "--no-progress", "--max-new-tokens", "3"])
    quick = tmp_path / "quick"
    assert len(pd.read_csv(quick / "predictions.csv")) == 1 and not (quick / "overlays").exists()
    # Without overlays a wide or tall photo is still read as the app reads it (its tiles), not its center square.
    predict_script.predict(root / "out" / "best", images, tmp_path / "cheap", options=InspectOptions(k=2),
                           overlays=False, progress=False, generation=GenerationOptions(max_new_tokens=4))
    cheap = pd.read_csv(tmp_path / "cheap" / "predictions.csv")
    assert cheap[["image", "caption", "verdict", "summary", "prompt_1", "prompt_2"]].equals(
        table[["image", "caption", "verdict", "summary", "prompt_1", "prompt_2"]])
    assert table["summary"].str.match(r"An? (fresh )?(apple|orange|tomato|pear|banana|lemon) ").all()  # CLIP's kind
    np.testing.assert_allclose(cheap[["prob_1", "prob_2"]], table[["prob_1", "prob_2"]], atol=1e-4)  # other kernels
