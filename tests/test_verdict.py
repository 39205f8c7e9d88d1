"""The verdict: caption check against constructed probabilities, input checks, calibration stored with a bundle."""
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_captioner
from models.caption_check import check_caption
from models.config import GenerationOptions
from models.inspector import Inspector
from models.plausibility import InputRules, feature_distance, fit_statistics, image_problems
from models.verdict import BUNDLE_FILES, CALIBRATION_FILE, Calibration, judge, load_calibration, save_calibration
from models.vlm import WORDS_FILE, ClipCaptioner
from utils.caption_words import named_defects, says_healthy, vocabulary
from utils.knowledge import load_knowledge

KB = load_knowledge("fruit")


def probabilities(**by_id):
    """A distribution over the fruit base: the given ids' probabilities, the rest spread evenly."""
    rest = (1 - sum(by_id.values())) / (len(KB.prompts) - len(by_id))
    return np.array([by_id.get(p.id, rest) for p in KB.prompts])


def photo(seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_matcher_tolerates_product_nouns_and_phrasing():
    assert named_defects("An apple with green mold and a brown bruise.", KB) == ["green_mold", "bruise"]
    assert named_defects("Brown bruise, mold that is green, on this pear", KB) == ["green_mold", "bruise"]
    assert named_defects("A lemon with mold.", KB) == []  # "mold" alone names no prompt
    assert says_healthy("A fresh lemon with smooth unblemished skin.", KB)
    assert not says_healthy("A pear with soft brown rot.", KB)


@pytest.mark.parametrize("caption, probs, problem", [
    ("An apple with blue mold.", dict(green_mold=0.9), "names blue mold, which CLIP gives"),
    ("An apple with a brown bruise.", dict(rot=0.7, bruise=0.2), "leaves out soft brown rot"),
    ("An apple with blue mold.", dict(blue_mold=0.5, wrinkles=0.4), "leaves out wrinkled shrivelled skin"),
    ("A fresh lemon with smooth unblemished skin.", dict(dark_spots=0.6), "calls the item fresh but"),
    ("A fresh pear with a cut in the skin.", dict(cut=0.5, fresh=0.4), "fresh and names a defect"),
    ("A lovely thing.", dict(fresh=0.9), "names nothing from the knowledge base"),
])
def test_captions_that_contradict_the_probabilities_are_flagged(caption, probs, problem):
    check = check_caption(caption, probabilities(**probs), KB)
    assert not check.agrees and problem in check.summary()
    assert check.summary().startswith("the caption disagrees with the evidence: ")


@pytest.mark.parametrize("caption, probs", [
    ("An apple with green mold.", dict(green_mold=0.9)),
    ("A pear with soft brown rot and a brown bruise.", dict(rot=0.6, bruise=0.3)),
    ("A pear with soft brown rot.", dict(rot=0.7, bruise=0.2)),
    ("A fresh lemon with smooth unblemished skin.", dict(fresh=0.9, dark_spots=0.01)),
    ("A fruit that may have dark spots.", dict(dark_spots=0.25, fresh=0.6)),
])
def test_captions_that_agree_pass_the_check(caption, probs):
    assert check_caption(caption, probabilities(**probs), KB).agrees


def test_a_caption_with_words_its_training_never_had_is_flagged():
    known = vocabulary(["A lemon with dark spots and a cut.", "A fresh lemon with ripe even colour."])
    sure = probabilities(dark_spots=0.9)
    assert check_caption("A lemon with dark spots.", sure, KB, known_words=known).agrees
    odd = check_caption("A lemon with dark spots and a dark shroud.", sure, KB, known_words=known)
    assert odd.problems == ["it says \"shroud\", which none of the captioner's training captions says"]
    assert check_caption("A lemon with dark spots and a dark shroud.", sure, KB).agrees  # no vocabulary, no check
    verdict = judge(photo(), None, sure, "A lemon with dark spots and a dark shroud.", KB,
                    Calibration(calibrated=True, knowledge_hash=KB.hash()), known_words=known)
    assert verdict.decision == "review"


def test_unusable_inputs_are_named():
    assert "only 1x1 pixels" in " ".join(image_problems(Image.new("RGB", (1, 1), "red")))
    assert "one flat colour" in " ".join(image_problems(Image.new("RGB", (300, 200), (200, 200, 200))))
    grey = photo().convert("L").convert("RGB")
    assert "no colour" in " ".join(image_problems(grey, InputRules(colour=True)))  # calibrated on colour photos
    assert image_problems(grey) == []  # not calibrated: nothing known about the domain's colour
    assert image_problems(grey, InputRules(colour=False)) == []  # a grayscale domain (solar cells)
    assert image_problems(photo()) == []


def test_judge_sends_implausible_inputs_and_disagreeing_captions_to_review():
    sure_mold = probabilities(green_mold=0.95)
    calibration = Calibration(t_pass=0.9, t_fail=0.5, calibrated=True)
    good = judge(photo(), None, sure_mold, "An apple with green mold.", KB, calibration)
    assert good.decision == "fail" and good.caption_agrees and "green mold 95%" in good.reasons[0]
    fresh = judge(photo(), None, probabilities(fresh=0.97), "A fresh apple with smooth unblemished skin.", KB,
                  calibration)
    assert fresh.decision == "pass"
    wrong = judge(photo(), None, sure_mold, "A fresh apple with smooth unblemished skin.", KB, calibration)
    assert wrong.decision == "review" and wrong.reasons[0].startswith("the caption disagrees")
    pixel = judge(Image.new("RGB", (1, 1), "red"), None, probabilities(fresh=0.97), "A fresh fruit.", KB, calibration)
    assert pixel.decision == "review" and pixel.reasons[0].startswith("not a usable photo")
    unsure = judge(photo(), None, probabilities(fresh=0.5, dark_spots=0.2), "A fruit that may have dark spots.", KB,
                   calibration)
    assert unsure.decision == "review" and unsure.reasons[0].startswith("uncertain")


def test_distance_to_the_calibration_photos_flags_what_was_never_seen():
    rng = np.random.default_rng(0)
    seen = rng.normal(size=(400, 8)) * [3, 2, 1, 1, 1, 0.5, 0.5, 0.1]  # one direction barely varies
    statistics = fit_statistics(seen)
    assert np.median(feature_distance(seen, *statistics)) == pytest.approx(np.sqrt(8), rel=0.2)
    unusual = np.zeros((1, 8))
    unusual[0, 7] = 1.0  # small in absolute terms, but ten standard deviations along the quiet direction
    assert feature_distance(unusual, *statistics)[0] > 5 > feature_distance(np.zeros((1, 8)), *statistics)[0]
    calibration = Calibration(inputs=InputRules(max_distance=5.0), calibrated=True)
    verdict = judge(photo(), unusual, probabilities(fresh=0.97), "A fresh apple.", KB, calibration, statistics)
    assert verdict.decision == "review" and "far from the fruit photos" in verdict.reasons[0]
    near = judge(photo(), seen[:1] * 0, probabilities(fresh=0.97), "A fresh apple.", KB, calibration, statistics)
    assert near.decision == "pass" and near.distance < 1


def test_calibration_travels_with_the_bundle_and_survives_a_resave(tmp_path):
    captioner = make_tiny_captioner("opt")
    captioner.clip.save_pretrained(tmp_path / "clip")
    captioner.lm.save_pretrained(tmp_path / "lm")
    captioner.tokenizer.save_pretrained(tmp_path / "lm")
    captioner.config.clip, captioner.config.lm = str(tmp_path / "clip"), str(tmp_path / "lm")
    bundle = tmp_path / "bundle"
    captioner.save_pretrained(bundle)
    statistics = fit_statistics(np.random.default_rng(0).normal(size=(100, 32)))
    calibration = Calibration(t_pass=0.8, t_fail=0.3, inputs=InputRules(max_distance=9.0), calibrated=True,
                              knowledge_hash=KB.hash(), report={"items": 10})
    save_calibration(bundle, calibration, statistics)
    ClipCaptioner.from_pretrained(bundle, device="cpu").save_pretrained(bundle, include_clip=True)  # a re-save
    captioner.save_pretrained(bundle)  # and one from a captioner that never saw the calibration
    assert all((bundle / name).is_file() for name in BUNDLE_FILES[:2])
    loaded, stored = load_calibration(bundle, KB)
    assert loaded == calibration and all(np.allclose(a, b) for a, b in zip(stored, statistics))
    inspector = Inspector.load(bundle, device="cpu")
    assert inspector.calibration.t_pass == 0.8 and "verdicts calibrated" in inspector.info()
    assert inspector.inspect(photo(), k=2, caption_map=False).verdict.distance > 0  # the check runs
    assert inspector.known_words() is None  # a bundle without its training captions' words: no vocabulary check
    captioner.caption_words = frozenset({"a", "fruit", "with", "mold"})
    captioner.save_pretrained(bundle)
    inspector = Inspector.load(bundle, device="cpu")
    known = inspector.known_words(GenerationOptions(prefix_text="Condition:"))
    assert {"fruit", "mold", "condition", "pear", "apple", "shrivelled"} <= known  # trained on, the prefix's, the
    assert "shroud" not in known  # knowledge base's kinds and descriptions
    (bundle / WORDS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="caption_words.json: damaged list"):
        ClipCaptioner.from_pretrained(bundle, device="cpu")
    other = load_knowledge("fruit").to_dict()
    other["prompts"]["healthy"].append({"id": "shiny", "text": "shiny skin", "healthy": True})
    with pytest.warns(UserWarning, match="another knowledge base"):
        assert not load_calibration(bundle, type(KB).from_dict(other))[0].calibrated
    (bundle / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="calibration.json: damaged calibration"):
        load_calibration(bundle, KB)


def test_inspection_carries_probabilities_and_verdict():
    captioner = make_tiny_captioner("opt")
    inspection = Inspector(captioner.clip, "fruit", captioner).inspect(photo(), k=3, caption_map=False)
    assert inspection.probabilities.shape == (len(KB.prompts),)
    assert inspection.probabilities.sum() == pytest.approx(1, abs=1e-5)
    assert inspection.verdict.decision in ("pass", "fail", "review")
    assert not inspection.verdict.calibrated and "not calibrated" in inspection.verdict.reasons[-1]


def test_the_caption_check_speaks_the_knowledge_base_s_word_for_a_good_item():
    """Solar cells are "functional", not "fresh": the word counts as calling the item good, and the check says it."""
    cells = load_knowledge("solar_cell")
    probabilities = np.array([0.05 if p.healthy else 0.9 / 6 for p in cells.prompts])
    check = check_caption("A functional solar cell.", probabilities, cells)
    assert check.fresh and says_healthy("A functional solar cell.", cells)
    assert any("calls the item functional but CLIP gives the defects 90%" in p for p in check.problems)
