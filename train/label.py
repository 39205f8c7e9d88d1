"""Auto-label an image folder: CLIP ranks the knowledge base for each image; the top matches become a caption.

    python train/label.py --images photos/ --out data/photos --knowledge fruit --top-k 5

Writes the dataset directory that train/train.py reads (format in utils/data.py): embeddings.safetensors,
caption_mapping.csv (id, path, class, caption, prompt_1, prob_1, ...), failed_images.txt (path and reason
for every corrupt, non-image or too large file) and manifest.json. When the knowledge base lists product
kinds, CLIP also picks the kind (columns kind, kind_prob) and the caption names it ("An apple with ...").

Folder: searched recursively for image files (hidden files and folders skipped). The first sub-folder is
the image's class (photos/rotten/a.jpg -> "rotten"); images directly in the folder get class "". A wider or
taller photo is labeled from its most defective square tile, the one the app writes its caption from.

Resuming: images are encoded in shards of --shard-size; each finished shard is saved in OUT/.parts/.
Run the same command again after an interruption and only the missing shards are encoded, then merged;
the result equals an uninterrupted run. A finished dataset with the same inputs is left as it is; a run
with another CLIP or knowledge base over an existing (or half-done) one is refused unless --overwrite.

Very large folders: start the shards as separate processes or machines writing to the same OUT, e.g.
    python train/label.py --images photos/ --out data/photos --num-shards 4 --shard-index I   (I = 0..3)
and, when all are done, run once more without --shard-index: it finds every shard done and merges.

Class prior (--class-prior prior.yaml): when the folder names already say something, map a class folder
to "healthy", "defect" or a list of prompt ids:
    fresh: healthy
    rotten: defect
    moldy: [green_mold, blue_mold, white_mold, black_mold]
For an image in a mapped folder, CLIP's probabilities of that group's prompts are multiplied by
--prior-weight (default 4) and all are renormalized to sum to 1: the folder tips close calls toward its
group while clear visual evidence for other prompts still wins. Unmapped folders are left as CLIP ranks them.
"""
import argparse
import warnings
from pathlib import Path

from utils.encoding import (DEFAULT_WORKERS, FORMAT, PARTS, SHARD_SIZE, LabelError, add_run_arguments, check_settings,
                            clip_id, digest, encode_shards, file_stats, finish_output, report, start_output)
from utils.images import DEFAULT_MAX_PIXELS
from utils.summarizer import MIN_SHARE

PRIOR_WEIGHT = 4.0


def label_folder(image_dir, out_dir, clip, knowledge, top_k=5, batch_size=64, workers=DEFAULT_WORKERS,
                 class_prior=None, progress=True, *, prior_weight=PRIOR_WEIGHT, max_pixels=DEFAULT_MAX_PIXELS,
                 shard_size=SHARD_SIZE, shard_index=None, num_shards=1, overwrite=False, device=None,
                 min_share=MIN_SHARE) -> Path:
    """Label every image under `image_dir` into the dataset directory `out_dir` and return it.

    clip: a CLIPW, or a hub id / directory to load (on `device`) once the folder is known to hold images.
    knowledge: a KnowledgeBase, a built-in name or a file. class_prior: None, a mapping or a YAML/JSON file.
    min_share: a second or third defect is named in a caption when it holds this share of the top-k's mass.
    With shard_index set only that share of the shards is encoded (no merge); see the module docstring.
    """
    from models.clip import CLIPW
    from models.kinds import kind_probabilities
    from models.views import PhotoTiles
    from utils.data import class_of
    from utils.knowledge import load_knowledge

    root = Path(image_dir)
    check_settings(top_k=top_k, batch_size=batch_size, workers=workers, shard_size=shard_size,
                   shard_index=shard_index, num_shards=num_shards, overwrite=overwrite, prior_weight=prior_weight)
    if not 0 <= min_share <= 1:
        raise LabelError(f"min_share must be in [0, 1], got {min_share}")
    files = list_images(root)
    kb = load_knowledge(knowledge)
    prior = load_class_prior(class_prior, kb)
    names = [path.relative_to(root).as_posix() for path in files]
    if prior:
        _warn_unused_prior(prior, {class_of(name, "") for name in names})
    if isinstance(clip, (str, Path)):
        clip = CLIPW.from_pretrained(str(clip), device=device)
    stats = file_stats(files, names)
    inputs = {
        "format": FORMAT, "kind": "folder", "clip": clip_id(clip), "embed_dim": clip.embed_dim,
        "knowledge": kb.name, "knowledge_hash": kb.hash(), "top_k": min(top_k, len(kb.prompts)),
        "class_prior": prior, "prior_weight": float(prior_weight) if prior else None,
        "source": str(root.resolve()), "max_pixels": max_pixels, "files": digest(stats), "min_share": float(min_share),
    }
    out = Path(out_dir)
    if start_output(out, inputs, overwrite, defaults={"min_share": MIN_SHARE}):  # labeled before it was a flag
        return out
    encoded = encode_shards(files, names, stats, out / PARTS, clip, kb.sentences(), shard_size=shard_size,
                            batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress,
                            shard_index=shard_index, num_shards=num_shards,
                            tiles=PhotoTiles(tuple(kb.healthy_mask())))  # the tile the app captions
    if encoded is None:
        return out  # this process's shards are done; a run without shard_index merges
    kinds = kind_probabilities(clip, encoded.embeddings, kb)
    table = label_table(encoded, kb, inputs["top_k"], prior, prior_weight, kinds, min_share)
    finish_output(out, encoded.embeddings, table, inputs, encoded.failed)
    return out


def list_images(root) -> list:
    """Every image file under `root`, the unreadable kinds (svg, raw, ...) included: they end up in
    failed_images.txt with the reason, so nothing is lost unseen."""
    root = Path(root)
    if not root.is_dir():
        raise LabelError(f"{root}: no such folder")
    from utils.images import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS, find_images

    files = find_images(root, IMAGE_EXTENSIONS + UNSUPPORTED_EXTENSIONS)
    if not any(path.suffix.lower() in IMAGE_EXTENSIONS for path in files):
        found = f" (only {len(files)} files of unsupported formats)" if files else ""
        raise LabelError(f"{root}: no readable image files in it or its sub-folders{found}; looked for "
                         f"{' '.join(IMAGE_EXTENSIONS)}; hidden files are skipped")
    return files


def load_class_prior(source, knowledge):
    """None, a mapping or a YAML/JSON file of class folder -> "healthy" | "defect" | [prompt ids]
    -> {folder: [prompt ids]} (validated against the knowledge base), or None."""
    import yaml

    if source is None:
        return None
    where = "class prior"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            source = yaml.safe_load(Path(source).read_text(encoding="utf-8"))  # JSON is YAML too
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise LabelError(f"{where}: cannot read the class prior ({error})") from error
    if not isinstance(source, dict) or not source:
        raise LabelError(f"{where}: expected a mapping of class folder -> healthy | defect | [prompt ids]")
    groups = {"healthy": [p.id for p in knowledge.prompts if p.healthy],
              "defect": [p.id for p in knowledge.prompts if not p.healthy]}
    prior = {}
    for folder, group in source.items():
        if isinstance(group, str) and group in groups:
            prior[str(folder)] = groups[group]
        elif isinstance(group, list) and group and all(isinstance(g, str) for g in group):
            unknown = [g for g in group if g not in knowledge.ids()]
            if unknown:
                raise LabelError(f"{where}: {folder}: no prompt {', '.join(map(repr, unknown))} in knowledge base "
                                 f"{knowledge.name!r} (its ids: {', '.join(knowledge.ids())})")
            prior[str(folder)] = list(dict.fromkeys(group))
        else:
            raise LabelError(f"{where}: {folder}: expected 'healthy', 'defect' or a list of prompt ids, "
                             f"got {group!r}")
    return prior


def _warn_unused_prior(prior, classes):
    unused = sorted(set(prior) - classes)
    if unused:
        warnings.warn(f"class prior names folders that hold no images: {', '.join(unused)} "
                      f"(class folders: {', '.join(sorted(c for c in classes if c)) or 'none'})", stacklevel=3)


def apply_class_prior(probabilities, classes, prior, knowledge, weight=PRIOR_WEIGHT):
    """p'[j] = p[j] * w[j] / sum(p * w), w[j] = `weight` for the prompts mapped to the row's class, else 1."""
    import numpy as np
    import torch

    if not prior:
        return probabilities
    classes = np.asarray(classes, dtype=object)
    factors = torch.ones_like(probabilities)
    for folder, ids in prior.items():
        rows = torch.from_numpy(np.flatnonzero(classes == folder))
        factors[rows[:, None], torch.tensor([knowledge.index(i) for i in ids])] = weight
    scaled = probabilities * factors
    return scaled / scaled.sum(dim=1, keepdim=True)


def label_table(encoded, knowledge, top_k, prior=None, prior_weight=PRIOR_WEIGHT, kinds=None, min_share=MIN_SHARE):
    """DataFrame: id, path, class, caption = summarize(top-k, kind), [kind, kind_prob when the knowledge base
    has kinds: CLIP's likeliest kind and its probability, from `kinds` [n, kinds]], prompt_i / prob_i
    (prompt ids, probabilities)."""
    import pandas as pd

    from utils.data import class_of
    from utils.summarizer import summarize_top

    classes = [class_of(name, "") for name in encoded.names]
    probabilities = apply_class_prior(encoded.probabilities, classes, prior, knowledge, prior_weight)
    values, indices = probabilities.topk(top_k, dim=1)
    values, indices = values.tolist(), indices.tolist()
    ids = knowledge.ids()
    kind_p, kind_ix = kinds.max(dim=1) if kinds is not None else (None, None)
    best = [None] * len(indices) if kinds is None else [knowledge.kinds[i] for i in kind_ix.tolist()]
    table = {"id": make_ids(encoded.names), "path": encoded.names, "class": classes,
             "caption": [summarize_top(row, knowledge, top_k, kind=kind, min_share=min_share)
                         for row, kind in zip(probabilities.tolist(), best)]}
    if kinds is not None:
        table.update(kind=[kind.id for kind in best], kind_prob=[round(p, 6) for p in kind_p.tolist()])
    for rank in range(top_k):
        table[f"prompt_{rank + 1}"] = [ids[row[rank]] for row in indices]
        table[f"prob_{rank + 1}"] = [round(row[rank], 6) for row in values]
    return pd.DataFrame(table)


def make_ids(names) -> list:
    """Relative path without its extension ("rotten/img_01"); the full name where that would repeat."""
    stems = [name.rsplit(".", 1)[0] for name in names]
    seen = {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
    return [stem if seen[stem] == 1 else name for stem, name in zip(stems, names)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder (class sub-folders or flat)")
    parser.add_argument("--knowledge", default="fruit",
                        help="knowledge base: built-in name or YAML/JSON file (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="prompts kept per image (default: %(default)s)")
    parser.add_argument("--min-share", type=float, default=MIN_SHARE,
                        help="a caption names a second or third defect only when it holds this share of the top-k's "
                             "probability (default: %(default)s, the most primary defects named; 0.2-0.3 name fewer "
                             "absent ones and miss the primary more: README 'The offline demo')")
    parser.add_argument("--class-prior", help="YAML/JSON: class folder -> healthy | defect | [prompt ids]")
    parser.add_argument("--prior-weight", type=float, default=PRIOR_WEIGHT,
                        help="factor for the prompts a folder is mapped to (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="split the shards among this many processes")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="encode only shards s with s %% num-shards == this (no merge)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    from utils.data import DatasetError
    from utils.knowledge import KnowledgeError

    try:
        out = label_folder(args.images, args.out, args.clip, args.knowledge, top_k=args.top_k,
                           min_share=args.min_share, batch_size=args.batch_size, workers=args.workers,
                           class_prior=args.class_prior, progress=not args.quiet, prior_weight=args.prior_weight,
                           max_pixels=args.max_pixels,
                           shard_size=args.shard_size, shard_index=args.shard_index, num_shards=args.num_shards,
                           overwrite=args.overwrite, device=args.device)
    except (LabelError, DatasetError, KnowledgeError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report(out))


if __name__ == "__main__":
    main()
