"""Turn a review directory (the app's --review-dir) into a labeled dataset of human captions for train/train.py.

    python train/corrections.py --reviews checkpoints/reviews --out data/corrections --clip checkpoints/demo/clip
    python train/train.py data/photos data/corrections --init-from checkpoints/demo --human-repeat 5 --out runs/r2

Each reviewed image becomes one row, captioned by what the operator said: their corrected caption, else a
caption summarized from the descriptions they ticked (naming the kind CLIP sees when the knowledge base lists
kinds, as train/label.py's captions do), else (a result marked right) the model's caption. A
result marked wrong with nothing to learn from is listed in failed_images.txt with the reason; when an image
was reviewed twice, the newer review wins. The dataset is marked human-labeled (manifest "labeled_by":
"human"), so train/train.py prefers its captions where the same image is also in an auto-labeled dataset.
Give the CLIP that labeled those datasets (the embeddings must come from the same model). Encoding resumes
when interrupted, as with train/label.py.
"""
import argparse
from pathlib import Path

from utils.encoding import (FORMAT, PARTS, SHARD_SIZE, LabelError, add_run_arguments, check_settings, clip_id, digest,
                            encode_shards, file_stats, finish_output, report, start_output)
from utils.images import DEFAULT_MAX_PIXELS


def reviewed_items(review_dir, knowledge):
    """([(row, caption)], [(image, reason)]) for the newest review of each image."""
    from utils.reviews import ReviewStore, latest_per_image, training_caption

    store = ReviewStore(review_dir)
    rows = latest_per_image(store.rows())
    if not rows:
        raise LabelError(f"{review_dir}: no reviews in it (rows/*.json); flag results in the app first")
    items, skipped = [], []
    for row in rows:
        caption, reason = training_caption(row, knowledge)
        if caption:
            items.append((row, caption))
        else:
            skipped.append((row["image"], reason))
    if not items:
        raise LabelError(f"{review_dir}: none of the {len(rows)} reviews gives a caption to learn from "
                         "(mark results right, or correct the caption / tick descriptions)")
    return items, skipped


def review_knowledge(review_dir, option):
    """--knowledge, else the one knowledge base the reviews were made with."""
    from utils.knowledge import load_knowledge
    from utils.reviews import ReviewStore

    if option:
        return load_knowledge(option)
    names = {row.get("knowledge") for row in ReviewStore(review_dir).rows()} - {"", None}
    if len(names) > 1:
        raise LabelError(f"{review_dir}: reviews made with several knowledge bases ({', '.join(sorted(names))}); "
                         "pass --knowledge")
    return load_knowledge(names.pop() if names else "fruit")


def import_reviews(review_dir, out_dir, clip, *, knowledge=None, batch_size=64, workers=0, progress=True,
                   overwrite=False, device=None, max_pixels=DEFAULT_MAX_PIXELS, shard_size=SHARD_SIZE):
    """Write the dataset of human captions from `review_dir` into `out_dir` and return it."""
    import pandas as pd

    from models.clip import CLIPW
    from models.kinds import likeliest_kinds
    from models.views import PhotoTiles
    from utils.caption_words import named_defects
    from utils.reviews import training_caption

    check_settings(batch_size=batch_size, workers=workers, shard_size=shard_size)
    root = Path(review_dir)
    kb = review_knowledge(root, knowledge)
    items, skipped = reviewed_items(root, kb)
    names = [row["image"] for row, _ in items]
    files = [root / name for name in names]
    stats = file_stats(files, names)
    if isinstance(clip, (str, Path)):
        clip = CLIPW.from_pretrained(str(clip), device=device)
    inputs = {"format": FORMAT, "kind": "reviews", "labeled_by": "human", "clip": clip_id(clip),
              "embed_dim": clip.embed_dim, "knowledge": kb.name, "knowledge_hash": kb.hash(), "top_k": 0,
              "source": str(root.resolve()), "max_pixels": max_pixels, "files": digest(stats + [c for _, c in items])}
    out = Path(out_dir)
    if start_output(out, inputs, overwrite):
        return out
    encoded = encode_shards(files, names, stats, out / PARTS, clip, kb.sentences(), shard_size=shard_size,
                            batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress,
                            tiles=PhotoTiles(tuple(kb.healthy_mask())))  # as label.py: the tile the app captions
    rows = {row["image"]: row for row, _ in items}
    kinds = likeliest_kinds(clip, encoded.embeddings, kb)  # as train/label.py names them
    captions = [training_caption(rows[name], kb, kind)[0] for name, kind in zip(encoded.names, kinds)]
    table = pd.DataFrame([{"id": rows[n]["id"], "path": n, "class": "defective" if named_defects(c, kb) else "healthy",
                           "caption": c, "judgement": rows[n]["judgement"], "sha256": rows[n]["sha256"]}
                          for n, c in zip(encoded.names, captions)],
                         columns=["id", "path", "class", "caption", "judgement", "sha256"])
    finish_output(out, encoded.embeddings, table, inputs, skipped + encoded.failed)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", required=True, help="review directory written by the app (--review-dir)")
    parser.add_argument("--knowledge", help="knowledge base of the ticked descriptions (default: the reviews')")
    add_run_arguments(parser)
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    from utils.data import DatasetError
    from utils.knowledge import KnowledgeError

    try:
        out = import_reviews(args.reviews, args.out, args.clip, knowledge=args.knowledge, batch_size=args.batch_size,
                             workers=args.workers, progress=not args.quiet, overwrite=args.overwrite,
                             device=args.device, max_pixels=args.max_pixels, shard_size=args.shard_size)
    except (LabelError, DatasetError, KnowledgeError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report(out))


if __name__ == "__main__":
    main()
