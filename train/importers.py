"""Import human-captioned image sets into the dataset format that train/label.py writes.

    python train/importers.py coco --captions annotations/captions_val2017.json --images val2017 --out data/coco
    python train/importers.py flickr --captions flickr30k/results.csv --images flickr30k/flickr30k_images \\
        --out data/flickr30k
    python train/importers.py elpv --out data/elpv

coco:   a COCO captions JSON ("images" with id and file_name, "annotations" with image_id and caption);
        --images is the folder the file names are relative to.
flickr: Flickr30k's pipe-separated results.csv ("image_name| comment_number| comment"), the token format
        ("1000092795.jpg#0<TAB>Two young guys ..."; results_20130124.token, Flickr8k.token.txt), or the
        "image,caption" CSV of the Kaggle Flickr8k copy.

One row per caption (these sets have about five per image), each with its image's embedding: row i of the
CSV is row i of the embeddings, as for labeled folders. An image's embedding is thus stored once per
caption: 2 KB per row at ViT-B/32 sizes, about 320 MB for Flickr30k's 159k captions; simple beats clever at
these sizes. Class is "" and there are no prompt columns (top_k 0, knowledge null); the manifest records
the format and the caption file. Unreadable or missing images go to failed_images.txt without their rows.
Encoding is sharded and resumable exactly like train/label.py (run the same command again).

elpv:   the ELPV solar-cell images of the installed `elpv-dataset` package (CC BY-NC-SA 4.0) as class
        folders for train/finetune_clip.py and train/label.py, not a dataset: OUT/train and OUT/test
        (75/25, stratified by defect probability and cell type, seeded), each <level>/<mono|poly>/ with
        links to the package's images, plus class_map.yaml (see utils/elpv.py).
"""
import argparse
import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import NamedTuple

from utils.encoding import (DEFAULT_WORKERS, FORMAT, PARTS, SHARD_SIZE, LabelError, add_run_arguments, check_settings,
                            clip_id, digest, encode_shards, file_stats, finish_output, report, start_output)
from utils.images import DEFAULT_MAX_PIXELS


class Caption(NamedTuple):
    id: str
    file: str  # relative to the images folder
    text: str


class CaptionFileError(ValueError):
    """A caption file that cannot be read in the expected format."""


def clean(text) -> str:
    return " ".join(str(text).split())


def read_coco(path) -> list:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        files = {image["id"]: image["file_name"] for image in data["images"]}
        captions = [Caption(str(a.get("id", f"{a['image_id']}#{n}")), files[a["image_id"]], clean(a["caption"]))
                    for n, a in enumerate(data["annotations"])]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CaptionFileError(f"{path}: cannot read the COCO captions file ({error})") from error
    except (KeyError, TypeError, AttributeError) as error:
        raise CaptionFileError(f"{path}: not a COCO captions file: expected 'images' (id, file_name) and "
                               f"'annotations' (image_id, caption) ({type(error).__name__}: {error})") from error
    return [c for c in captions if c.text]


def read_flickr(path) -> list:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CaptionFileError(f"{path}: cannot read the caption file ({error})") from error
    lines = text.splitlines()
    header = lines[0].replace(" ", "").lower() if lines else ""
    if header.startswith("image_name|"):
        parsed = [(n, _pipe_line(line)) for n, line in enumerate(lines[1:], 2) if line.strip()]
    elif header.startswith("image,caption"):
        rows = csv.reader(io.StringIO(text))
        next(rows)
        parsed = [(n, (row[0], None, row[1]) if len(row) == 2 else None) for n, row in enumerate(rows, 2) if row]
    else:
        parsed = [(n, _token_line(line)) for n, line in enumerate(lines, 1) if line.strip()]
    bad = [n for n, entry in parsed if entry is None]
    captions, count = [], {}
    for _, entry in parsed:
        if entry is None or not clean(entry[2]):
            continue
        name, number, caption = entry
        number = number if number is not None else str(count.get(name, 0))
        count[name] = count.get(name, 0) + 1
        captions.append(Caption(f"{name}#{number}", name, clean(caption)))
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} lines that are not 'image, number, caption' "
                      f"(first at line {bad[0]})", stacklevel=2)
    if not captions:
        raise CaptionFileError(f"{path}: no captions found (expected results.csv 'image_name| comment_number| "
                               "comment', token 'image.jpg#0<TAB>caption' or 'image,caption' lines)")
    return captions


def _pipe_line(line):
    fields = [f.strip() for f in line.split("|", 2)]
    if len(fields) == 3 and fields[0]:
        return fields[0], fields[1] or None, fields[2]
    # Flickr30k's results.csv has a line with the second pipe missing: "name.jpg| 4   A dog runs ..."
    match = re.fullmatch(r"(\d+)\s+(.*)", fields[1]) if len(fields) == 2 else None
    return (fields[0], match[1], match[2]) if match and fields[0] else None


def _token_line(line):
    key, tab, caption = line.partition("\t")
    if not tab or not key.strip():
        return None
    name, hash_, number = key.strip().rpartition("#")
    return (name, number, caption) if hash_ and name else (key.strip(), None, caption)


READERS = {"coco": read_coco, "flickr": read_flickr}


def import_captions(kind, captions_file, image_dir, out_dir, clip, *, limit=None, batch_size=64,
                    workers=DEFAULT_WORKERS, max_pixels=DEFAULT_MAX_PIXELS, shard_size=SHARD_SIZE, progress=True,
                    overwrite=False, device=None):
    """Read `captions_file` of format `kind` ("coco" | "flickr"), encode its images, write the dataset."""
    import pandas as pd
    import torch

    from models.clip import CLIPW

    check_settings(batch_size=batch_size, workers=workers, shard_size=shard_size)
    if limit is not None and limit < 1:
        raise LabelError(f"limit must be >= 1, got {limit}")
    captions = READERS[kind](captions_file)
    root = Path(image_dir)
    if not root.is_dir():
        raise LabelError(f"{root}: no such folder")
    by_file = {}
    for caption in captions:
        by_file.setdefault(caption.file, []).append(caption)
    names = sorted(by_file)[:limit]
    files = [root / name for name in names]
    stats = file_stats(files, names)
    if all(line.endswith("\tmissing") for line in stats):
        raise LabelError(f"none of the {len(names)} images named in {captions_file} is in {root} "
                         f"(e.g. {files[0]})")
    if isinstance(clip, (str, Path)):
        clip = CLIPW.from_pretrained(str(clip), device=device)
    inputs = {
        "format": FORMAT, "kind": kind, "clip": clip_id(clip), "embed_dim": clip.embed_dim,
        "knowledge": None, "knowledge_hash": None, "top_k": 0, "source": str(root.resolve()),
        "captions": str(Path(captions_file).resolve()), "captions_file": digest(file_stats([captions_file], ["_"])),
        "limit": limit, "max_pixels": max_pixels, "files": digest(stats),
    }
    out = Path(out_dir)
    if start_output(out, inputs, overwrite):
        return out
    encoded = encode_shards(files, names, stats, out / PARTS, clip, [], shard_size=shard_size,
                            batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress)
    rows = [(caption, row) for row, name in enumerate(encoded.names) for caption in by_file[name]]
    table = pd.DataFrame({"id": [c.id for c, _ in rows], "path": [c.file for c, _ in rows],
                          "class": "", "caption": [c.text for c, _ in rows]},
                         columns=["id", "path", "class", "caption"])
    embeddings = encoded.embeddings[torch.tensor([row for _, row in rows], dtype=torch.long)]
    finish_output(out, embeddings, table, {**inputs, "images": len(encoded.names)}, encoded.failed)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="kind", required=True, metavar="{coco,flickr,elpv}")
    for kind, text in (("coco", "COCO captions JSON"),
                       ("flickr", "Flickr30k results.csv / .token, or Flickr8k captions")):
        sub = formats.add_parser(kind, help=text, description=text)
        sub.add_argument("--captions", required=True, help="the caption file")
        sub.add_argument("--images", required=True, help="folder the caption file's image names are relative to")
        sub.add_argument("--limit", type=int, default=None, help="import only the first N images (sorted by name)")
        add_run_arguments(sub)
    add_elpv_parser(formats)
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    if args.kind == "elpv":
        return run_elpv(parser, args)
    from utils.data import DatasetError

    try:
        out = import_captions(args.kind, args.captions, args.images, args.out, args.clip, limit=args.limit,
                              batch_size=args.batch_size, workers=args.workers, max_pixels=args.max_pixels,
                              shard_size=args.shard_size, progress=not args.quiet, overwrite=args.overwrite,
                              device=args.device)
    except (CaptionFileError, LabelError, DatasetError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report(out))


def add_elpv_parser(formats):
    text = "ELPV solar cells (installed elpv-dataset package) -> class folders"
    sub = formats.add_parser("elpv", help=text, description=text)
    sub.add_argument("--out", required=True, help="folder for train/, test/ and class_map.yaml (required)")
    sub.add_argument("--source", help="the data folder (labels.csv, images/) when not the installed package's")
    sub.add_argument("--test-fraction", type=float, default=0.25, help="held-out share (default: %(default)s)")
    sub.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")


def run_elpv(parser, args):
    from utils.elpv import ElpvError, import_elpv, summary

    try:
        out = import_elpv(args.out, args.source, args.test_fraction, args.seed)
    except (ElpvError, ValueError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(summary(out))


if __name__ == "__main__":
    main()
