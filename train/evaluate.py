"""Caption metrics of one or several trained bundles on a labeled dataset dir (its captions are the references).

    python train/evaluate.py runs/run1/best runs/run2/best --data data/photos_test
    python train/evaluate.py runs/run1/best --data data/photos --split val --csv eval.csv

Captions come from the dataset's stored CLIP embeddings, so the bundles must use the CLIP that labeled it.
--split val|train re-creates train/train.py's split (same --val-fraction and --seed) of a run trained on
this one dataset dir. Offline, the demo bundle (checkpoints/demo) and bundles trained here work.
"""
import argparse
import time
import warnings
from pathlib import Path

from models.config import GenerationOptions, LoadOptions, add_inference_arguments
from utils.metrics import SCORERS
from utils.options import from_namespace, split_list


def check_bundle(captioner, manifest, bundle):
    """The stored embeddings must come from the bundle's CLIP: refuse another width, warn on another name."""
    from utils.data import DatasetMismatchError
    from utils.training_data import same_model

    if manifest.get("embed_dim") and int(manifest["embed_dim"]) != captioner.config.clip_dim:
        raise DatasetMismatchError(f"{bundle} expects {captioner.config.clip_dim}-d CLIP embeddings but the dataset "
                                   f"holds {manifest['embed_dim']}-d ones (from {manifest.get('clip')!r})")
    clip = Path(bundle) / captioner.config.clip
    if not (clip.is_dir() or same_model(captioner.config.clip, manifest.get("clip"))):
        warnings.warn(f"{bundle} uses CLIP {captioner.config.clip!r} but the dataset was labeled with "
                      f"{manifest.get('clip')!r}: scores are meaningless unless they are the same model", stacklevel=2)


def select_rows(data, split, val_fraction, seed):
    from utils.training_data import split_indices

    if split == "all":
        return list(range(len(data.captions)))
    train_idx, val_idx = split_indices(data, val_fraction, seed)
    return (val_idx if split == "val" else train_idx).tolist()


def evaluate(bundles, dataset_dir, *, max_items=None, split="all", val_fraction=0.1, seed=0, batch_size=32,
             load=None, metrics=SCORERS, progress=True, generation=None):
    """One row per bundle: items, mean loss on the reference captions, exact match, token F1, BLEU-1..4,
    METEOR, ROUGE-L, CIDEr and seconds. `load` a LoadOptions, `generation` a GenerationOptions (greedy)."""
    import pandas as pd

    from models.vlm import ClipCaptioner
    from utils.files import short_names
    from utils.metrics import caption_metrics
    from utils.training_data import load_training_data, references_by_image

    bundles = [bundles] if isinstance(bundles, (str, Path)) else bundles
    load = load or LoadOptions()
    data = load_training_data([dataset_dir])
    items, references = references_by_image(data.paths, data.captions, select_rows(data, split, val_fraction, seed))
    items = items[:max_items] if max_items is not None and max_items >= 0 else items
    if not items:
        raise ValueError(f"{dataset_dir}: no items to evaluate (split {split!r})")
    loss_rows = [i for i in items for _ in references[i]]  # every reference caption of every chosen image
    loss_captions = [c for i in items for c in references[i]]
    results = []
    for name, bundle in zip(short_names(bundles), bundles):
        captioner = ClipCaptioner.from_pretrained(bundle, device=load.device, lm_precision=load.lm_precision)
        check_bundle(captioner, data.manifest, bundle)
        started = time.perf_counter()
        predictions = captioner.caption_embeddings(data.embeddings[items], generation, batch_size, progress, name)
        loss = captioner.mean_loss(data.embeddings[loss_rows], loss_captions, batch_size)
        scores = caption_metrics({i: references[i] for i in items}, dict(zip(items, predictions)), metrics)
        results.append({"model": name, "items": len(items), "loss": loss, **scores,
                        "seconds": round(time.perf_counter() - started, 2), "bundle": str(bundle)})
        del captioner
    return pd.DataFrame(results)


def format_table(table):
    shown = table.drop(columns=["bundle"])
    return shown.to_string(index=False, float_format="{:.4f}".format)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="trained bundle dirs (e.g. runs/run1/best)")
    parser.add_argument("--data", required=True, help="labeled dataset dir whose captions are the references "
                                                      "(required)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    parser.add_argument("--max", type=int, default=None, dest="max_items",
                        help="evaluate at most this many images (default: all)")
    parser.add_argument("--split", choices=("all", "val", "train"), default="all",
                        help="all rows, or train/train.py's validation or training split (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the training run's --val-fraction, for --split (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0, help="the training run's --seed, for --split "
                                                                  "(default: %(default)s)")
    parser.add_argument("--metrics", type=split_list, default=SCORERS,
                        help=f"pycocoevalcap scorers, comma-separated, or 'none'; exact match and token F1 always "
                             f"(default: {','.join(SCORERS)})")
    parser.add_argument("--batch-size", type=int, default=32, help="captions generated at once (default: 32)")
    return add_inference_arguments(parser)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    from utils.files import atomic_write

    try:
        table = evaluate(args.bundles, args.data, max_items=args.max_items, split=args.split,
                         val_fraction=args.val_fraction, seed=args.split_seed, batch_size=args.batch_size,
                         load=from_namespace(LoadOptions, args), metrics=args.metrics, progress=args.progress,
                         generation=from_namespace(GenerationOptions, args))
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(format_table(table))
    if args.csv:
        atomic_write(args.csv, lambda p: table.to_csv(p, index=False))
        print(f"wrote {args.csv}")
    return table


if __name__ == "__main__":
    main()
