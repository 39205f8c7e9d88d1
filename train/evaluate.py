"""Caption metrics of one or several trained bundles on a labeled dataset dir (its captions are the references).

    python train/evaluate.py checkpoints/run1/best checkpoints/run2/best --data checkpoints/labeled_test
    python train/evaluate.py checkpoints/run1/best --data checkpoints/labeled --split val --csv eval.csv

Captions come from the dataset's stored CLIP embeddings, so the bundles must use the CLIP that labeled it.
--split val|train re-creates train/train.py's split (same --val-fraction and --seed) of a run trained on
this one dataset dir.
"""
import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

import pandas as pd  # noqa: E402

from models.vlm import ClipCaptioner  # noqa: E402
from train.train import (generate_captions, load_training_data, mean_loss, parse_metrics,  # noqa: E402
                         references_by_image, same_model, split_indices)
from utils.data import DatasetMismatchError, atomic_write  # noqa: E402
from utils.metrics import SCORERS, caption_metrics  # noqa: E402


def display_names(bundles):
    """Short unique names for bundles: 'best', or 'run1/best' when two bundles share a folder name."""
    names = [Path(b).name for b in bundles]
    for depth in range(2, 1 + max((len(Path(b).resolve().parts) for b in bundles), default=1)):
        if len(set(names)) == len(names):
            break
        names = ["/".join(Path(b).resolve().parts[-depth:]) for b in bundles]
    return names


def check_bundle(captioner, manifest, bundle):
    """The stored embeddings must come from the bundle's CLIP: refuse another width, warn on another name."""
    if manifest.get("embed_dim") and int(manifest["embed_dim"]) != captioner.config.clip_dim:
        raise DatasetMismatchError(f"{bundle} expects {captioner.config.clip_dim}-d CLIP embeddings but the dataset "
                                   f"holds {manifest['embed_dim']}-d ones (from {manifest.get('clip')!r})")
    clip = Path(bundle) / captioner.config.clip
    if not (clip.is_dir() or same_model(captioner.config.clip, manifest.get("clip"))):
        warnings.warn(f"{bundle} uses CLIP {captioner.config.clip!r} but the dataset was labeled with "
                      f"{manifest.get('clip')!r}: scores are meaningless unless they are the same model", stacklevel=2)


def select_rows(data, split, val_fraction, seed):
    if split == "all":
        return list(range(len(data.captions)))
    train_idx, val_idx = split_indices(data, val_fraction, seed)
    return (val_idx if split == "val" else train_idx).tolist()


def evaluate(bundles, dataset_dir, *, max_items=None, split="all", val_fraction=0.1, seed=0, batch_size=32,
             device=None, lm_precision="fp32", metrics=SCORERS, progress=True, **generation):
    """One row per bundle: items, mean loss on the reference captions, exact match, token F1, BLEU-1..4,
    METEOR, ROUGE-L, CIDEr and seconds. `generation` goes to ClipCaptioner.generate (greedy by default)."""
    if isinstance(bundles, (str, Path)):
        bundles = [bundles]
    data = load_training_data([dataset_dir])
    items, references = references_by_image(data.paths, data.captions, select_rows(data, split, val_fraction, seed))
    items = items[:max_items] if max_items is not None and max_items >= 0 else items
    if not items:
        raise ValueError(f"{dataset_dir}: no items to evaluate (split {split!r})")
    loss_rows = [i for i in items for _ in references[i]]  # every reference caption of every chosen image
    loss_captions = [c for i in items for c in references[i]]
    results = []
    for name, bundle in zip(display_names(bundles), bundles):
        captioner = ClipCaptioner.from_pretrained(bundle, device=device, lm_precision=lm_precision)
        check_bundle(captioner, data.manifest, bundle)
        started = time.perf_counter()
        predictions = generate_captions(captioner, data.embeddings[items], batch_size, progress=progress,
                                        desc=name, **generation)
        loss = mean_loss(captioner, data.embeddings[loss_rows], loss_captions, batch_size)
        scores = caption_metrics({i: references[i] for i in items}, dict(zip(items, predictions)), metrics)
        results.append({"model": name, "items": len(items), "loss": loss, **scores,
                        "seconds": round(time.perf_counter() - started, 2), "bundle": str(bundle)})
        del captioner
    return pd.DataFrame(results)


def format_table(table):
    shown = table.drop(columns=["bundle"])
    return shown.to_string(index=False, float_format="{:.4f}".format)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", help="trained bundle dirs (e.g. checkpoints/run1/best)")
    ap.add_argument("--data", required=True, help="labeled dataset dir whose captions are the references")
    ap.add_argument("--csv", help="also write the table to this CSV file")
    ap.add_argument("--max", type=int, default=None, dest="max_items",
                    help="evaluate at most this many images (default: all)")
    ap.add_argument("--split", choices=("all", "val", "train"), default="all",
                    help="all rows, or train/train.py's validation or training split (default: %(default)s)")
    ap.add_argument("--val-fraction", type=float, default=0.1,
                    help="the training run's --val-fraction, for --split (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the training run's --seed, for --split (default: %(default)s)")
    ap.add_argument("--metrics", default=",".join(SCORERS), help="pycocoevalcap scorers, comma-separated, or "
                    "'none'; exact match and token F1 always (default: %(default)s)")
    ap.add_argument("--beams", type=int, default=1, help="beam search width; 1 = greedy (default: %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=32, help="captions generated at once (default: %(default)s)")
    ap.add_argument("--lm-precision", choices=("fp32", "bf16", "int8"), default="fp32",
                    help="LM weights for inference; int8 is CPU-only (default: %(default)s)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                    help="show progress bars (default: on)")
    args = ap.parse_args(argv)
    try:
        table = evaluate(args.bundles, args.data, max_items=args.max_items, split=args.split,
                         val_fraction=args.val_fraction, seed=args.seed, batch_size=args.batch_size,
                         device=args.device, lm_precision=args.lm_precision, metrics=parse_metrics(args.metrics),
                         progress=args.progress, num_beams=args.beams, max_new_tokens=args.max_new_tokens)
    except (ValueError, OSError) as error:
        ap.exit(2, f"error: {error}\n")
    print(format_table(table))
    if args.csv:
        atomic_write(args.csv, lambda p: table.to_csv(p, index=False))
        print(f"wrote {args.csv}")
    return table


if __name__ == "__main__":
    main()
