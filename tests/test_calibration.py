"""Verdict thresholds from a constructed validation set meet their stated targets; the risk-coverage figures;
train/calibrate.py writes them into a bundle."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import make_tiny_captioner, smooth_photo
from models.verdict import load_calibration
from train import calibrate
from utils import calibration as cal
from utils.knowledge import load_knowledge


def constructed(n_defective=400, n_healthy=200, seed=0):
    """Healthy items mostly high healthy mass, defective mostly low, with overlap so that targets bite."""
    rng = np.random.default_rng(seed)
    healthy_mass = np.concatenate([rng.beta(2, 6, n_defective), rng.beta(6, 2, n_healthy)])
    top_defect = np.concatenate([rng.uniform(0.2, 0.9, n_defective), rng.uniform(0.0, 0.6, n_healthy)])
    defective = np.concatenate([np.ones(n_defective, bool), np.zeros(n_healthy, bool)])
    return healthy_mass, top_defect, defective


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2])
def test_thresholds_meet_the_stated_targets_on_the_fitted_items(target):
    h, p, d = constructed()
    t_pass, t_fail = cal.calibrate(h, p, d, target, target)
    result = cal.outcome(cal.decide(h, p, t_pass, t_fail), d)
    assert result["defective_passed"] <= target and result["healthy_failed"] <= target
    assert t_pass >= 0.5
    # the most permissive such threshold: down to the next defective item breaks the target (unless the floor binds)
    next_defective = h[d & (h < t_pass)].max()
    looser = cal.outcome(cal.decide(h, p, next_defective, t_fail), d)
    assert t_pass == 0.5 or looser["defective_passed"] > target


def test_looser_targets_decide_more_items_and_risk_grows():
    h, p, d = constructed()
    rows = cal.risk_coverage((h, p, d), (h, p, d), [0.0, 0.01, 0.05, 0.2])
    coverage = [row["coverage"] for row in rows]
    assert coverage == sorted(coverage) and coverage[-1] > coverage[0]
    assert rows[0]["error"] <= rows[-1]["error"]
    assert all(row["defective_passed"] <= row["max_defective_passed"] for row in rows)


def test_held_out_items_stay_near_the_target():
    """Fitted on one half, measured on the other: the guarantee is statistical, not exact."""
    h, p, d = constructed(2000, 1000, seed=1)
    fit, check = cal.split(d, 0.5, seed=0)
    assert abs(d[fit].mean() - d[check].mean()) < 0.01  # stratified
    t_pass, t_fail = cal.calibrate(h[fit], p[fit], d[fit], 0.01, 0.02)
    result = cal.outcome(cal.decide(h[check], p[check], t_pass, t_fail), d[check])
    assert result["defective_passed"] < 0.03 and result["healthy_failed"] < 0.05


def test_decide_rule_and_outcome_by_hand():
    verdicts = cal.decide([0.95, 0.7, 0.2, 0.3, 0.49], [0.01, 0.2, 0.9, 0.1, 0.6], t_pass=0.9, t_fail=0.5)
    assert list(verdicts) == ["pass", "review", "fail", "review", "fail"]
    result = cal.outcome(verdicts, [True, False, True, True, False])
    assert result["coverage"] == pytest.approx(0.6)
    assert result["error"] == pytest.approx(2 / 3)  # a defective passed, a healthy failed, one right
    assert result["defective_passed"] == pytest.approx(1 / 3) and result["healthy_failed"] == pytest.approx(0.5)


def test_a_set_without_one_of_the_classes_cannot_be_calibrated():
    with pytest.raises(ValueError, match="no defective"):
        cal.calibrate([0.9, 0.8], [0.1, 0.1], [False, False], 0.01, 0.01)
    with pytest.raises(ValueError, match="no healthy"):
        cal.calibrate([0.1, 0.2], [0.8, 0.7], [True, True], 0.01, 0.01)


def test_baselines_and_distance_limit():
    base = cal.baselines([0.9, 0.1, 0.6, 0.4], [False, True, True, False])
    assert base["no_review_error"] == pytest.approx(0.5) and base["majority_error"] == pytest.approx(0.5)
    assert cal.distance_limit(np.arange(101) / 100, 0.99) == pytest.approx(0.99)


@pytest.fixture(scope="module")
def bundle_and_folder(tmp_path_factory):
    """A tiny bundle on disk and a labeled validation folder (healthy/ and two defect folders)."""
    root = tmp_path_factory.mktemp("calibrate")
    captioner = make_tiny_captioner("opt")
    captioner.clip.save_pretrained(root / "clip")
    captioner.lm.save_pretrained(root / "lm")
    captioner.tokenizer.save_pretrained(root / "lm")
    captioner.config.clip, captioner.config.lm = str(root / "clip"), str(root / "lm")
    captioner.save_pretrained(root / "bundle")
    for i in range(30):
        folder = root / "images" / ["healthy", "mold", "rotten"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        smooth_photo(i).save(folder / f"{i}.jpg")
    return root


def test_calibrate_script_writes_thresholds_statistics_and_the_curve_into_the_bundle(bundle_and_folder, capsys):
    root = bundle_and_folder
    calibrate.main(["--bundle", str(root / "bundle"), "--images", str(root / "images"), "--workers", "0",
                    "--max-defective-passed", "0.1", "--max-healthy-failed", "0.1", "--no-progress"])
    assert "risk-coverage" in capsys.readouterr().out
    saved = json.loads((root / "bundle" / "calibration.json").read_text())  # plain JSON: no NaN
    assert saved["report"]["items"] == 30 and saved["report"]["defective"] == 20
    assert saved["report"]["fit_items"] + saved["report"]["check_items"] == 30
    calibration, statistics = load_calibration(root / "bundle", load_knowledge("fruit"))
    assert calibration.calibrated and calibration.t_pass >= 0.5 and calibration.inputs.colour
    assert calibration.inputs.max_distance > 0 and statistics[1].shape == (32, 32)
    table = pd.read_csv(root / "bundle" / "risk_coverage.csv")
    assert list(table["max_defective_passed"]) == list(calibrate.TARGETS)
    assert (root / "bundle" / "risk_coverage.png").stat().st_size > 1000
    assert not list(root.glob(".bundle.calibration-parts"))  # the resumable encoding cleaned up


def test_calibrate_refuses_a_folder_it_cannot_read_as_labeled(bundle_and_folder, tmp_path):
    (tmp_path / "loose").mkdir()
    (tmp_path / "only" / "healthy").mkdir(parents=True)
    shutil.copy(bundle_and_folder / "images" / "healthy" / "0.jpg", tmp_path / "loose" / "a.jpg")
    shutil.copy(bundle_and_folder / "images" / "healthy" / "0.jpg", tmp_path / "only" / "healthy" / "a.jpg")
    with pytest.raises(ValueError, match="outside a class folder"):
        calibrate.labeled_images(tmp_path / "loose", ("healthy",))
    with pytest.raises(ValueError, match="needs healthy ones .* and defective ones"):
        calibrate.labeled_images(tmp_path / "only", ("healthy",))
    with pytest.raises(SystemExit) as stopped:
        calibrate.main(["--bundle", str(bundle_and_folder / "bundle"), "--images", str(tmp_path / "only")])
    assert stopped.value.code == 2


def test_wide_photos_are_calibrated_on_the_score_the_app_computes(bundle_and_folder, tmp_path):
    """The app's verdict reads a 4:3 photo's tiles, aggregated; its center crop alone scores it otherwise."""
    from types import SimpleNamespace

    from models.inspector import Inspector
    from utils.images import load_image

    root = bundle_and_folder
    square = tmp_path / "healthy" / "square.jpg"
    square.parent.mkdir()
    smooth_photo(99, size=(48, 48)).save(square)
    shutil.copy(root / "images" / "mold" / "1.jpg", tmp_path / "healthy" / "wide.jpg")  # 64 x 48
    inspector = Inspector.load(root / "bundle", device="cpu")
    names = ["healthy/square.jpg", "healthy/wide.jpg"]
    center = inspector.clip.probabilities([load_image(tmp_path / n) for n in names], inspector.sentences)
    opts = SimpleNamespace(batch_size=8, workers=0, progress=False, images=tmp_path)
    encoded = calibrate.encode([tmp_path / n for n in names], names, inspector.clip, inspector.knowledge, opts,
                               tmp_path / "bundle")
    rows = encoded.probabilities.numpy()
    app = [inspector.inspect(tmp_path / n).probabilities for n in names]
    assert np.allclose(rows[0], center[0].numpy(), atol=1e-6)  # a square photo: one tile, CLIP's own view
    assert np.allclose(rows[1], app[1], atol=1e-5)  # a wide one: what the app's verdict reads ...
    assert not np.allclose(rows[1], center[1].numpy(), atol=1e-3)  # ... not its center crop
    assert np.allclose(app[0], center[0].numpy(), atol=1e-5)
