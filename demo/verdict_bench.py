"""Measure the verdict, the caption check, the input checks and the correction loop on held-out synthetic worlds.

    python -m demo.verdict_bench                   # verdict, risk-coverage, caption check, input checks
    python -m demo.verdict_bench --loop            # and the correction loop (two short retrainings)
    python -m demo.verdict_bench --loop-only       # the correction loop alone
    python -m demo.verdict_bench --wide-only       # thresholds for 4:3 photos: fitted on center squares or tiles
    python -m demo.verdict_bench --strips-only     # thresholds for six-item photos: fitted on single items or strips

Worlds: the demo trains on seed 0 and calibrates on seed 2; this measures on seed 7 (--seed) and, for the
loop, lets a simulated operator correct the wrongly captioned items of seed 11 (--loop-seed) from the world's
ground truth. Each figure stands beside its baseline: no review at all, the commoner class, flags raised at
random at the same rate, and for the loop a control run retrained the same way without the corrections.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from demo.scoring import caption_correct, defects_of, held_out_world  # noqa: E402
from demo.world import load_truth  # noqa: E402
from models.inspector import Inspector  # noqa: E402
from models.plausibility import image_problems  # noqa: E402
from models.verdict import judge  # noqa: E402
from utils import calibration as cal  # noqa: E402
from utils.data import read_manifest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def inspect_world(inspector, world, batch_size=32, captions=True):
    """Per image of a world: CLIP probabilities, embedding, caption, verdict, truth -> DataFrame."""
    truth = load_truth(world)
    pictures = [Image.open(Path(world) / path).convert("RGB") for path in truth["path"]]
    embeddings = torch.cat([inspector.clip.encode_images(pictures[i:i + batch_size])
                            for i in tqdm(range(0, len(pictures), batch_size), desc="encoding", leave=False)])
    probabilities = inspector.clip.probabilities(embeddings, inspector.sentences).cpu().numpy()
    texts = [""] * len(pictures)
    if captions:
        texts = inspector.captioner.caption_embeddings(embeddings, progress=True, desc="captions")
    features = [None] * len(pictures)
    if inspector.statistics is not None:
        layer = inspector.calibration.inputs.feature_layer
        features = torch.cat([inspector.clip.layer_features(inspector.clip.preprocess(pictures[i:i + batch_size]),
                                                            layer) for i in range(0, len(pictures), batch_size)])
    known = inspector.known_words()
    verdicts = [judge(picture, feature, p, text, inspector.knowledge, inspector.calibration, inspector.statistics,
                      known) for picture, feature, p, text in zip(pictures, features, probabilities, texts)]
    h, top = cal.scores(probabilities, inspector.knowledge.healthy_mask())
    kb = inspector.knowledge
    return pd.DataFrame({
        "path": truth["path"], "primary": truth["primary"], "defects": defects_of(truth),
        "defective": truth["primary"] != "healthy", "healthy_mass": h, "top_defect": top, "caption": texts,
        "correct": [caption_correct(t, p, kb) for t, p in zip(texts, truth["primary"])] if captions else None,
        "verdict": [v.decision for v in verdicts], "caption_agrees": [v.caption_agrees for v in verdicts],
        "input_ok": [not image_problems(pic, inspector.calibration.inputs) for pic in pictures],
        "distance": [v.distance for v in verdicts]})


def verdict_figures(frame, calibration):
    """Thresholds alone, and the whole verdict (thresholds + caption check + input checks), on held-out items."""
    thresholds = cal.decide(frame["healthy_mass"], frame["top_defect"], calibration.t_pass, calibration.t_fail)
    alone = cal.outcome(thresholds, frame["defective"])
    whole = cal.outcome(frame["verdict"], frame["defective"])
    decided = frame["verdict"] != "review"
    return pd.DataFrame([
        {"verdict": "thresholds only", **alone},
        {"verdict": "thresholds + caption check + input checks", **whole},
        {"verdict": "baseline: no review (healthy side wins)", "coverage": 1.0,
         **{"error": cal.baselines(frame["healthy_mass"], frame["defective"])["no_review_error"]}},
        {"verdict": "baseline: always the commoner class", "coverage": 1.0,
         "error": cal.baselines(frame["healthy_mass"], frame["defective"])["majority_error"]},
    ]), {"caption_accuracy_all": float(frame["correct"].mean()),
         "caption_accuracy_decided": float(frame.loc[decided, "correct"].mean()) if decided.any() else np.nan,
         "sent_to_review": float(1 - decided.mean())}


def caption_check_figures(frame):
    """Recall on wrong captions and false alarms on right ones; flags raised at random at the same rate would
    have both equal to that rate (the baseline)."""
    flagged, wrong = ~frame["caption_agrees"].astype(bool), ~frame["correct"].astype(bool)
    return {"wrong_captions": int(wrong.sum()), "right_captions": int((~wrong).sum()),
            "flag_rate (= recall and false alarms of random flags)": float(flagged.mean()),
            "recall": float(flagged[wrong].mean()) if wrong.any() else np.nan,
            "false_alarms": float(flagged[~wrong].mean()) if (~wrong).any() else np.nan,
            "precision": float(wrong[flagged].mean()) if flagged.any() else np.nan}


def risk_coverage_table(fit_frame, check_frame, calibration):
    fit = (fit_frame["healthy_mass"], fit_frame["top_defect"], fit_frame["defective"])
    check = (check_frame["healthy_mass"], check_frame["top_defect"], check_frame["defective"])
    report = calibration.report.get("targets", {})
    ratio = report.get("max_healthy_failed", 0.02) / max(report.get("max_defective_passed", 0.01), 1e-9)
    return pd.DataFrame(cal.risk_coverage(fit, check, TARGETS, ratio))


def implausible_inputs(world, count=40, seed=0):
    """(kind, PIL image) pairs no bundle should pass: tiny, flat, blank, grayscale, noise, stripes, text, and real
    photos of other things."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    truth = load_truth(world)
    real = [Image.open(Path(world) / p).convert("RGB") for p in truth["path"][:count]]
    items = [("1x1 red pixel", Image.new("RGB", (1, 1), "red")), ("flat grey", Image.new("RGB", (300, 300), "grey")),
             ("white page", Image.new("RGB", (640, 480), "white")), ("black frame", Image.new("RGB", (640, 480)))]
    items += [("16 px thumbnail", picture.resize((16, 16))) for picture in real[:10]]
    items += [("grayscale photo", picture.convert("L").convert("RGB")) for picture in real]
    items += [("colour noise", Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)))
              for _ in range(10)]
    for i in range(10):
        stripes = Image.new("RGB", (200, 200), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(stripes)
        for x in range(0, 200, 10 + i):
            draw.rectangle([x, 0, x + 4, 200], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw.text((20, 90), "INVOICE 2024-11", fill="black")
        items.append(("stripes and text", stripes))
    return items + [("real photo, no fruit", Image.open(path).convert("RGB")) for path in sample_photos()]


def sample_photos():
    """Real photos of anything but fruit that installed packages ship (matplotlib's Grace Hopper, Gradio's
    cheetahs, lion, tower and Groot): what a new user might try the demo with."""
    import gradio
    import matplotlib

    folders = [Path(matplotlib.get_data_path()) / "sample_data",
               Path(gradio.__file__).parent / "media_assets" / "images"]
    return [path for folder in folders if folder.is_dir() for path in sorted(folder.iterdir())
            if path.suffix.lower() in (".jpg", ".jpeg")]


def input_check_figures(inspector, world):
    """Share of implausible inputs that the input checks alone send to review, by kind (each should be 1.0):
    no caption, so a caption that happens to disagree cannot rescue a check that missed."""
    from models.views import photo_probabilities

    rows, healthy = [], [p.healthy for p in inspector.knowledge.prompts]
    for kind, picture in tqdm(implausible_inputs(world), desc="implausible inputs", leave=False):
        scored = photo_probabilities(inspector.clip, [picture], inspector.sentences, healthy)[0]  # as the app views it
        _, verdict = inspector.assess(picture, None, caption="", probabilities=scored)
        rows.append({"kind": kind, "review": verdict.decision == "review"})
    return pd.DataFrame(rows).groupby("kind", sort=False).agg(items=("review", "size"), review=("review", "mean"))


def simulate_operator(frame, world, review_dir, inspector):
    """Flag every wrongly captioned item of `frame` as wrong, ticking its true defects (or fresh skin)."""
    from utils.reviews import ReviewStore

    store = ReviewStore(review_dir)
    if len(store):
        return len(store)  # a resumed run: the operator already reviewed this world
    healthy = next(p.id for p in inspector.knowledge.prompts if p.healthy)
    for row in frame[~frame["correct"].astype(bool)].itertuples():
        store.add(Path(world) / row.path, "wrong", descriptions=row.defects or [healthy],
                  model={"caption": row.caption, "verdict": row.verdict, "knowledge": inspector.knowledge.name,
                         "bundle": inspector.source}, user="simulated operator")
    return len(store)


def auto_subset(labels_dir, out_dir, size, seed):
    """A random share of the auto-labeled training set: both retrainings see it, so neither forgets."""
    from utils.data import load_dataset, save_dataset

    if read_manifest(out_dir) is not None:
        return out_dir
    data = load_dataset(labels_dir)
    rows = np.sort(np.random.default_rng(seed).permutation(len(data))[:size])
    return save_dataset(out_dir, data.embeddings[rows], data.table.iloc[rows].reset_index(drop=True), data.manifest)


def script(name, *arguments):
    """One of the product's scripts, run as a user runs it."""
    subprocess.run([sys.executable, str(ROOT / "train" / name), *map(str, arguments)], check=True)


def retrain(bundle, datasets, out, args, *extra):
    if not (Path(out) / "best" / "config.json").is_file():
        script("train.py", *datasets, "--out", out, "--init-from", bundle, "--epochs", args.loop_epochs,
               "--lr", args.loop_lr, "--batch-size", 8, "--val-fraction", 0.05, "--val-max", 0, "--metrics", "none",
               "--resume", "--no-progress", *extra)
    return Path(out) / "best"


def caption_accuracy(bundle, embeddings, truth, knowledge):
    """Generated captions of a bundle for a world's CLIP embeddings, scored against the world's truth."""
    from models.config import GenerationOptions
    from models.vlm import ClipCaptioner

    captioner = ClipCaptioner.from_pretrained(bundle, device=embeddings.device)
    captions = captioner.caption_embeddings(embeddings, GenerationOptions(max_new_tokens=24), progress=True,
                                            desc=f"captions {Path(bundle).name}")
    return float(np.mean([caption_correct(c, p, knowledge) for c, p in zip(captions, truth["primary"])]))


def correction_loop(args, inspector):
    """Caption accuracy on the held-out world before, after a control retraining, after retraining with the
    corrections: all three bundles captioned the same way (greedy, 24 tokens)."""
    work = Path(args.loop_dir)
    world = held_out_world(work / "world", args.loop_n, args.loop_seed)
    reviewed = inspect_world(inspector, world)
    flags = simulate_operator(reviewed, world, work / "reviews", inspector)
    if not (work / "corrections" / "manifest.json").is_file():  # encoded by the CLIP the auto-labels name
        script("corrections.py", "--reviews", work / "reviews", "--out", work / "corrections", "--clip",
               read_manifest(args.labels)["clip"], "--workers", 0, "--quiet")
    subset = auto_subset(args.labels, work / "auto-subset", args.loop_auto, args.loop_seed)
    control = retrain(args.bundle, [subset], work / "control", args)
    corrected = retrain(args.bundle, [subset, work / "corrections"], work / "corrected", args,
                        "--human-repeat", args.human_repeat)
    truth = load_truth(held_out_world(args.world, args.n, args.seed))
    pictures = [Image.open(Path(args.world) / p).convert("RGB") for p in truth["path"]]
    embeddings = torch.cat([inspector.clip.encode_images(pictures[i:i + 32]) for i in range(0, len(pictures), 32)])
    rows = [(f"before: {args.bundle}", args.bundle), ("control: retrained on auto labels only", control),
            (f"after: retrained with {flags} corrections", corrected)]
    return pd.DataFrame([{"bundle": name, "held-out caption accuracy": caption_accuracy(
        bundle, embeddings, truth, inspector.knowledge)} for name, bundle in rows]), {
        "correction_set": len(reviewed), "wrong_captions": int((~reviewed["correct"].astype(bool)).sum()),
        "corrections": flags}


def widened(seed, n):
    """`n` items of a world seed, each widened to a 4:3 photo with its own border (a landscape phone shot):
    [(picture, defective)]."""
    from demo.world import item_rng, render_sample, widen_to_4_by_3

    samples = [render_sample(item_rng(seed, index)) for index in range(n)]
    return [(widen_to_4_by_3(sample.image), bool(sample.masks)) for sample in samples]


def wide_calibration(inspector, fit_seed, seed, n_fit, n):
    """Thresholds alone for 4:3 photos: fitted (as calibrate.py does, for <= 1% defective passed and <= 2% healthy
    failed) on the calibration world's items widened, scored on CLIP's center square (what calibrate.py read
    before 2026-12-01) or over their tiles (what it reads now); measured on held-out widened items in the tiles
    view, the score the app's verdict reads."""
    from models.views import photo_probabilities

    clip, sentences, healthy = inspector.clip, inspector.sentences, np.array(inspector.knowledge.healthy_mask())
    fit, fit_truth = zip(*widened(fit_seed, n_fit))
    held, held_truth = zip(*widened(seed, n))
    held_scores, rows = cal.scores(photo_probabilities(clip, held, sentences, healthy), healthy), {}
    for name, probabilities in (("center square", clip.probabilities(list(fit), sentences).numpy()),
                                ("tiles", photo_probabilities(clip, fit, sentences, healthy))):
        t_pass, t_fail = cal.calibrate(*cal.scores(probabilities, healthy), np.array(fit_truth), 0.01, 0.02)
        rows[f"fitted on {name}"] = {"t_pass": t_pass, "t_fail": t_fail, **cal.outcome(
            cal.decide(*held_scores, t_pass, t_fail), np.array(held_truth))}
    return pd.DataFrame(rows).T


def strip_calibration(inspector, fit_seed=100, seed=7, n_fit=60, n=40):
    """Thresholds alone on photos of six items in a row, the last one defective or all healthy (demo.world
    render_strip): the bundle's own, fitted on single items, against thresholds fitted as calibrate.py fits them on
    such strips (seeds fit_seed.., n_fit of each kind) for two targets; measured on n held-out strips of each kind
    (seeds seed..) in the tiles view, the score the app's verdict reads. Per row: the shares of defective and of
    healthy strips failed, passed and sent to review."""
    from demo.world import render_strip
    from models.views import photo_probabilities

    clip, sentences, healthy = inspector.clip, inspector.sentences, np.array(inspector.knowledge.healthy_mask())

    def scored(first, count):  # count defective strips, then count healthy ones
        pictures = [render_strip(first + i, defective=bad)[0] for bad in (True, False) for i in range(count)]
        probabilities = photo_probabilities(clip, pictures, sentences, healthy)
        return cal.scores(probabilities, healthy), np.repeat([True, False], count)

    fit, fit_truth = scored(fit_seed, n_fit)
    held, held_truth = scored(seed, n)
    thresholds = {"the bundle's (fitted on single items)": (inspector.calibration.t_pass, inspector.calibration.t_fail)}
    for passed, failed in ((0.01, 0.02), (0.05, 0.1)):
        thresholds[f"fitted on strips for <= {passed:.0%} / <= {failed:.0%}"] = cal.calibrate(*fit, fit_truth, passed,
                                                                                              failed)
    rows = {}
    for name, (t_pass, t_fail) in thresholds.items():
        verdicts = cal.decide(*held, t_pass, t_fail)
        rows[name] = {"t_pass": t_pass, "t_fail": t_fail}
        for kind, defective in (("defective", True), ("healthy", False)):
            for decision in (cal.FAIL, cal.PASS, cal.REVIEW):
                rows[name][f"{kind}: {decision}"] = float(np.mean(verdicts[held_truth == defective] == decision))
    return pd.DataFrame(rows).T


def show(title, table):
    text = table.to_string(float_format=lambda v: f"{v:.4f}") if isinstance(table, pd.DataFrame) else \
        "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in table.items())
    print(f"\n{title}\n{text}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo", help="calibrated bundle (default: %(default)s)")
    parser.add_argument("--world", default="checkpoints/demo-heldout-7", help="held-out world (made when missing)")
    parser.add_argument("--n", type=int, default=400, help="held-out images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="held-out world seed (default: %(default)s)")
    parser.add_argument("--calibration-world", default="checkpoints/demo-work/calibration-world",
                        help="the world the bundle was calibrated on (fits the risk-coverage rows)")
    parser.add_argument("--loop", action="store_true", help="also run the correction loop (two retrainings)")
    parser.add_argument("--loop-only", action="store_true", help="run the correction loop alone")
    parser.add_argument("--loop-dir", default="checkpoints/demo-loop", help="the loop's work (resumable)")
    parser.add_argument("--loop-n", type=int, default=400, help="images the simulated operator reviews")
    parser.add_argument("--loop-seed", type=int, default=11, help="their world's seed (default: %(default)s)")
    parser.add_argument("--labels", default="checkpoints/demo-work/labels", help="the demo's auto-labeled dataset")
    parser.add_argument("--loop-auto", type=int, default=600, help="auto-labeled rows both retrainings see")
    parser.add_argument("--loop-epochs", type=int, default=1, help="retraining epochs (default: %(default)s)")
    parser.add_argument("--loop-lr", type=float, default=3e-4, help="retraining learning rate (default: %(default)s)")
    parser.add_argument("--human-repeat", type=int, default=5, help="train.py --human-repeat (default: %(default)s)")
    parser.add_argument("--wide", action="store_true", help="also: thresholds for 4:3 photos, fitted on their "
                                                              "center squares or their tiles")
    parser.add_argument("--wide-only", action="store_true", help="run the 4:3 check alone")
    parser.add_argument("--strips", action="store_true", help="also: thresholds for photos of six items, fitted on "
                                                                "single items or on such photos")
    parser.add_argument("--strips-only", action="store_true", help="run the strips check alone")
    parser.add_argument("--wide-n", type=int, default=600, help="4:3 photos fitted on (calibration world seed 2); "
                                                                "--n of --seed measure them (default: %(default)s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run(args)
    print(f"\n({time.perf_counter() - started:.0f}s)")


def run(args):
    inspector = Inspector.load(args.bundle)
    if not (args.loop_only or args.wide_only or args.strips_only):
        measure(args, inspector)
    if args.wide or args.wide_only:
        show(f"thresholds alone on held-out 4:3 photos (seed {args.seed}, {args.n}), tiles view",
             wide_calibration(inspector, 2, args.seed, args.wide_n, args.n))
    if args.strips or args.strips_only:
        show("thresholds alone on held-out strips of six items (one defective at the end, or none), tiles view",
             strip_calibration(inspector))
    if args.loop or args.loop_only:
        table, sizes = correction_loop(args, inspector)
        show("correction loop: the simulated operator's set", sizes)
        show(f"correction loop: caption accuracy on the held-out world (seed {args.seed})", table)


def measure(args, inspector):
    """Verdict, captions, caption check, risk-coverage and input checks on the held-out world."""
    calibration = inspector.calibration
    print(f"bundle {args.bundle}: pass from healthy {calibration.t_pass:.4f}, fail from top defect "
          f"{calibration.t_fail:.4f}, calibrated {calibration.calibrated}")
    held_out = inspect_world(inspector, held_out_world(args.world, args.n, args.seed))
    verdicts, captions = verdict_figures(held_out, calibration)
    show(f"verdict on the held-out world (seed {args.seed}, {len(held_out)} images)", verdicts)
    show("captions", captions)
    show("caption check (flags = disagrees with the evidence)", caption_check_figures(held_out))
    if Path(args.calibration_world, "labels.csv").is_file():
        fitted = inspect_world(inspector, args.calibration_world, captions=False)
        show("risk-coverage: thresholds fitted on the calibration world, measured on the held-out one",
             risk_coverage_table(fitted, held_out, calibration))
    show("input checks: implausible inputs sent to review (share)", input_check_figures(inspector, args.world))
    show("input checks on the held-out photos", {"false alarms (real photos sent to review)":
                                                 float(1 - held_out["input_ok"].mean()),
                                                 "over the distance limit": float(
                                                     (held_out["distance"] > calibration.inputs.max_distance).mean())
                                                 if calibration.inputs.max_distance else np.nan})


if __name__ == "__main__":
    main()
