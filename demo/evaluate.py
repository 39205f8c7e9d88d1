"""Measure the offline demo on a held-out synthetic world (another seed than the one it was trained on).

    python -m demo.evaluate [--bundle checkpoints/demo] [--n 600] [--seed 1] [--explain 60]
    python -m demo.evaluate --clip checkpoints/demo/clip     # CLIP numbers only, no captioner

Prints one table: CLIP top-1 defect type and healthy-vs-defect AUROC, auto-label accuracy, caption accuracy,
and for every explanation method the pointing game, energy inside the defect mask and deletion/insertion
AUC, each beside the same number for random maps (the score of no explanation).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from demo.world import load_masks, load_truth, write_world  # noqa: E402
from models.clip import CLIPW  # noqa: E402
from utils.caption_words import HEALTHY_WORDS, named_defects, words  # noqa: E402
from utils.knowledge import load_knowledge  # noqa: E402
from utils.metrics import auroc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def held_out_world(directory, n, seed, size=128):
    return write_world(directory, n, seed=seed, width=size, height=size, progress=True)


def defects_of(truth):
    return [[d for d in row.split(";") if d] for row in truth["defects"]]


def clip_scores(probabilities, truth, knowledge):
    """Top-1 defect type among the defect prompts (any true defect / the primary one) on defect items, and
    the AUROC of the defect prompts' total probability for healthy vs defect."""
    defect_columns = [i for i, healthy in enumerate(knowledge.healthy_mask()) if not healthy]
    defect_ids = [knowledge.ids()[i] for i in defect_columns]
    defect_probs = probabilities[:, defect_columns]
    top = [defect_ids[i] for i in defect_probs.argmax(dim=1).tolist()]
    truths = defects_of(truth)
    rows = [i for i, d in enumerate(truths) if d]
    return {
        "top1_any": float(np.mean([top[i] in truths[i] for i in rows])),
        "top1_primary": float(np.mean([top[i] == truth["primary"].iloc[i] for i in rows])),
        "chance_any": float(np.mean([len(truths[i]) / len(defect_ids) for i in rows])),
        "chance_primary": 1 / len(defect_ids),
        "auroc": auroc([bool(d) for d in truths], defect_probs.sum(dim=1).numpy()),
    }


def caption_correct(caption, primary, knowledge, defects=None):
    """A defect item's caption names its primary defect (with `defects`, any of them); a healthy item's
    says fresh/healthy and names no defect."""
    named = named_defects(caption, knowledge)
    if primary == "healthy":
        return not named and bool(HEALTHY_WORDS & words(caption))
    return bool(set(named) & set(defects)) if defects else primary in named


def label_scores(dataset_dir, truth, knowledge):
    """The auto-labeler's output vs the truth: top-1 prompt (a true defect, or healthy for a healthy item)
    and its caption (caption_correct)."""
    table = pd.read_csv(Path(dataset_dir) / "caption_mapping.csv", dtype=str, keep_default_na=False)
    by_id = truth.set_index("id")
    healthy = {p.id for p in knowledge.prompts if p.healthy}
    top_ok, caption_ok, caption_any = [], [], []
    for path, top, caption in zip(table["path"], table["prompt_1"], table["caption"]):
        row = by_id.loc[Path(path).stem]
        defects = [d for d in row["defects"].split(";") if d]
        top_ok.append(top in defects if defects else top in healthy)
        caption_ok.append(caption_correct(caption, row["primary"], knowledge))
        caption_any.append(caption_correct(caption, row["primary"], knowledge, defects))
    return {"label_top1": float(np.mean(top_ok)), "label_caption": float(np.mean(caption_ok)),
            "label_caption_any": float(np.mean(caption_any))}


def run_labeler(clip_dir, world, knowledge, out_dir, top_k=3):
    """train/label.py on the world's images, run as a user runs it."""
    subprocess.run([sys.executable, str(ROOT / "train" / "label.py"), "--images", str(Path(world) / "images"),
                    "--out", str(out_dir), "--clip", str(Path(clip_dir).resolve()), "--knowledge", str(knowledge),
                    "--top-k", str(top_k), "--workers", "0", "--quiet"], check=True)
    return out_dir


def caption_scores(captioner, pixels, truth, knowledge, batch_size=32):
    captions = []
    for chunk in tqdm(pixels.split(batch_size), desc="captions", unit="batch"):
        captions += captioner.generate(embeddings=captioner.clip.encode_images(chunk), max_new_tokens=24)
    rows = list(zip(captions, truth["primary"], defects_of(truth)))
    return {"caption": float(np.mean([caption_correct(c, p, knowledge) for c, p, _ in rows])),
            "caption_any": float(np.mean([caption_correct(c, p, knowledge, d) for c, p, d in rows]))}, captions


def caption_score_fn(captioner, caption):
    """score_fn for the perturbation curves of a caption map: the caption's mean per-token probability."""
    count = len(captioner.tokenizer(caption, add_special_tokens=False).input_ids) + 1

    def score(pixel_values):
        with torch.no_grad():
            features = captioner.clip.image_features(pixel_values)
            return (captioner.caption_log_likelihood(features, [caption] * len(features)) / count).exp()
    return score


def explanation_scores(clip, world, truth, knowledge, pixels, items, captioner=None, captions=None, steps=16,
                       random_count=20, random_curves=2):
    """Per method (models.explain.METHODS, and the caption map): pointing game, energy in mask, deletion and
    insertion AUC, and their random baselines.

    Prompt methods explain the item's true primary defect prompt against its own mask; the caption map
    explains the generated caption against the union of the item's defect masks."""
    from models.explain import METHODS, Explainer
    from models.faithfulness import prompt_probability

    explainer = Explainer(clip)
    sentences = knowledge.sentences()
    names = [method.label for method in METHODS.values()] + (["caption map"] if captioner is not None else [])
    results = {name: {} for name in names}
    for i in tqdm(items, desc="explanations", unit="image"):
        row = truth.iloc[i]
        masks = load_masks(world, row["id"])
        image = pixels[i:i + 1].to(clip.device)
        index = knowledge.index(row["primary"])
        for method in METHODS.values():
            saliency = explainer.prompt_maps(image, sentences, method, indices=[index])[0]
            _score_map(results[method.label], saliency, masks[row["primary"]], image,
                       prompt_probability(clip, sentences, index), clip.patch_grid, steps, random_count, random_curves)
        if captioner is not None:
            saliency = explainer.caption_map(captioner, image, captions[i])[0]
            _score_map(results["caption map"], saliency, np.any(np.stack(list(masks.values())), axis=0), image,
                       caption_score_fn(captioner, captions[i]), clip.patch_grid, steps, random_count, random_curves)
    return {name: {key: float(np.mean(values)) for key, values in out.items()} for name, out in results.items()}


def _score_map(out, saliency, mask, image, score_fn, grid, steps, random_count, random_curves):
    """Append one map's scores and the same scores of random maps to the lists in `out`."""
    from models.faithfulness import deletion_auc, energy_in_mask, insertion_auc, pointing_game, random_baseline

    def add(key, value):
        out.setdefault(key, []).append(value)

    add("pointing", pointing_game(saliency, mask))
    add("energy", energy_in_mask(saliency, mask))
    add("pointing_random", random_baseline(pointing_game, grid, mask, count=random_count))
    add("energy_random", random_baseline(energy_in_mask, grid, mask, count=random_count))
    for curve, auc in (("deletion", deletion_auc), ("insertion", insertion_auc)):
        add(curve, auc(saliency, score_fn, image, steps=steps))
        add(f"{curve}_random", random_baseline(auc, grid, score_fn, image, count=random_curves, steps=steps))


def table(clip_result, label_result=None, caption_result=None, explain_result=None):
    rows = [("CLIP top-1 defect type (a true defect)", clip_result["top1_any"], clip_result["chance_any"]),
            ("CLIP top-1 defect type (the primary)", clip_result["top1_primary"], clip_result["chance_primary"]),
            ("CLIP healthy-vs-defect AUROC", clip_result["auroc"], 0.5)]
    if label_result:
        rows += [("auto-label top-1 prompt correct", label_result["label_top1"], np.nan),
                 ("auto-label caption correct (primary defect)", label_result["label_caption"], np.nan),
                 ("auto-label caption correct (a true defect)", label_result["label_caption_any"], np.nan)]
    if caption_result:
        rows += [("generated caption correct (primary defect)", caption_result["caption"], np.nan),
                 ("generated caption correct (a true defect)", caption_result["caption_any"], np.nan)]
    for name, values in (explain_result or {}).items():
        for key, label in (("pointing", "pointing game"), ("energy", "energy in mask"),
                           ("deletion", "deletion AUC (lower better)"), ("insertion", "insertion AUC (higher better)")):
            rows.append((f"{name}: {label}", values[key], values[f"{key}_random"]))
    frame = pd.DataFrame(rows, columns=["metric", "value", "random/chance"])
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo", help="captioner bundle (default: %(default)s)")
    parser.add_argument("--clip", help="evaluate this CLIP directory only (no labeler, captions, caption map)")
    parser.add_argument("--world", default="checkpoints/demo-eval-world",
                        help="held-out world, generated when missing (default: %(default)s)")
    parser.add_argument("--n", type=int, default=600, help="held-out images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="held-out world seed; the demo trains on 0")
    parser.add_argument("--explain", type=int, default=60, help="defect images to explain (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=16, help="points on each deletion/insertion curve")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(evaluate(args))
    print(f"({time.perf_counter() - start:.0f}s)")


def evaluate(args):
    """The whole table for the parsed flags."""
    captioner = None
    if args.clip:
        clip = CLIPW.from_pretrained(args.clip)
    else:
        from models.vlm import ClipCaptioner
        captioner = ClipCaptioner.from_pretrained(args.bundle)
        clip = captioner.clip
    knowledge_source = captioner.config.knowledge if captioner else "fruit"
    knowledge = load_knowledge(knowledge_source)
    world = held_out_world(args.world, args.n, args.seed)
    truth = load_truth(world)
    pixels = clip.pixel_values([Path(world) / p for p in truth["path"]])
    clip_result = clip_scores(clip.probabilities(pixels, knowledge.sentences()).cpu(), truth, knowledge)
    label_result = caption_result = captions = None
    if captioner is not None:
        with tempfile.TemporaryDirectory() as scratch:
            labels = run_labeler(Path(args.bundle) / captioner.config.clip, world, knowledge_source,
                                 Path(scratch) / "labels")
            label_result = label_scores(labels, truth, knowledge)
        caption_result, captions = caption_scores(captioner, pixels, truth, knowledge)
    items = [i for i, d in enumerate(defects_of(truth)) if d][:args.explain]
    explain_result = explanation_scores(clip, world, truth, knowledge, pixels, items, captioner, captions,
                                        steps=args.steps) if items else None
    return (f"\nheld-out world {world} (seed {args.seed}, {len(truth)} images; {len(items)} explained), "
            f"{'CLIP ' + args.clip if args.clip else 'bundle ' + args.bundle}\n"
            + table(clip_result, label_result, caption_result, explain_result))


if __name__ == "__main__":
    main()
