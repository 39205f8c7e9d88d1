"""train/finetune_clip.py on a tiny CLIP and a tiny class folder made here (never the ELPV package)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.clip import CLIPW, fit_tokenizer, make_word_tokenizer, tiny_clip_config
from models.clip_training import set_trainable
from train import finetune_clip as finetune
from utils.class_folders import ClassFolderError, class_targets, scan_class_folders
from utils.knowledge import KnowledgeBase

KNOWLEDGE = {"name": "panels", "domain": "panel", "template": "an image of a {domain} with {prompt}",
             "prompts": {"good": [{"id": "clean", "text": "a clean surface", "healthy": True}],
                         "cracks": [{"id": "crack", "text": "a dark crack", "severity": "severe"}],
                         "spots": [{"id": "spot", "text": "a faint spot", "severity": "mild"}]}}
FAST = dict(text_warmup=5, phase1_epochs=1, phase1_blocks=1, phase2_epochs=1, phase2_blocks=-1, batch_size=4, workers=0,
            val_fraction=0.25, progress=False, device="cpu")


@pytest.fixture(scope="module")
def knowledge_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("kb") / "panels.json"
    path.write_text(json.dumps(KNOWLEDGE))
    return str(path)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP whose word-level tokenizer knows none of the knowledge base's domain words."""
    torch.manual_seed(0)
    tokenizer = make_word_tokenizer(["a photo of an apple with", "an image of a"])
    clip = CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu")
    directory = tmp_path_factory.mktemp("clip") / "tiny"
    clip.save_pretrained(directory)
    return directory


def write_cell(path, cracked, seed):
    """A 40 px grey square, with a dark diagonal line when cracked."""
    rng = np.random.default_rng(seed)
    pixels = 170 + rng.integers(-20, 20, (40, 40))
    if cracked:
        for i in range(40):
            pixels[i, max(0, i - 2):i + 2] = 30
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).convert("L").save(path)


@pytest.fixture
def cells(tmp_path):
    for i in range(8):
        write_cell(tmp_path / "cells" / "clean" / "mono" / f"c{i}.png", False, i)
        write_cell(tmp_path / "cells" / "crack" / f"k{i}.png", True, 100 + i)
    return tmp_path / "cells"


def test_fit_tokenizer_adds_the_new_words_and_keeps_the_old_ids(clip_dir):
    clip = CLIPW.from_pretrained(clip_dir, device="cpu")
    before = dict(clip.tokenizer.get_vocab())
    old_rows = clip.model.text_model.embeddings.token_embedding.weight.clone()
    kb = KnowledgeBase.from_dict(KNOWLEDGE)
    added = fit_tokenizer(clip, kb.sentences())
    assert {"crack", "clean", "panel", "surface"} <= set(added)
    assert all(clip.tokenizer.get_vocab()[word] == index for word, index in before.items())
    ids = clip.tokenizer(kb.sentences())["input_ids"]
    assert all(clip.tokenizer.unk_token_id not in row for row in ids)
    grown = clip.model.text_model.embeddings.token_embedding.weight
    assert grown.shape[0] == len(before) + len(added)
    assert torch.equal(grown[:len(before)], old_rows)  # bitwise: the old rows are copied, not recomputed
    assert fit_tokenizer(clip, kb.sentences()) == []


def test_phase_switch_unfreezes_exactly_the_named_blocks(clip_dir):
    model = CLIPW.from_pretrained(clip_dir, device="cpu").model
    set_trainable(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    last_blocks = ("vision_model.encoder.layers.1.", "text_model.encoder.layers.1.")
    for name, _ in model.named_parameters():
        named = (name.startswith(last_blocks) or name == "logit_scale"
                 or name.startswith(("visual_projection", "text_projection", "vision_model.post_layernorm",
                                     "text_model.final_layer_norm")))
        assert (name in trainable) == named, name
    set_trainable(model, -1)
    assert all(p.requires_grad for p in model.parameters())
    set_trainable(model, 0, text=False)
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {
        "visual_projection", "vision_model", "logit_scale"}


def test_phase_one_moves_only_the_named_blocks(clip_dir, cells, knowledge_file, tmp_path):
    out = finetune.finetune_clip(cells, tmp_path / "tuned", clip=str(clip_dir), knowledge=knowledge_file,
                                 **{**FAST, "phase2_epochs": 0, "lr1": 1e-2})
    start = CLIPW.from_pretrained(clip_dir, device="cpu").model.vision_model.state_dict()
    tuned = CLIPW.from_pretrained(out, device="cpu").model.vision_model.state_dict()
    frozen = [k for k in start if k.startswith(("encoder.layers.0.", "embeddings."))]
    assert all(torch.equal(start[k], tuned[k]) for k in frozen)  # bitwise: the optimizer never touches frozen weights
    fc1 = "encoder.layers.1.mlp.fc1.weight"
    assert not torch.equal(start[fc1], tuned[fc1])  # bitwise: a trained block moved


def test_output_is_a_clip_directory_with_its_history(clip_dir, cells, knowledge_file, tmp_path):
    out = finetune.finetune_clip(cells, tmp_path / "tuned", clip=str(clip_dir), knowledge=knowledge_file,
                                 views=8, **FAST)
    info = json.loads((out / finetune.SETTINGS_FILE).read_text())
    assert [row["epoch"] for row in info["history"]] == [1, 2] and info["best_epoch"] in (1, 2)
    assert {"val_auroc", "val_accuracy", "threshold", "val_class_accuracy"} <= set(info["history"][0])
    assert not (tmp_path / "tuned.partial").exists()
    clip = CLIPW.from_pretrained(out, device="cpu")
    assert clip.views == 8
    probabilities = clip.probabilities(sorted(cells.rglob("*.png"))[:2], KnowledgeBase.from_dict(KNOWLEDGE).sentences())
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(1), torch.ones(2))
    assert finetune.finetune_clip(cells, out, clip=str(clip_dir), knowledge=knowledge_file, views=8, **FAST) == out
    with pytest.raises(FileExistsError, match="--overwrite"):
        finetune.finetune_clip(cells, out, clip=str(clip_dir), knowledge=knowledge_file, **FAST)


def test_resume_gives_the_same_weights(clip_dir, cells, knowledge_file, tmp_path, monkeypatch):
    options = dict(clip=str(clip_dir), knowledge=knowledge_file, **FAST)
    straight = finetune.finetune_clip(cells, tmp_path / "straight", **options)
    save_epoch = finetune.save_epoch

    def save_then_stop(run, opts):
        save_epoch(run, opts)
        raise KeyboardInterrupt  # killed right after epoch 1 was saved

    monkeypatch.setattr(finetune, "save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune_clip(cells, tmp_path / "resumed", **options)
    assert (tmp_path / "resumed.partial" / "state").is_dir() and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(finetune, "save_epoch", save_epoch)
    resumed = finetune.finetune_clip(cells, tmp_path / "resumed", **options)
    a = CLIPW.from_pretrained(straight, device="cpu").model.state_dict()
    b = CLIPW.from_pretrained(resumed, device="cpu").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    history = [json.loads((d / finetune.SETTINGS_FILE).read_text())["history"] for d in (straight, resumed)]
    assert [r["loss"] for r in history[0]] == pytest.approx([r["loss"] for r in history[1]], abs=1e-4)


def test_fresh_clip_from_sizes(cells, knowledge_file, tmp_path):
    out = finetune.finetune_clip(cells, tmp_path / "fresh", clip="fresh", knowledge=knowledge_file, image_size=16,
                                 patch_size=8, width=16, layers=1, heads=1, text_width=16, text_layers=1,
                                 embed_dim=16, **{**FAST, "phase1_blocks": -1})
    assert CLIPW.from_pretrained(out, device="cpu").patch_grid == 2


def test_bad_class_folders_are_named(tmp_path, cells):
    with pytest.raises(ClassFolderError, match="no such folder"):
        scan_class_folders(tmp_path / "missing")
    (cells / "stray").mkdir()
    with pytest.raises(ClassFolderError, match="stray: empty class folder"):
        scan_class_folders(cells)
    (cells / "stray").rmdir()
    write_cell(cells / "loose.png", False, 0)
    with pytest.raises(ClassFolderError, match="outside any class folder.*loose.png"):
        scan_class_folders(cells)
    (cells / "loose.png").unlink()
    folders = scan_class_folders(cells)
    assert folders.names == ["clean", "crack"] and "clean/mono" in folders.strata
    only = tmp_path / "only"
    write_cell(only / "clean" / "a.png", False, 0)
    with pytest.raises(ClassFolderError, match="at least two classes"):
        scan_class_folders(only)


def test_class_maps_are_checked(tmp_path):
    kb = KnowledgeBase.from_dict(KNOWLEDGE)
    targets = class_targets({"ok": "healthy", "maybe": {"clean": 2, "spot": 1}, "bad": ["crack", "spot"]},
                            kb, ["ok", "maybe", "bad"])
    assert np.allclose(targets, [[1, 0, 0], [2 / 3, 0, 1 / 3], [0, 0.5, 0.5]])
    assert np.allclose(class_targets(None, kb, ["clean", "crack"]), [[1, 0, 0], [0, 1, 0]])
    mapping = tmp_path / "map.yaml"
    mapping.write_text("ok: healthy\nbad: [crack, mould]\n")
    with pytest.raises(ClassFolderError, match=r"map.yaml: bad: no prompt 'mould'"):
        class_targets(str(mapping), kb, ["ok", "bad"])
    with pytest.raises(ClassFolderError, match="no entry for the class folder.*other"):
        class_targets({"ok": "healthy"}, kb, ["ok", "other"])
    with pytest.raises(ClassFolderError, match="cells: rotten: no prompt 'rotten'"):
        class_targets(None, kb, ["clean", "rotten"], root="cells")
    with pytest.raises(ClassFolderError, match="weights add up to 0"):
        class_targets({"ok": {"clean": 0}}, kb, ["ok"])


def test_script_reports_bad_folders(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--clip", "fresh"])
    assert stop.value.code == 2
    assert "nothing: no such folder" in capsys.readouterr().err


def test_symmetric_views_are_saved_and_make_the_embedding_turn_invariant(clip_dir, tmp_path):
    from models.views import explain_photo

    clip = CLIPW.from_pretrained(clip_dir, device="cpu")
    pixels = torch.randn(2, 3, 32, 32)
    turned = torch.rot90(pixels, 1, (-2, -1)).flip(-1)
    assert not torch.allclose(clip.encode_images(pixels), clip.encode_images(turned), atol=1e-4)
    clip.views = 8
    assert torch.allclose(clip.encode_images(pixels), clip.encode_images(turned), atol=1e-5)
    clip.save_pretrained(tmp_path / "eight")
    assert CLIPW.from_pretrained(tmp_path / "eight", device="cpu").views == 8
    found = explain_photo(clip, Image.new("RGB", (40, 40), "gray"), ["a", "b", "c"], [False] * 3, k=2).explanation
    assert found.maps.shape == (2, 4, 4)
    (tmp_path / "eight" / "inference.json").write_text('{"views": 3}')
    with pytest.raises(ValueError, match="inference.json"):
        CLIPW.from_pretrained(tmp_path / "eight", device="cpu")


def test_phase_two_unfreezes_exactly_its_blocks(clip_dir, cells, knowledge_file, tmp_path, monkeypatch):
    trainable, save_epoch = [], finetune.save_epoch

    def record_then_save(run, opts):
        trainable.append({name for name, p in run.clip.model.named_parameters() if p.requires_grad})
        save_epoch(run, opts)

    monkeypatch.setattr(finetune, "save_epoch", record_then_save)
    finetune.finetune_clip(cells, tmp_path / "tuned", clip=str(clip_dir), knowledge=knowledge_file,
                           **{**FAST, "phase1_blocks": 0, "phase2_blocks": 1})
    heads = ("logit_scale", "visual_projection", "text_projection", "vision_model.post_layernorm",
             "text_model.final_layer_norm")
    last_blocks = ("vision_model.encoder.layers.1.", "text_model.encoder.layers.1.")
    assert trainable[0] == {name for name in trainable[1] if name.startswith(heads)}
    assert trainable[1] - trainable[0] == {name for name, _ in CLIPW.from_pretrained(clip_dir, device="cpu")
                                           .model.named_parameters() if name.startswith(last_blocks)}


def test_a_class_with_no_readable_image_is_named(clip_dir, cells, knowledge_file, tmp_path):
    for path in (cells / "crack").glob("*.png"):
        path.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="could not be read"), pytest.raises(ValueError, match="class folder.*crack"):
        finetune.finetune_clip(cells, tmp_path / "tuned", clip=str(clip_dir), knowledge=knowledge_file, **FAST)
    assert not (tmp_path / "tuned").exists()


def test_input_size_interpolates_the_position_embeddings_and_is_saved(clip_dir, cells, knowledge_file, tmp_path):
    from models.clip_training import resize_input

    clip = CLIPW.from_pretrained(clip_dir, device="cpu")
    before = clip.model.vision_model.embeddings.position_embedding.weight.detach().clone()
    resize_input(clip, 48)
    after = clip.model.vision_model.embeddings.position_embedding.weight.detach()
    assert after.shape == (6 * 6 + 1, before.shape[1]) and clip.patch_grid == 6
    assert torch.equal(after[0], before[0])  # bitwise: the class token's position is copied, not interpolated
    # bicubic interpolation keeps a smooth grid's mean within a few percent of its spread
    torch.testing.assert_close(after[1:].mean(0), before[1:].mean(0), atol=0.1 * before[1:].std().item(), rtol=0)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        resize_input(clip, 50)
    out = finetune.finetune_clip(cells, tmp_path / "big", clip=str(clip_dir), knowledge=knowledge_file,
                                 input_size=48, **FAST)
    tuned = CLIPW.from_pretrained(out, device="cpu")
    assert tuned.image_size == 48 and tuned.pixel_values(sorted(cells.rglob("*.png"))[0]).shape[-1] == 48


def test_class_weights_balance_the_classes():
    from models.clip_training import class_weights

    classes = torch.tensor([0] * 6 + [2] * 2)
    torch.testing.assert_close(class_weights(classes, 1.0, 3)[classes].sum(), torch.tensor(8.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(class_weights(classes, 1.0, 3)[[0, 2]], torch.tensor([8 / 12, 2.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(class_weights(classes, 0.0, 3), torch.ones(3), atol=0, rtol=0)


def test_balance_changes_the_training(clip_dir, cells, knowledge_file, tmp_path):
    (tmp_path / "cells" / "crack" / "k0.png").unlink()  # 8 clean, 7 cracked: weights differ from 1
    options = dict(clip=str(clip_dir), knowledge=knowledge_file, **FAST)
    plain = finetune.finetune_clip(cells, tmp_path / "plain", **options)
    balanced = finetune.finetune_clip(cells, tmp_path / "balanced", balance=1.0, **options)
    losses = [json.loads((d / finetune.SETTINGS_FILE).read_text())["history"][0]["loss"] for d in (plain, balanced)]
    assert losses[0] != pytest.approx(losses[1], abs=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "relevancy", "legrad"])
def test_with_symmetric_views_a_turned_image_gets_the_turned_map(clip_dir, method):
    """Every view counts in the embedding, so every view counts in the map: the map of a turned image is the
    turned map (reading only the first view, it was not)."""
    from models.clip import square_symmetries
    from models.explain import Explainer

    clip = CLIPW.from_pretrained(clip_dir, device="cpu")
    clip.views = 8
    explainer = Explainer(clip)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = explainer.prompt_maps(pixels, ["a", "b"], method=method)
    for view, turned in enumerate(square_symmetries(pixels)):
        expected = square_symmetries(maps[None])[view][0]
        assert torch.allclose(explainer.prompt_maps(turned, ["a", "b"], method=method), expected, atol=1e-4)
