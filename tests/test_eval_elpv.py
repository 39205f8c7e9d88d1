"""bench/eval_elpv.py without ELPV data or a model: the digest of its inputs, the verdict and caption lines."""
import importlib.util
import os
from argparse import Namespace
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("eval_elpv", Path(__file__).parents[1] / "bench" / "eval_elpv.py")
eval_elpv = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(eval_elpv)


def test_the_inputs_digest_follows_bytes_and_options_not_times(tmp_path):
    for name, text in (("cells/labels.csv", "path,split\n"), ("bundle/mapper.bin", "abc"),
                       ("clip/model.bin", "xyz"), ("labels/embeddings.bin", "123")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    args = Namespace(bundle=str(tmp_path / "bundle"), clip=str(tmp_path / "clip"), cells=str(tmp_path / "cells"),
                     labels=str(tmp_path / "labels"), explain=24, steps=8)
    first = eval_elpv.inputs_digest(args)
    os.utime(tmp_path / "bundle" / "mapper.bin", (1, 1))  # a fresh copy of the same bundle: new times only
    assert eval_elpv.inputs_digest(args) == first
    assert eval_elpv.inputs_digest(Namespace(**{**vars(args), "steps": 4})) != first
    (tmp_path / "clip" / "model.bin").write_text("xyZ")
    assert eval_elpv.inputs_digest(args) != first


def test_the_verdict_figures_use_the_bundles_calibration(tmp_path):
    import torch

    from models.verdict import Calibration, save_calibration
    from utils.knowledge import load_knowledge

    knowledge = load_knowledge("solar_cell")
    healthy = torch.tensor(knowledge.healthy_mask())
    clean, cracked = healthy.float() / healthy.sum(), (~healthy).float() / (~healthy).sum()
    probabilities = torch.stack([clean, cracked, 0.5 * clean + 0.5 * cracked])
    rows = [(None, 0.0, "mono", "functional"), (None, 1.0, "mono", "defective"), (None, 1.0, "poly", "defective")]
    report = {"targets": {"max_defective_passed": 0.01, "max_healthy_failed": 0.02}}
    save_calibration(tmp_path, Calibration(t_pass=0.9, t_fail=cracked.max().item() / 2, calibrated=True,
                                           knowledge_hash=knowledge.hash(), report=report))
    figures = eval_elpv.verdict_figures(probabilities, rows, knowledge, tmp_path)
    assert figures["calibrated"] and figures["coverage"] == 2 / 3 and figures["error"] == 0
    assert "0.010 / 0.020" in eval_elpv.verdict_lines(figures)[0]
    uncalibrated = eval_elpv.verdict_figures(probabilities, rows, knowledge, tmp_path / "none")
    assert not uncalibrated["calibrated"] and "default thresholds" in eval_elpv.verdict_lines(uncalibrated)[0]


def test_captions_that_name_nothing_the_labels_name_are_called_out():
    figures = {"auto_label_agreement": 0.81, "auto_label_unclear": 0.0, "generated_agreement": 0.69,
               "generated_unclear": 1.0, "generated_equals_auto_label": 0.0}
    assert "WARNING" in eval_elpv.caption_lines(figures)[-1]
    assert not any("WARNING" in line for line in eval_elpv.caption_lines({**figures, "generated_unclear": 0.1}))
    # labels that name nothing either: a knowledge-base question, not an undertrained captioner
    assert not any("WARNING" in line for line in eval_elpv.caption_lines({**figures, "auto_label_unclear": 0.9}))
