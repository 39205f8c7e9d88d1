"""The demo bundle the repository ships (checkpoints/demo), on a small world it never saw: it loads, and its
CLIP, captions and kinds beat chance by a wide margin. A damaged, stale or half-trained bundle fails here."""
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.captions import chance, scores
from demo.world import load_truth, write_world
from models.inspector import Inspector
from models.vlm import ClipCaptioner
from utils.knowledge import load_knowledge

BUNDLE = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
N = 36  # a few seconds of captions; the full held-out figures come from `python -m demo.evaluate`


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    world = write_world(tmp_path_factory.mktemp("held-out"), N, seed=11, width=128, height=128, progress=False)
    return world, load_truth(world)


@pytest.fixture(scope="module")
def captioner():
    return ClipCaptioner.from_pretrained(BUNDLE, device="cpu")


def test_the_bundle_ships_with_the_repository():
    for name in ("config.json", "mapper.safetensors", "clip/model.safetensors", "calibration.json", "demo.json",
                 "caption_words.json"):
        assert (BUNDLE / name).is_file(), f"{BUNDLE / name} is missing: the app's default must work on a fresh clone"


def test_clip_ranks_the_primary_defect_first_well_above_chance(captioner, held_out):
    world, truth = held_out
    knowledge = load_knowledge(captioner.config.knowledge)
    probs = captioner.clip.probabilities([world / p for p in truth["path"]], knowledge.sentences())
    best = [knowledge.prompts[i] for i in probs.argmax(dim=1).tolist()]
    right = [p.healthy if primary == "healthy" else p.id == primary for p, primary in zip(best, truth["primary"])]
    chance_top1 = 1 / (1 + sum(not p.healthy for p in knowledge.prompts))
    assert np.mean(right) > chance_top1 + 0.5, (np.mean(right), chance_top1)


def test_captions_name_the_defect_and_the_kind_and_do_not_repeat(captioner, held_out):
    world, truth = held_out
    knowledge = load_knowledge(captioner.config.knowledge)
    with torch.no_grad():
        embeddings = captioner.clip.encode_images([world / p for p in truth["path"]])
    captions = captioner.caption_embeddings(embeddings)
    got, base = scores(captions, truth, knowledge), chance(truth, knowledge)
    assert got["repeated"] == 0, captions
    assert got["primary"] > base["primary"] + 0.5 and got["kind"] > base["kind"] + 0.5, (got, base)
    assert got["absent"] < base["absent"] - 0.3, (got, base)


def test_the_app_default_inspects_a_photo_with_a_calibrated_verdict(held_out):
    world, truth = held_out
    found = Inspector.load(BUNDLE, device="cpu").inspect(world / truth["path"].iloc[0], caption_map=False)
    assert found.caption and found.verdict.calibrated and found.verdict.decision in ("pass", "fail", "review")
