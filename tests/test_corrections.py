"""The correction round trip: operator reviews -> human-labeled dataset -> training next to auto labels (the
human caption wins for a shared image) -> a bundle continued from the previous one, calibration kept."""
import json

import pytest
import torch

from conftest import make_tiny_captioner, smooth_photo
from models.clip import CLIPW
from models.kinds import kind_probabilities
from models.verdict import Calibration, load_calibration, save_calibration
from train import corrections
from train import train as train_script
from train.label import label_folder
from utils.data import load_dataset, read_failed
from utils.knowledge import load_knowledge
from utils.reviews import ReviewStore
from utils.summarizer import summarize
from utils.training_data import load_training_data

KB = load_knowledge("fruit")
FAST = dict(epochs=1, batch_size=4, val_fraction=0.25, val_max=0, metrics=(), device="cpu", progress=False)


photo = smooth_photo


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny models on disk, a labeled folder, a bundle with a calibration, and reviews of some of its photos."""
    root = tmp_path_factory.mktemp("loop")
    captioner = make_tiny_captioner("opt", prefix_length=2)
    captioner.clip.save_pretrained(root / "clip")
    captioner.lm.save_pretrained(root / "lm")
    captioner.tokenizer.save_pretrained(root / "lm")
    captioner.config.clip, captioner.config.lm = str(root / "clip"), str(root / "lm")
    captioner.save_pretrained(root / "bundle")
    save_calibration(root / "bundle", Calibration(t_pass=0.7, t_fail=0.2, calibrated=True, knowledge_hash=KB.hash()))
    for i in range(8):
        folder = root / "images" / ("healthy" if i < 4 else "defective")
        folder.mkdir(parents=True, exist_ok=True)
        photo(i).save(folder / f"{i}.jpg")
    photo(99).save(root / "new.jpg")
    auto = label_folder(root / "images", root / "auto", str(root / "clip"), KB, top_k=2, workers=0, progress=False)
    store = ReviewStore(root / "reviews")
    store.add(root / "images" / "defective" / "4.jpg", "wrong", descriptions=["bruise"], model={"knowledge": "fruit"})
    store.add(root / "images" / "defective" / "5.jpg", "wrong", caption="A fruit with soft brown rot.")
    store.add(root / "images" / "defective" / "5.jpg", "wrong", caption="A fruit with a cut in the skin.")  # newer
    store.add(root / "new.jpg", "right", model={"caption": "A fresh fruit with smooth unblemished skin."})
    store.add(root / "images" / "healthy" / "0.jpg", "wrong", note="no idea what is wrong")
    return root, auto


def bruise_caption(human):
    """The caption summarized from 4.jpg's ticked bruise: it names the kind CLIP sees ("An apple with ...")."""
    caption, = [c for c in human.captions if c.endswith(" with a brown bruise.")]
    return caption


def test_reviews_become_a_human_labeled_dataset(world):
    root, _ = world
    corrections.main(["--reviews", str(root / "reviews"), "--out", str(root / "human"), "--clip", str(root / "clip"),
                      "--workers", "0", "--quiet"])
    human = load_dataset(root / "human")
    assert human.manifest["labeled_by"] == "human" and human.manifest["knowledge_hash"] == KB.hash()
    ticked = human.captions.index(bruise_caption(human))
    assert sorted(human.captions[:ticked] + human.captions[ticked + 1:]) == [
        "A fresh fruit with smooth unblemished skin.",
        "A fruit with a cut in the skin."]  # the newer review of 5.jpg won
    likeliest = kind_probabilities(CLIPW.from_pretrained(str(root / "clip")), human.embeddings[[ticked]], KB).argmax()
    assert human.captions[ticked] == summarize([("bruise", 1.0)], KB, kind=KB.kinds[int(likeliest)])  # as label.py
    assert list(human.table["class"]).count("defective") == 2
    (skipped, reason), = read_failed(root / "human")
    assert "marked wrong without a corrected caption" in reason


def test_training_prefers_the_human_caption_of_a_shared_image(world):
    root, auto = world
    if not (root / "human" / "manifest.json").is_file():
        corrections.import_reviews(root / "reviews", root / "human", str(root / "clip"), progress=False)
    plain = load_training_data([auto])
    mixed = load_training_data([auto, root / "human"], human_repeat=3)
    assert len(plain.captions) == 8
    assert len(mixed.captions) == 8 - 2 + 3 * 3  # 4.jpg and 5.jpg replaced; every human row three times
    shared = load_dataset(auto).embeddings[[plain.paths.index("0:defective/4.jpg")]]
    rows = [i for i, e in enumerate(mixed.embeddings) if torch.nn.functional.cosine_similarity(e, shared[0], 0) > 0.9999]
    assert {mixed.captions[i] for i in rows} == {bruise_caption(load_dataset(root / "human"))}


def test_retraining_starts_from_the_previous_bundle_and_keeps_its_calibration(world):
    root, auto = world
    if not (root / "human" / "manifest.json").is_file():
        corrections.import_reviews(root / "reviews", root / "human", str(root / "clip"), progress=False)
    best = train_script.train([auto, root / "human"], root / "run", init_from=str(root / "bundle"), lr=1e-9,
                              human_repeat=2, lm=str(root / "lm"), **FAST)
    from safetensors.torch import load_file

    before, after = load_file(root / "bundle" / "mapper.safetensors"), load_file(best / "mapper.safetensors")
    assert all(torch.allclose(before[name], after[name], atol=1e-5) for name in before)  # lr ~0: still the old one
    calibration, _ = load_calibration(best, KB)
    assert calibration.calibrated and calibration.t_pass == 0.7
    assert json.loads((best / "config.json").read_text())["prefix_length"] == 2  # the bundle's, not the default
    fresh = train_script.train([auto], root / "fresh", lr=1e-9, prefix_length=2, lm=str(root / "lm"), **FAST)
    other = load_file(fresh / "mapper.safetensors")
    assert not all(torch.allclose(before[name], other[name], atol=1e-5) for name in before)  # the check can fail


def test_reviews_without_anything_to_learn_are_refused(tmp_path):
    ReviewStore(tmp_path / "reviews").add(_png(tmp_path), "wrong")
    with pytest.raises(SystemExit) as stopped:
        corrections.main(["--reviews", str(tmp_path / "reviews"), "--out", str(tmp_path / "out"), "--quiet"])
    assert stopped.value.code == 1
    with pytest.raises(corrections.LabelError, match="no reviews in it"):
        corrections.reviewed_items(tmp_path / "empty", KB)


def _png(tmp_path):
    photo(1).save(tmp_path / "one.png")
    return tmp_path / "one.png"
