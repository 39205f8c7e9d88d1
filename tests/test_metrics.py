import math
import os

import pytest

from utils import metrics
from utils.metrics import COCO_METRICS, caption_metrics, coco_metrics, exact_match, token_f1

REFERENCES = {
    1: ["An apple with green mold and a bruise."],
    2: ["a pear with dark spots.", "a pear covered in dark spots"],
    3: ["a fresh lemon with smooth skin."],
}
GOOD = {1: "an apple with green mold and a bruise", 2: "a pear with dark spots", 3: "A fresh lemon with smooth skin."}
BAD = {1: "a lemon", 2: "an apple with a cut in the skin", 3: "mold mold mold"}
FAST = ("bleu", "rouge", "cider")  # METEOR's java start takes 10-20 s: see test_meteor_ranks_captions


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(metrics, "_warned", set())


def test_exact_match_ignores_case_and_punctuation():
    assert exact_match("An apple, with mold.", ["a pear", "an apple with mold"]) == 1.0
    assert exact_match("an apple", "an apple with mold") == 0.0
    assert exact_match("", [""]) == 1.0


def test_token_f1_known_values():
    assert token_f1("a red apple", "an apple") == pytest.approx(0.4)  # P 1/3, R 1/2
    assert token_f1("a a a", "a") == pytest.approx(0.5)  # repeats count once per match: P 1/3, R 1
    assert token_f1("a pear", ["an apple", "a pear."]) == 1.0  # the best reference counts
    assert token_f1("mold", "a pear") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "a pear") == 0.0


def test_identical_captions_score_higher_than_different_ones():
    good, bad = coco_metrics(REFERENCES, GOOD, FAST), coco_metrics(REFERENCES, BAD, FAST)
    for name in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert good[name] > bad[name], name
    assert good["bleu_4"] == pytest.approx(1.0) and good["rouge_l"] == pytest.approx(1.0)
    assert math.isnan(good["meteor"])  # not asked for


def test_caption_metrics_combines_everything():
    scores = caption_metrics(REFERENCES, {**GOOD, 3: "a lemon"}, FAST)
    assert set(scores) == {"exact_match", "token_f1", *COCO_METRICS}
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert scores["token_f1"] == pytest.approx((1 + 1 + 2 * (2 / 2) * (2 / 6) / (1 + 2 / 6)) / 3)


def test_empty_predictions_and_missing_references():
    scores = coco_metrics(REFERENCES, {1: "", 2: "", 3: ""}, FAST)
    assert scores["bleu_4"] == pytest.approx(0.0, abs=1e-6) and scores["cider"] == 0.0
    with pytest.raises(ValueError, match="no reference"):
        coco_metrics({1: ["a pear"]}, {1: "a pear", 2: "a lemon"}, FAST)
    assert all(math.isnan(v) for v in coco_metrics(REFERENCES, {}, FAST).values())


def test_no_java_gives_nan_and_one_warning_never_a_crash(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(metrics, "_meteor", None)
    with pytest.warns(RuntimeWarning) as caught:
        first = coco_metrics(REFERENCES, GOOD)
        again = coco_metrics(REFERENCES, GOOD)
    assert math.isnan(first["meteor"]) and math.isnan(again["meteor"])
    assert first["bleu_4"] == pytest.approx(1.0)  # simple tokenization stood in for the java PTB tokenizer
    assert sorted(str(w.message).split()[0] for w in caught) == ["PTB", "meteor"]


@pytest.mark.skipif(not os.environ.get("CLIPCAP_SLOW_TESTS"), reason="METEOR loads for 10-20 s; set "
                    "CLIPCAP_SLOW_TESTS=1 to run it")
def test_meteor_ranks_captions():
    good, bad = coco_metrics(REFERENCES, GOOD, ("meteor",)), coco_metrics(REFERENCES, BAD, ("meteor",))
    assert 0.9 < good["meteor"] <= 1.0 and bad["meteor"] < good["meteor"]


def test_auroc_counts_ties_half():
    assert metrics.auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert metrics.auroc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == 0.75
    assert math.isnan(metrics.auroc([1, 1], [0.1, 0.2]))


def test_best_threshold_separates_when_it_can():
    threshold = metrics.best_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
    assert 0.3 < threshold < 0.6
    assert metrics.best_threshold([1, 1], [0.2, 0.4]) < 0.2  # all positive: below every score
