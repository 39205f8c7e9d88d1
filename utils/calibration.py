"""Verdict thresholds from labeled validation scores, and the risk-coverage figures that justify them.

Two scores per item, both from CLIP's probabilities over the knowledge base: the healthy mass h (sum over
healthy prompts) and the top defect's probability p. The verdict rule (models/verdict.py):
    pass    h >= t_pass                      (t_pass never below 0.5: the healthy side must win)
    fail    h < 0.5 and p >= t_fail          (the defect side wins, and one defect stands out)
    review  everything else
Thresholds are the most permissive ones that keep, on the validation items, at most `max_defective_passed`
of the defective items passed (a rotten item shipped costs more than a second look) and at most
`max_healthy_failed` of the healthy items failed. numpy only: the scripts and the bench share it.
"""
import math

import numpy as np

PASS, FAIL, REVIEW = "pass", "fail", "review"


def limit_threshold(scores, max_rate, floor=-math.inf):
    """The smallest threshold t >= floor with at most floor(max_rate * n) of `scores` at or above it; it lies
    halfway between the last score allowed through and the first one kept out."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(scores) == 0:
        raise ValueError("no items to calibrate on")
    allowed = int(math.floor(max_rate * len(scores) + 1e-9))
    if allowed >= len(scores):
        return max(floor, 0.0)
    blocked = scores[allowed]  # the largest score that must stay below the threshold
    if blocked == -math.inf:
        return max(floor, 0.0)
    above = scores[scores > blocked]
    upper = above.min() if len(above) else 1.0
    return max(floor, float((blocked + upper) / 2))


def pass_threshold(healthy_mass, defective, max_defective_passed):
    defective = np.asarray(defective, bool)
    if not defective.any():
        raise ValueError("the validation items hold no defective item: the pass threshold cannot be calibrated")
    return limit_threshold(np.asarray(healthy_mass)[defective], max_defective_passed, floor=0.5)


def fail_threshold(healthy_mass, top_defect, defective, max_healthy_failed):
    healthy = ~np.asarray(defective, bool)
    if not healthy.any():
        raise ValueError("the validation items hold no healthy item: the fail threshold cannot be calibrated")
    scores = np.where(np.asarray(healthy_mass) < 0.5, np.asarray(top_defect, dtype=np.float64), -math.inf)
    return limit_threshold(scores[healthy], max_healthy_failed)


def decide(healthy_mass, top_defect, t_pass, t_fail):
    """The verdict rule on arrays of scores -> array of "pass" / "fail" / "review"."""
    healthy_mass, top_defect = np.asarray(healthy_mass), np.asarray(top_defect)
    verdicts = np.full(len(healthy_mass), REVIEW, dtype=object)
    verdicts[healthy_mass >= t_pass] = PASS
    verdicts[(healthy_mass < 0.5) & (top_defect >= t_fail)] = FAIL
    return verdicts


def outcome(verdicts, defective):
    """Coverage (share decided without a human), error among the decided, and the two kinds of error."""
    verdicts, defective = np.asarray(verdicts, dtype=object), np.asarray(defective, bool)
    decided = verdicts != REVIEW
    wrong = ((verdicts == PASS) & defective) | ((verdicts == FAIL) & ~defective)
    return {"items": len(verdicts), "coverage": float(decided.mean()) if len(verdicts) else math.nan,
            "error": float(wrong[decided].mean()) if decided.any() else math.nan,
            "defective_passed": _share((verdicts == PASS)[defective]),
            "healthy_failed": _share((verdicts == FAIL)[~defective])}


def _share(flags):
    return float(np.mean(flags)) if len(flags) else math.nan


def calibrate(healthy_mass, top_defect, defective, max_defective_passed, max_healthy_failed):
    """(t_pass, t_fail) for the two targets."""
    return (pass_threshold(healthy_mass, defective, max_defective_passed),
            fail_threshold(healthy_mass, top_defect, defective, max_healthy_failed))


def risk_coverage(fit, check, targets, ratio=2.0):
    """One row per target rate a: thresholds fitted on `fit` for (a, ratio * a), measured on `check`.
    fit / check: (healthy_mass, top_defect, defective) arrays."""
    rows = []
    for target in targets:
        t_pass, t_fail = calibrate(*fit, target, min(1.0, ratio * target))
        rows.append({"max_defective_passed": target, "max_healthy_failed": min(1.0, ratio * target),
                     "t_pass": t_pass, "t_fail": t_fail, **outcome(decide(check[0], check[1], t_pass, t_fail),
                                                                   check[2])})
    return rows


def baselines(healthy_mass, defective):
    """Error with no review at all (healthy side wins -> pass), and of always giving the commoner class."""
    defective = np.asarray(defective, bool)
    forced = np.where(np.asarray(healthy_mass) >= 0.5, PASS, FAIL)
    return {"no_review_error": outcome(forced, defective)["error"],
            "majority_error": float(min(defective.mean(), 1 - defective.mean()))}


def distance_limit(distances, quantile):
    """The out-of-distribution limit: this quantile of in-distribution items' distances to the reference."""
    return float(np.quantile(np.asarray(distances, dtype=np.float64), quantile))


def scores(probabilities, healthy_mask):
    """(healthy mass, top defect probability) per row of probabilities [n, prompts]."""
    probabilities, healthy = np.asarray(probabilities, dtype=np.float64), np.asarray(healthy_mask, bool)
    return probabilities[:, healthy].sum(axis=1), probabilities[:, ~healthy].max(axis=1)


def split(defective, check_fraction, seed=0):
    """Row indices (fit, check), stratified on defective/healthy: thresholds are fitted on one part and
    measured on the other, so the reported figures are held-out ones."""
    defective = np.asarray(defective, bool)
    rng = np.random.default_rng(seed)
    check = []
    for rows in (np.flatnonzero(defective), np.flatnonzero(~defective)):
        check += list(rng.permutation(rows)[:int(round(check_fraction * len(rows)))])
    check = np.sort(np.asarray(check, dtype=np.int64))
    return np.setdiff1d(np.arange(len(defective)), check), check
