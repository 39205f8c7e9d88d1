"""The verdict bench's figures on constructed per-image results: each could come out bad."""
import numpy as np
import pandas as pd
import pytest

from demo import verdict_bench
from models.verdict import Calibration


def frame(verdicts, defective, correct, agrees, healthy_mass=None):
    n = len(verdicts)
    return pd.DataFrame({"verdict": verdicts, "defective": defective, "correct": correct, "caption_agrees": agrees,
                         "healthy_mass": healthy_mass if healthy_mass is not None else [0.9] * n,
                         "top_defect": [0.05] * n})


def test_caption_check_recall_and_false_alarms_beside_random_flags():
    results = frame(["review", "fail", "pass", "review", "fail", "pass"], [True] * 3 + [False] * 3,
                    [False, False, True, True, True, True], [False, True, True, False, True, True])
    figures = verdict_bench.caption_check_figures(results)
    assert figures["wrong_captions"] == 2 and figures["recall"] == pytest.approx(0.5)
    assert figures["false_alarms"] == pytest.approx(0.25) and figures["precision"] == pytest.approx(0.5)
    assert figures["flag_rate (= recall and false alarms of random flags)"] == pytest.approx(2 / 6)


def test_verdict_figures_count_review_out_of_coverage_and_score_the_decided():
    results = frame(["pass", "review", "fail", "pass"], [False, True, True, True], [True, False, True, False],
                    [True, False, True, True], healthy_mass=[0.95, 0.4, 0.1, 0.7])
    table, captions = verdict_bench.verdict_figures(results, Calibration(t_pass=0.9, t_fail=0.0))
    whole = table.set_index("verdict").loc["thresholds + caption check + input checks"]
    assert whole["coverage"] == pytest.approx(0.75) and whole["error"] == pytest.approx(1 / 3)
    alone = table.set_index("verdict").loc["thresholds only"]  # the 0.7 item is no pass by the thresholds
    assert alone["coverage"] == pytest.approx(0.75) and alone["error"] == pytest.approx(0.0)
    assert captions["caption_accuracy_decided"] == pytest.approx(2 / 3) and captions["sent_to_review"] == 0.25
    assert np.isclose(captions["caption_accuracy_all"], 0.5)


def test_the_wide_check_widens_items_to_4_by_3_and_fits_both_scores():
    from pathlib import Path

    from models.inspector import Inspector

    items = verdict_bench.widened(seed=5, n=4)
    assert all(abs(p.size[0] / p.size[1] - 4 / 3) < 0.02 for p, _ in items)  # a square item, its border widened
    bundle = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    table = verdict_bench.wide_calibration(Inspector.load(bundle, device="cpu"), 2, 7, n_fit=40, n=20)
    assert list(table.index) == ["fitted on center square", "fitted on tiles"]
    assert (table["items"].astype(int) == 20).all() and table["coverage"].between(0, 1).all()


def test_the_strips_check_fits_thresholds_on_strips_and_splits_each_kind():
    from pathlib import Path

    from demo.world import render_strip
    from models.inspector import Inspector

    picture, (start, end), defects = render_strip(5, side=64)
    assert picture.size == (6 * 64, 64) and (start, end) == (5 * 64, 6 * 64) and defects
    assert not render_strip(5, side=64, defective=False)[2]
    inspector = Inspector.load(Path(__file__).resolve().parents[2] / "checkpoints" / "demo", device="cpu")
    table = verdict_bench.strip_calibration(inspector, fit_seed=100, seed=7, n_fit=6, n=4)
    assert table.index[0] == "the bundle's (fitted on single items)"
    assert table.iloc[0]["t_pass"] == inspector.calibration.t_pass and len(table) == 3
    for kind in ("defective", "healthy"):
        shares = table[[f"{kind}: {decision}" for decision in ("fail", "pass", "review")]]
        assert np.allclose(shares.sum(axis=1), 1) and ((shares * 4) % 1 == 0).all().all()  # shares of 4 strips
