"""Measure the offline demo on a held-out synthetic world (another seed than the one it was trained on).

    python -m demo.evaluate [--bundle checkpoints/demo] [--n 600] [--seed 1] [--explain 60] [--hard]
    python -m demo.evaluate --clip checkpoints/demo/clip --clip checkpoints/demo-reference-clip   # CLIPs only

Prints, per bundle or CLIP: CLIP top-1 defect type and healthy-vs-defect AUROC (and for a bundle auto-label
and caption accuracy), then one row per explanation method (models/explain.py METHODS, each logit-target
method also with the CLIP-ES target, and a bundle's caption map, by the app's method) with strict pointing
(the peak pixel of the smoothly upsampled map inside the mask dilated by half a patch), lenient pointing (the
peak patch touches the mask), energy inside the mask, deletion AUC (lower is better), insertion AUC and pixel
AUROC; then the same metrics for the true mask taken as the map (what pointing exactly at the defect scores:
how low deletion AUC gets on this world that way) and for random maps (the score of no explanation). Judge
methods on a CLIP that was not trained toward its maps (`python -m demo.build --reference`) and on the --hard
world.
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

from demo.scoring import caption_correct, defects_of, held_out_world  # noqa: E402
from demo.world import load_masks, load_truth  # noqa: E402
from models.clip import CLIPW  # noqa: E402
from models.config import InspectOptions  # noqa: E402
from utils.knowledge import load_knowledge  # noqa: E402
from utils.metrics import auroc  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP_METHOD = InspectOptions().method  # the caption map is scored as the app draws it


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


METRICS = {"strict": "strict pointing", "pointing": "pointing", "energy": "energy",
           "deletion": "deletion AUC", "insertion": "insertion AUC", "auroc": "pixel AUROC"}


def map_scores(saliency, mask, score_fn, image, steps=16, curves=True):
    """Every metric of one map against one mask (deletion/insertion only with `curves`)."""
    from models.faithfulness import (deletion_auc, energy_in_mask, insertion_auc, pixel_auroc, pointing_game,
                                     strict_pointing)

    scores = {"strict": float(strict_pointing(saliency, mask)), "pointing": float(pointing_game(saliency, mask)),
              "energy": energy_in_mask(saliency, mask), "auroc": pixel_auroc(saliency, mask)}
    if curves:
        scores["deletion"] = deletion_auc(saliency, score_fn, image, steps=steps)
        scores["insertion"] = insertion_auc(saliency, score_fn, image, steps=steps)
    return scores


def random_scores(grid, mask, score_fn, image, seed, steps=16, count=20, curves=2):
    """The same metrics for `count` random maps (curves for the first `curves` only: they cost forward
    passes): the score of no explanation."""
    from models.faithfulness import random_maps

    maps = random_maps(count, grid, seed)
    rows = [map_scores(saliency, mask, score_fn, image, steps, i < curves) for i, saliency in enumerate(maps)]
    return {key: float(np.nanmean([row[key] for row in rows if key in row])) for key in METRICS}


def prompt_explainers(clip, knowledge):
    """label -> fn(image, prompt index) -> [g, g]: every method in models.explain.METHODS with its own target,
    and each logit-target method again with the CLIP-ES target (the prompt against the healthy prompts)."""
    from models.explain import METHODS, Explainer

    explainer, sentences = Explainer(clip), knowledge.sentences()
    healthy = [i for i, is_healthy in enumerate(knowledge.healthy_mask()) if is_healthy]

    def explain(method, target=None):
        return lambda image, index: explainer.prompt_maps(image, sentences, method, indices=[index], target=target,
                                                          competitors=healthy)[0]
    table = {method.label: explain(method) for method in METHODS.values()}
    table.update({f"{method.label}, CLIP-ES target": explain(method, "clip_es") for method in METHODS.values()
                  if method.target == "logit"})
    return table


def explanation_scores(clip, world, truth, knowledge, pixels, items, captioner=None, captions=None, steps=16):
    """One row per item and explainer (prompt_explainers, and the caption map): every metric and ms per map, the
    same metrics for random maps, and whether CLIP ranks the explained prompt first of all (`recognized`; none
    for the caption map). A prompt map explains the item's true primary defect prompt against its mask; the
    caption map explains the generated caption against the union of the item's masks."""
    from models.explain import Explainer
    from models.faithfulness import prompt_probability

    explainers, rows = prompt_explainers(clip, knowledge), []
    for i in tqdm(items, desc="explanations", unit="image"):
        row, image = truth.iloc[i], pixels[i:i + 1].to(clip.device)
        masks, index = load_masks(world, row["id"]), knowledge.index(row["primary"])
        score_fn = prompt_probability(clip, knowledge.sentences(), index)
        recognized = bool(clip.probabilities(image, knowledge.sentences())[0].argmax() == index)
        rows += [{**scored, "recognized": recognized} for scored in
                 _scored(explainers, image, index, masks[row["primary"]], score_fn, clip.patch_grid, steps, i)]
        if captioner is not None:
            caption = {"caption map": lambda image, _: Explainer(clip).caption_map(captioner, image, captions[i],
                                                                                   method=APP_METHOD)[0]}
            union = np.any(np.stack(list(masks.values())), axis=0)
            rows += _scored(caption, image, None, union, caption_score_fn(captioner, captions[i]), clip.patch_grid,
                            steps, i, random_name="random maps (caption)")
    return pd.DataFrame(rows)


def _scored(explainers, image, index, mask, score_fn, grid, steps, seed, random_name="random maps"):
    """One row per explainer for one image, then the true mask's (a map pointing exactly at the defect) and the
    random maps' (no explanation)."""
    from models.faithfulness import mask_to_grid

    rows = []
    for name, explain in explainers.items():
        start = time.perf_counter()
        saliency = explain(image, index)
        milliseconds = 1000 * (time.perf_counter() - start)
        rows.append({"method": name, "item": seed, **map_scores(saliency, mask, score_fn, image, steps),
                     "ms": milliseconds})
    true_mask = mask_to_grid(mask, grid)
    rows.append({"method": random_name.replace("random maps", "true mask"), "item": seed,
                 **map_scores(true_mask, mask, score_fn, image, steps), "ms": np.nan})
    rows.append({"method": random_name, "item": seed, **random_scores(grid, mask, score_fn, image, seed, steps),
                 "ms": np.nan})
    return rows


def explanation_table(rows):
    """Methods as rows, metrics as columns (means over the items), the true-mask and random rows last; deletion AUC:
    lower is better."""
    frame = rows.groupby("method", sort=False).mean(numeric_only=True)
    references = [name for name in frame.index if name.startswith(("true mask", "random"))]
    frame = frame.loc[[name for name in frame.index if name not in references] + references, [*METRICS, "ms"]]
    shown = frame.rename(columns={**METRICS, "ms": "ms/map"}).rename_axis(None)
    return shown.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-",
                           formatters={"ms/map": lambda v: "-" if np.isnan(v) else f"{v:.0f}"})


def recognition_table(rows):
    """Strict pointing of each prompt map where CLIP ranks the explained defect first and where it does not: a map
    can only show where the CLIP sees a defect, so the first column is the method's, the second the CLIP's share."""
    prompts = rows[rows["recognized"].notna()]
    counts = prompts.groupby("recognized")["item"].nunique()
    frame = prompts.pivot_table(index="method", columns="recognized", values="strict", aggfunc="mean", sort=False)
    frame = frame.reindex(columns=[True, False]).rename(columns={
        True: f"ranked first by CLIP (n={counts.get(True, 0)})", False: f"not first (n={counts.get(False, 0)})"})
    return "strict pointing by CLIP's rank of the explained defect\n" + frame.rename_axis(None, axis=0).rename_axis(
        None, axis=1).to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")


def table(clip_result, label_result=None, caption_result=None):
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
    frame = pd.DataFrame(rows, columns=["metric", "value", "random/chance"])
    return frame.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo", help="captioner bundle (default: %(default)s)")
    parser.add_argument("--clip", action="append", help="evaluate this CLIP directory only (no labeler, captions, "
                        "caption map); repeat it to compare CLIPs, e.g. the bundle's clip/ and the reference CLIP")
    parser.add_argument("--world", help="held-out world, generated when missing (default: "
                        "checkpoints/demo-eval-world, or demo-eval-world-hard with --hard)")
    parser.add_argument("--hard", action="store_true", help="the harder world (demo.world.HARD: small, faint "
                        "defects, two items, stickers, leaves, speckles), so figures are not at ceiling")
    parser.add_argument("--n", type=int, default=600, help="held-out images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="held-out world seed; the demo trains on 0")
    parser.add_argument("--explain", type=int, default=60, help="defect images to explain (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=16, help="points on each deletion/insertion curve")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    world = held_out_world(args.world or f"checkpoints/demo-eval-world{'-hard' if args.hard else ''}", args.n,
                           args.seed, hard=args.hard)
    for clip_dir in args.clip or [None]:
        print(evaluate(args, world, clip_dir), flush=True)
    print(f"({time.perf_counter() - start:.0f}s)")


def evaluate(args, world, clip_dir=None):
    """The tables of one CLIP directory, or (clip_dir None) of the bundle, on the held-out world."""
    captioner = None
    if clip_dir:
        clip = CLIPW.from_pretrained(clip_dir)
    else:
        from models.vlm import ClipCaptioner
        captioner = ClipCaptioner.from_pretrained(args.bundle)
        clip = captioner.clip
    knowledge_source = captioner.config.knowledge if captioner else "fruit"
    knowledge = load_knowledge(knowledge_source)
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
    explained = explanation_scores(clip, world, truth, knowledge, pixels, items, captioner, captions,
                                   steps=args.steps) if items else None
    return (f"\nheld-out world {world} (seed {args.seed}, {len(truth)} images; {len(items)} explained), "
            f"{'CLIP ' + clip_dir if clip_dir else 'bundle ' + args.bundle}\n" + table(clip_result, label_result,
                                                                                      caption_result)
            + ("\n\n" + explanation_table(explained) + "\n\n" + recognition_table(explained)
               if explained is not None else ""))


if __name__ == "__main__":
    main()
