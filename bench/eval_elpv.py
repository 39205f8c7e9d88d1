"""Held-out figures of the ELPV recipe (`make elpv`): prints one table, asserts nothing.

    python bench/eval_elpv.py --bundle checkpoints/elpv --clip checkpoints/elpv-work/clip \\
        --cells checkpoints/elpv-work/cells --labels checkpoints/elpv-work/labels-test

On the held-out 25% (train/importers.py elpv; never used for a choice):
- the fine-tuned CLIP: defective-vs-functional accuracy (expert probability >= 0.5 is defective; defect-prompt
  mass against the threshold finetune_clip chose on its validation split, and against 0.5, the captions' rule),
  balanced accuracy, AUROC and 4-level accuracy, per cell type too, beside the majority baselines and the
  figures Deitsch et al. 2019 report (their protocol differs: see the README);
- the bundle's verdict (pass / fail / review, thresholds from train/calibrate.py) on the held-out cells: the
  share decided without a human and the errors among those, beside the calibration's targets;
- auto-label captions (train/label.py) and generated captions (the bundle) read as defective / functional,
  against the experts;
- every explanation method's deletion and insertion AUC on held-out defective cells, beside random maps
  (no masks needed).
"""
import argparse
import csv
import json
import time
from pathlib import Path

PAPER = {"SVM, hand-crafted features (Deitsch et al. 2019)": 0.8244, "CNN, VGG-19 (Deitsch et al. 2019)": 0.8842}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="the ELPV captioner bundle (without it: the CLIP's figures only)")
    parser.add_argument("--clip", required=True, help="the fine-tuned CLIP directory with finetune.json (required)")
    parser.add_argument("--cells", required=True, help="train/importers.py elpv output (required)")
    parser.add_argument("--labels", help="train/label.py output for CELLS/test (needed with --bundle)")
    parser.add_argument("--explain", type=int, default=24, help="defective cells to explain, 0: none (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="points on each deletion/insertion curve (default: "
                                                            "%(default)s)")
    parser.add_argument("--out", help="also write the figures to this JSON file; when it holds the figures of "
                                      "the same inputs, they are printed again instead of recomputed")
    parser.add_argument("--force", action="store_true", help="recompute even when --out holds these inputs' figures")
    args = parser.parse_args(argv)
    if args.bundle and not args.labels:
        parser.error("--bundle needs --labels")
    from utils.files import read_json, write_json

    inputs = inputs_digest(args)
    stored = read_json(Path(args.out)) if args.out and not args.force else None
    if stored is not None and stored.get("inputs") == inputs:
        print(report(stored) + f"\n(as computed before: {args.out}, same inputs; --force recomputes)")
        return
    started, cpu = time.perf_counter(), time.process_time()
    figures = evaluate(args)
    figures["seconds"], figures["cpu_seconds"] = time.perf_counter() - started, time.process_time() - cpu
    figures["inputs"] = inputs
    print(report(figures))
    if args.out:
        write_json(args.out, figures)


def inputs_digest(args):
    """A digest of the options and of every input file's bytes (not times: `make elpv` copies the bundle
    anew on every run), so a finished evaluation is skipped only when nothing it reads has changed."""
    import hashlib

    digest = hashlib.sha256(json.dumps([bool(args.bundle), bool(args.labels), args.explain, args.steps]).encode())
    folders = [folder for folder in (args.bundle, args.clip, args.labels) if folder]
    for path in [Path(args.cells) / "labels.csv"] + [p for f in folders for p in sorted(Path(f).rglob("*"))]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def held_out(cells):
    """The test rows of labels.csv: (absolute path, probability, type, level)."""
    with open(Path(cells) / "labels.csv", encoding="utf-8") as handle:
        return [(Path(cells) / row["path"], float(row["probability"]), row["type"], row["level"])
                for row in csv.DictReader(handle) if row["split"] == "test"]


def evaluate(args):
    """The CLIP's figures and its explanations'; with --bundle, the bundle's CLIP and its captions too."""
    from models.clip import CLIPW
    from models.vlm import ClipCaptioner
    from utils.knowledge import load_knowledge

    tuned = json.loads((Path(args.clip) / "finetune.json").read_text(encoding="utf-8"))
    captioner = ClipCaptioner.from_pretrained(args.bundle, device="cpu") if args.bundle else None
    clip = captioner.clip if captioner else CLIPW.from_pretrained(args.clip, device="cpu")
    knowledge = load_knowledge(captioner.config.knowledge if captioner else tuned["settings"]["options"]["knowledge"])
    rows = held_out(args.cells)
    pixels = clip.pixel_values([path for path, *_ in rows])
    probabilities = clip.probabilities(pixels, knowledge.sentences()).cpu()
    figures = {"images": len(rows), "clip": clip_figures(probabilities, rows, knowledge, tuned)}
    if clip.views != 1:  # the same CLIP on the image as it is, for comparison
        views, clip.views = clip.views, 1
        single = clip.probabilities(pixels, knowledge.sentences()).cpu()
        figures["clip_single_view"], clip.views = clip_figures(single, rows, knowledge, tuned), views
    if captioner:
        figures["verdict"] = verdict_figures(probabilities, rows, knowledge, args.bundle)
        figures["captions"] = caption_figures(captioner, args.labels, rows, knowledge)
    if args.explain:
        defective = [i for i, row in enumerate(rows) if row[3] == "defective"][:args.explain]
        figures["explanations"] = explanation_figures(clip, pixels, probabilities, defective, knowledge, args.steps)
    return figures


def clip_figures(probabilities, rows, knowledge, tuned):
    """Accuracy (at the validation threshold and at 0.5), balanced accuracy, AUROC, 4-level accuracy."""
    import numpy as np
    import torch

    from utils.metrics import auroc

    healthy = torch.tensor(knowledge.healthy_mask())
    defect = probabilities[:, ~healthy].sum(dim=1).numpy()
    truth = np.array([probability >= 0.5 for _, probability, _, _ in rows])
    kinds = np.array([kind for _, _, kind, _ in rows])
    levels = np.array([level for *_, level in rows])
    classes = tuned["settings"]["classes"]
    targets = torch.tensor(tuned["settings"]["targets"])
    cross_entropy = -(targets[None] * probabilities[:, None].clamp(min=1e-12).log()).sum(dim=-1)
    predicted = np.array(classes)[cross_entropy.argmin(dim=1).numpy()]
    out = {"threshold": tuned["threshold"], "best_epoch": tuned["best_epoch"], "auroc": auroc(truth, defect),
           "majority": float(max(truth.mean(), 1 - truth.mean())),
           "level_accuracy": float((predicted == levels).mean()),
           "level_majority": float(max((levels == level).mean() for level in set(levels))),
           "finetune_cpu_seconds": tuned["cpu_seconds"], "finetune_seconds": tuned["seconds"]}
    for name, threshold in (("", tuned["threshold"]), ("_at_half", 0.5)):
        said = defect >= threshold
        out[f"accuracy{name}"] = float((said == truth).mean())
        out[f"balanced_accuracy{name}"] = float(((said & truth).sum() / truth.sum()
                                                 + (~said & ~truth).sum() / (~truth).sum()) / 2)
        for kind in ("mono", "poly"):
            out[f"accuracy{name}_{kind}"] = float((said[kinds == kind] == truth[kinds == kind]).mean())
    return out


def verdict_figures(probabilities, rows, knowledge, bundle):
    """The CLIP side of the app's verdict with the bundle's calibration, against the experts."""
    from models.verdict import load_calibration
    from utils import calibration as cal

    calibration, _ = load_calibration(bundle, knowledge)
    healthy_mass, top_defect = cal.scores(probabilities.numpy(), knowledge.healthy_mask())
    verdicts = cal.decide(healthy_mass, top_defect, calibration.t_pass, calibration.t_fail)
    defective = [probability >= 0.5 for _, probability, _, _ in rows]
    return {"calibrated": calibration.calibrated, "targets": calibration.report.get("targets", {}),
            **cal.outcome(verdicts, defective), **cal.baselines(healthy_mass, defective)}


def caption_verdict(caption, knowledge):
    """"defect" when the caption names a defect prompt, "functional" when it names only healthy ones,
    "unclear" when it names none."""
    text = caption.lower()
    named = {p.healthy for p in knowledge.prompts if p.text.lower() in text}
    return "defect" if False in named else "functional" if named else "unclear"


def caption_figures(captioner, labels_dir, rows, knowledge):
    """Auto-label and generated captions against the experts (defective = probability >= 0.5)."""
    from models.config import GenerationOptions
    from utils.data import load_dataset

    data = load_dataset(labels_dir)
    truth = {path.name: probability >= 0.5 for path, probability, _, _ in rows}
    names = [Path(p).name for p in data.table["path"]]
    generated = captioner.caption_embeddings(data.embeddings, GenerationOptions(max_new_tokens=30), 32, False)
    out = {"images": len(names)}
    for source, captions in (("auto_label", data.captions), ("generated", generated)):
        verdicts = [caption_verdict(c, knowledge) for c in captions]
        out[f"{source}_agreement"] = sum((v == "defect") == truth[n] for v, n in zip(verdicts, names)) / len(names)
        out[f"{source}_unclear"] = verdicts.count("unclear") / len(names)
    out["generated_equals_auto_label"] = sum(g == a for g, a in zip(generated, data.captions)) / len(names)
    out["examples"] = [{"image": n, "expert_defective": truth[n], "auto_label": a, "generated": g}
                       for n, a, g in list(zip(names, data.captions, generated))[:: max(1, len(names) // 8)]]
    return out


def explanation_figures(clip, pixels, probabilities, items, knowledge, steps):
    """Per method: mean deletion / insertion AUC of the map of each cell's top defect prompt, and of random maps."""
    import numpy as np

    from models.explain import METHODS, Explainer
    from models.faithfulness import deletion_auc, insertion_auc, prompt_probability, random_baseline

    explainer, sentences = Explainer(clip), knowledge.sentences()
    defect_ids = [i for i, healthy in enumerate(knowledge.healthy_mask()) if not healthy]
    results = {method.label: {} for method in METHODS.values()}
    for i in items:
        index = defect_ids[int(probabilities[i, defect_ids].argmax())]
        image, score = pixels[i:i + 1].to(clip.device), prompt_probability(clip, sentences, index)
        for method in METHODS.values():
            saliency = explainer.prompt_maps(image, sentences, method, indices=[index])[0]
            for curve, auc in (("deletion", deletion_auc), ("insertion", insertion_auc)):
                results[method.label].setdefault(curve, []).append(auc(saliency, score, image, steps=steps))
                results[method.label].setdefault(f"{curve}_random", []).append(
                    random_baseline(auc, clip.patch_grid, score, image, count=2, steps=steps))
    return {name: {k: float(np.mean(v)) for k, v in values.items()} | {"cells": len(items)}
            for name, values in results.items()}


def report(figures):
    clip = figures["clip"]
    lines = [f"ELPV held-out test: {figures['images']} cells (fine-tuned CLIP best epoch {clip['best_epoch']}, "
             f"threshold {clip['threshold']:.3f} chosen on validation; fine-tuning {clip['finetune_cpu_seconds']:.0f} "
             f"CPU-s, {clip['finetune_seconds']:.0f} s wall)",
             f"  defective vs functional accuracy   {clip['accuracy']:.3f}  (at 0.5: {clip['accuracy_at_half']:.3f}; "
             f"mono {clip['accuracy_mono']:.3f}, poly {clip['accuracy_poly']:.3f}; majority {clip['majority']:.3f})",
             f"  balanced accuracy                  {clip['balanced_accuracy']:.3f}  (chance 0.500)",
             f"  AUROC                              {clip['auroc']:.3f}  (chance 0.500)",
             f"  4-level accuracy                   {clip['level_accuracy']:.3f}  (majority {clip['level_majority']:.3f})"]
    single = figures.get("clip_single_view")
    if single:
        lines.append(f"  the same CLIP on one view (no symmetry mean): accuracy {single['accuracy']:.3f} (at 0.5: "
                     f"{single['accuracy_at_half']:.3f}), AUROC {single['auroc']:.3f}, 4-level {single['level_accuracy']:.3f}")
    lines += [f"  {name:<50} {value:.4f}" for name, value in PAPER.items()]
    lines += verdict_lines(figures["verdict"]) if "verdict" in figures else []
    lines += caption_lines(figures["captions"]) if "captions" in figures else []
    lines += explanation_lines(figures.get("explanations", {}))
    lines.append(f"({figures['seconds']:.0f} s, {figures['cpu_seconds']:.0f} CPU-s)")
    return "\n".join(lines)


def verdict_lines(verdict):
    targets = verdict["targets"]
    aimed = (f"; calibrated for at most {targets['max_defective_passed']:.3f} / {targets['max_healthy_failed']:.3f}"
             if targets else "; not calibrated: default thresholds")
    return [f"  verdict decided without review        {verdict['coverage']:.3f}  (error among decided "
            f"{verdict['error']:.3f}; defective passed {verdict['defective_passed']:.3f}, healthy failed "
            f"{verdict['healthy_failed']:.3f}{aimed}; error with no review {verdict['no_review_error']:.3f})"]


def caption_lines(captions):
    return [f"  auto-label captions agree with the experts   {captions['auto_label_agreement']:.3f} "
            f"(unclear {captions['auto_label_unclear']:.3f})",
            f"  generated captions agree with the experts    {captions['generated_agreement']:.3f} "
            f"(unclear {captions['generated_unclear']:.3f}; equal to the auto-label "
            f"{captions['generated_equals_auto_label']:.3f})"] + undertrained_warning(captions)


def undertrained_warning(captions, most=0.5):
    """A line when most generated captions name nothing the knowledge base knows while the auto-labels do: a
    mapper that has not learned its labels' sentences (seen once after one epoch: "-Spectral Cell with ...")."""
    if captions["generated_unclear"] <= most or captions["auto_label_unclear"] > most:
        return []
    return [f"  WARNING: {captions['generated_unclear']:.0%} of the generated captions name no knowledge-base "
            "description: the captioner has not learned its labels; train it longer (train.py --epochs)"]


def explanation_lines(explanations):
    lines = []
    for name, values in explanations.items():
        lines.append(f"  {name} on {values['cells']} defective cells: deletion AUC {values['deletion']:.3f} "
                     f"(random {values['deletion_random']:.3f}, lower is better), insertion AUC "
                     f"{values['insertion']:.3f} (random {values['insertion_random']:.3f}, higher is better)")
    return lines


if __name__ == "__main__":
    main()
