"""Calibrate a bundle's verdict (pass / fail / review) on a labeled validation folder, and store it in the bundle.

    python train/calibrate.py --bundle runs/photos/best --images validation/
    python train/calibrate.py --bundle checkpoints/demo --images world/images --max-defective-passed 0.01

The folder holds class sub-folders: those named by --healthy-classes (healthy, fresh, good, ok) hold healthy
items, every other one (defective/, rotten/, mold/, ...) defective ones. CLIP scores each image as the app's
default view does (a wider or taller photo over its tiles, aggregated); the thresholds are the most permissive
that keep, on the fitted part of the folder, at most --max-defective-passed of the defective items passed and
--max-healthy-failed of the healthy ones failed; the rest of the folder (--check-fraction) measures them. Into
the bundle go calibration.json (thresholds, input checks, the figures), input_statistics.safetensors (mean and
precision of CLIP's middle-block features of the fitted photos, for the "far from anything seen" check, whose
limit the held-out part sets) and risk_coverage.csv / .png (share decided automatically against the error
among those, one row per target).
Encoding resumes when interrupted: run the same command again.
"""
import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from utils.encoding import DEFAULT_WORKERS
from utils.options import add_arguments, from_namespace, option

TARGETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # the risk-coverage table's rows
COLOUR_SAMPLE = 200  # validation photos looked at to decide whether the bundle works on colour photos


@dataclass
class CalibrateOptions:
    bundle: str = option(None, "the trained bundle: its CLIP and knowledge base are calibrated, and the "
                               "calibration is written into it", required=True)
    images: str = option(None, "validation folder with class sub-folders (healthy ones named by "
                               "--healthy-classes, every other one defective)", required=True)
    healthy_classes: tuple = option(("healthy", "fresh", "good", "ok"), "class folders of healthy items")
    max_defective_passed: float = option(0.01, "target: at most this share of defective items passed")
    max_healthy_failed: float = option(0.02, "target: at most this share of healthy items failed")
    check_fraction: float = option(0.3, "share of the folder held out to measure the thresholds (0: measure on "
                                        "the fitted items themselves)")
    distance_quantile: float = option(0.995, "share of in-distribution photos the distance check lets through; "
                                             "0 = no distance check")
    seed: int = option(0, "seed for the fit/check split and the colour sample")
    batch_size: int = option(64, "images per CLIP forward")
    workers: int = option(DEFAULT_WORKERS, "DataLoader processes decoding images")
    device: str = option(None, "cpu, cuda or cuda:N (default: cuda when available)")
    progress: bool = option(True, "progress bars")

    def check(self):
        rates = (self.max_defective_passed, self.max_healthy_failed, self.check_fraction, self.distance_quantile)
        if not all(0 <= rate < 1 for rate in rates):
            raise ValueError("the targets, --check-fraction and --distance-quantile must lie in [0, 1)")
        return self


def labeled_images(folder, healthy_classes):
    """(files, names relative to the folder, defective per file); files outside a class folder are refused."""
    from utils.data import class_of
    from utils.images import IMAGE_EXTENSIONS, find_images

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    files = find_images(root, IMAGE_EXTENSIONS)
    names = [f.relative_to(root).as_posix() for f in files]
    loose = [n for n in names if not class_of(n, "")]
    if loose or not files:
        raise ValueError(f"{root}: " + (f"{len(loose)} images lie outside a class folder (e.g. {loose[0]}); " if loose
                                        else "no images; ") + "put them in healthy/ and defective/ (or other class "
                         "folders)")
    classes = {class_of(n, "") for n in names}
    healthy = {c for c in classes if c.lower() in {h.lower() for h in healthy_classes}}
    if not healthy or healthy == classes:
        raise ValueError(f"{root}: class folders {', '.join(sorted(classes))}: calibration needs healthy ones "
                         f"(named {', '.join(healthy_classes)}) and defective ones")
    return files, names, [class_of(n, "") not in healthy for n in names]


def encode(files, names, clip, knowledge, opts, bundle):
    """The probabilities the app's verdict reads of each decodable image, resumably (shards next to the bundle): a
    wider or taller photo's aggregated over its tiles as the tiles view scores it (its center crop alone would
    calibrate thresholds for a score the app never computes)."""
    from models.views import PhotoTiles
    from utils.encoding import encode_shards, file_stats

    parts = bundle.parent / f".{bundle.name}.calibration-parts"
    encoded = encode_shards(files, names, file_stats(files, names), parts, clip, knowledge.sentences(),
                            batch_size=opts.batch_size, workers=opts.workers, progress=opts.progress,
                            tiles=PhotoTiles(tuple(knowledge.healthy_mask()), aggregate=True))
    shutil.rmtree(parts, ignore_errors=True)
    for name, reason in encoded.failed:
        print(f"skipped {name}: {reason}")
    if not encoded.names:
        raise ValueError(f"{opts.images}: none of the images could be read")
    return encoded


def colour_photos(files, seed):
    """Whether the validation photos are colour ones (then a grayscale input cannot be judged)."""
    import numpy as np

    from models.plausibility import is_grayscale
    from utils.images import load_image

    sample = np.random.default_rng(seed).permutation(len(files))[:COLOUR_SAMPLE]
    grey = [is_grayscale(load_image(files[i])) for i in sample]
    return float(np.mean(grey)) < 0.5


def layer_features(files, clip, opts):
    """CLIP's middle-block features of every image (the distance check), decoded as the app decodes them."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from utils.data import ImageFiles, collate_images

    loader = DataLoader(ImageFiles(files, clip, draft=False), batch_size=opts.batch_size, num_workers=opts.workers,
                        collate_fn=collate_images)
    features = [clip.layer_features(pixels).cpu() for _, pixels, _ in tqdm(loader, desc="features", unit="batch",
                                                                           disable=not opts.progress)
                if pixels is not None]
    return torch.cat(features).numpy()


def distance_check(features, fit, check, opts):
    """(statistics of the fitted photos' features, the limit their held-out part sets) for the "far from
    anything seen" check; (None, None) when it is switched off."""
    from models.plausibility import feature_distance, fit_statistics
    from utils.calibration import distance_limit

    if opts.distance_quantile == 0:
        return None, None
    statistics = fit_statistics(features[fit])
    return statistics, distance_limit(feature_distance(features[check], *statistics), opts.distance_quantile)


def calibrate_bundle(opts):
    """Fit, measure and store the calibration of opts.bundle; returns (Calibration, risk-coverage rows)."""
    import numpy as np

    from models.caption_check import CaptionRules
    from models.clip import CLIPW
    from models.plausibility import InputRules
    from models.verdict import Calibration
    from models.vlm import clip_source, read_config
    from utils import calibration as cal
    from utils.knowledge import load_knowledge

    bundle = Path(opts.bundle)
    config = read_config(bundle)
    knowledge = load_knowledge(config.knowledge)
    files, names, defective = labeled_images(opts.images, opts.healthy_classes)
    clip = CLIPW.from_pretrained(clip_source(bundle, config), opts.device)
    encoded = encode(files, names, clip, knowledge, opts, bundle)
    label = dict(zip(names, defective))
    d = np.array([label[name] for name in encoded.names])
    h, p = cal.scores(encoded.probabilities.numpy(), knowledge.healthy_mask())
    fit, check = cal.split(d, opts.check_fraction, opts.seed)
    check = check if len(check) else fit
    t_pass, t_fail = cal.calibrate(h[fit], p[fit], d[fit], opts.max_defective_passed, opts.max_healthy_failed)
    measured = cal.outcome(cal.decide(h[check], p[check], t_pass, t_fail), d[check])
    ratio = opts.max_healthy_failed / opts.max_defective_passed if opts.max_defective_passed else 2.0
    rows = cal.risk_coverage((h[fit], p[fit], d[fit]), (h[check], p[check], d[check]), TARGETS, ratio)
    decoded = [Path(opts.images) / name for name in encoded.names]
    statistics, limit = distance_check(layer_features(decoded, clip, opts), fit, check, opts)
    inputs = InputRules(colour=colour_photos(decoded, opts.seed), max_distance=limit)
    report = {"images": str(Path(opts.images).resolve()), "items": len(d), "defective": int(d.sum()),
              "fit_items": len(fit), "check_items": len(check), "in_sample": opts.check_fraction == 0,
              "targets": {"max_defective_passed": opts.max_defective_passed,
                          "max_healthy_failed": opts.max_healthy_failed},
              "check": measured, "baselines": cal.baselines(h[check], d[check]),
              "distance_quantile": opts.distance_quantile}
    calibration = Calibration(t_pass, t_fail, CaptionRules(), inputs, True, knowledge.hash(), json_safe(report))
    write(bundle, calibration, statistics, rows, measured)
    return calibration, rows


def json_safe(value):
    """NaN (nothing decided, no item of a kind) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    return None if isinstance(value, float) and value != value else value


def write(bundle, calibration, statistics, rows, measured):
    import pandas as pd

    from models.verdict import save_calibration
    from utils.files import atomic_write
    from utils.reports import plot_risk_coverage

    table = pd.DataFrame(rows)
    atomic_write(bundle / "risk_coverage.csv", lambda p: table.to_csv(p, index=False, float_format="%.6g"))
    plot_risk_coverage(rows, bundle / "risk_coverage.png", chosen=measured, baselines=calibration.report["baselines"])
    save_calibration(bundle, calibration, statistics)


def summary(calibration, rows):
    import pandas as pd

    report, check = calibration.report, {k: _number(v) for k, v in calibration.report["check"].items()}
    base = {k: _number(v) for k, v in report["baselines"].items()}
    columns = ["max_defective_passed", "t_pass", "t_fail", "coverage", "error", "defective_passed", "healthy_failed"]
    return "\n".join([
        f"pass from healthy mass {calibration.t_pass:.4f}; fail from top defect {calibration.t_fail:.4f} "
        f"(fitted on {report['fit_items']} items, measured on {report['check_items']})",
        f"measured: coverage {check['coverage']}, error among decided {check['error']}, defective passed "
        f"{check['defective_passed']}, healthy failed {check['healthy_failed']}; no review: error "
        f"{base['no_review_error']}; always the commoner class: {base['majority_error']}",
        f"input checks: colour photos {calibration.inputs.colour}, distance limit "
        f"{_number(calibration.inputs.max_distance)}",
        "risk-coverage (measured part):", pd.DataFrame(rows)[columns].to_string(index=False, float_format="%.4f")])


def _number(value):
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, CalibrateOptions)
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    try:
        calibration, rows = calibrate_bundle(from_namespace(CalibrateOptions, args).check())
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(summary(calibration, rows))
    print(f"written into {args.bundle}: calibration.json, risk_coverage.csv, risk_coverage.png")


if __name__ == "__main__":
    main()
