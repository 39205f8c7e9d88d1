"""The operator's verdict for one inspection: pass, fail, or review (send to a human), with the reasons.

    pass    CLIP's healthy mass reaches the calibrated t_pass
    fail    the defect side wins and the top defect reaches t_fail
    review  in between (uncertain), or the caption disagrees with CLIP's evidence, or the input is not a
            usable photo (tiny, flat, grayscale for a colour bundle, far from the training photos)

The thresholds live with the bundle: calibration.json (written by train/calibrate.py) and, for the distance
check, input_statistics.safetensors (mean and precision of the calibration photos' features). A bundle
without them gets the defaults below, marked uncalibrated.
"""
import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.caption_check import CaptionRules, check_caption
from models.plausibility import InputRules, distance_problem, feature_distance, image_problems
from utils.calibration import FAIL, PASS, REVIEW, decide
from utils.files import read_json_strict, write_json

CALIBRATION_FILE = "calibration.json"
STATISTICS_FILE = "input_statistics.safetensors"
# what a re-saved bundle keeps (models/vlm.py): the calibration and its report
BUNDLE_FILES = (CALIBRATION_FILE, STATISTICS_FILE, "risk_coverage.csv", "risk_coverage.png")
FORMAT = 1


@dataclass
class Calibration:
    t_pass: float = 0.9  # healthy mass from which an item passes
    t_fail: float = 0.5  # top-defect probability from which an item fails (when the defect side wins)
    caption: CaptionRules = field(default_factory=CaptionRules)
    inputs: InputRules = field(default_factory=InputRules)
    calibrated: bool = False  # False: the defaults above, not fitted to this bundle
    knowledge_hash: str = ""  # the knowledge base the numbers hold for
    report: dict = field(default_factory=dict)  # targets, validation counts, held-out figures

    def to_dict(self):
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values, source="calibration"):
        values = {k: v for k, v in values.items() if k != "format"}
        try:
            return cls(**{**values, "caption": CaptionRules(**values.get("caption", {})),
                          "inputs": InputRules(**values.get("inputs", {}))})
        except TypeError as error:
            raise ValueError(f"{source}: not a calibration file this version reads ({error})") from None


def save_calibration(bundle, calibration, statistics=None):
    """calibration.json (and the feature statistics: (mean [d], precision [d, d])) into a bundle directory,
    each written atomically, the statistics first."""
    import torch
    from safetensors.torch import save_file

    from utils.files import atomic_write

    bundle = Path(bundle)
    if statistics is not None:
        tensors = {name: torch.as_tensor(np.asarray(value, dtype=np.float64)).contiguous()
                   for name, value in zip(("mean", "precision"), statistics)}
        atomic_write(bundle / STATISTICS_FILE, lambda p: save_file(tensors, str(p)))
    else:
        (bundle / STATISTICS_FILE).unlink(missing_ok=True)
    write_json(bundle / CALIBRATION_FILE, calibration.to_dict())


def load_calibration(bundle, knowledge):
    """(Calibration, feature statistics (mean, precision) or None) of a bundle; the defaults when it has none,
    or when it was calibrated for another knowledge base (with a warning: the thresholds would mean something
    else)."""
    from utils.files import load_safetensors

    path = Path(bundle) / CALIBRATION_FILE if bundle else None
    if path is None or not path.is_file():
        return Calibration(), None
    calibration = Calibration.from_dict(read_json_strict(path, "calibration"), str(path))
    if calibration.knowledge_hash and calibration.knowledge_hash != knowledge.hash():
        warnings.warn(f"{path} was calibrated for another knowledge base than {knowledge.name!r}: using the "
                      "default thresholds (run train/calibrate.py with this knowledge base)", stacklevel=2)
        return Calibration(), None
    path = Path(bundle) / STATISTICS_FILE
    if calibration.inputs.max_distance is None or not path.is_file():
        return calibration, None
    tensors = load_safetensors(path, "input statistics")
    return calibration, (tensors["mean"].numpy(), tensors["precision"].numpy())


@dataclass
class Verdict:
    decision: str  # pass / fail / review
    reasons: list  # plain sentences, the first says why
    healthy_mass: float
    top_defect: str  # the likeliest defect prompt's text
    top_defect_prob: float
    caption_check: str  # "agrees with the evidence" or what disagrees; "" without a caption
    caption_agrees: bool | None = None  # None without a caption
    distance: float | None = None  # of the photo's features from the calibration photos' (Mahalanobis)
    calibrated: bool = False

    def summary(self):
        return f"{self.decision}: " + "; ".join(self.reasons)

    def to_dict(self):
        return dataclasses.asdict(self)


def judge(picture, features, probabilities, caption, knowledge, calibration=None, statistics=None,
          known_words=None):
    """The Verdict for one inspection: `probabilities` over every knowledge-base prompt (file order),
    `features` CLIP's layer features of the picture (CLIPW.layer_features) for the distance check against
    `statistics`, `caption` what the operator reads, `known_words` the words it may use (caption check)."""
    calibration = calibration or Calibration()
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    healthy = np.asarray(knowledge.healthy_mask())
    healthy_mass = float(probabilities[healthy].sum())
    top = int(np.argmax(np.where(healthy, -1.0, probabilities)))
    top_prob = float(probabilities[top])
    problems = image_problems(picture, calibration.inputs)
    distance = None
    if statistics is not None and features is not None:
        distance = float(feature_distance(_numpy(features), *statistics)[0])
        problems += [p for p in [distance_problem(distance, calibration.inputs, knowledge.domain)] if p]
    check = check_caption(caption, probabilities, knowledge, calibration.caption, known_words) if caption else None
    decision, reasons = _decision(calibration, healthy_mass, knowledge.prompts[top].text, top_prob)
    overrides = [f"not a usable photo: {p}" for p in problems]
    overrides += [check.summary()] if check is not None and not check.agrees else []
    if overrides:  # the thresholds' own word stays, as context for the human
        decision, reasons = REVIEW, overrides + [f"the thresholds alone: {decision} ({reasons[0]})"]
    if not calibration.calibrated:
        reasons.append("thresholds not calibrated for this bundle (train/calibrate.py)")
    return Verdict(decision, reasons, healthy_mass, knowledge.prompts[top].text, top_prob,
                   check.summary() if check else "", check.agrees if check else None, distance,
                   calibration.calibrated)


def _decision(calibration, healthy_mass, top_text, top_prob):
    decision = decide([healthy_mass], [top_prob], calibration.t_pass, calibration.t_fail)[0]
    if decision == PASS:
        return PASS, [f"healthy {healthy_mass:.0%} (passes from {calibration.t_pass:.0%})"]
    if decision == FAIL:
        bar = f" (fails from {calibration.t_fail:.0%})" if calibration.t_fail > 0 else ""
        return FAIL, [f"{top_text} {top_prob:.0%}, defects {1 - healthy_mass:.0%} in all{bar}"]
    return REVIEW, [f"uncertain: healthy {healthy_mass:.0%} (passes from {calibration.t_pass:.0%}), "
                    f"{top_text} {top_prob:.0%} (fails from {calibration.t_fail:.0%} when the defects "
                    "outweigh healthy)"]


def _numpy(embedding):
    return embedding.detach().float().cpu().numpy() if hasattr(embedding, "detach") else np.asarray(embedding)
