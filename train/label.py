"""Auto-label an image folder: CLIP ranks the knowledge base for each image; the top matches become a caption.

    python train/label.py --images photos/ --out data/photos --knowledge fruit --top-k 5

Writes the dataset directory that train/train.py reads (format in utils/data.py): embeddings.safetensors,
caption_mapping.csv (id, path, class, caption, prompt_1, prob_1, ...), failed_images.txt (path and reason
for every corrupt, non-image or too large file) and manifest.json.

Folder: searched recursively for image files (hidden files and folders skipped). The first sub-folder is
the image's class (photos/rotten/a.jpg -> "rotten"); images directly in the folder get class "".

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
import hashlib
import json
import shutil
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from models.clip import DEFAULT_CLIP, CLIPW  # noqa: E402
from utils.data import (CAPTIONS, EMBEDDINGS, FAILED, MANIFEST, DatasetError, DatasetMismatchError,  # noqa: E402
                        ImageFiles, atomic_write, class_of, collate_images, one_thread_worker, read_manifest,
                        save_dataset)
from utils.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, find_images  # noqa: E402
from utils.knowledge import KnowledgeError, load_knowledge  # noqa: E402
from utils.summarizer import summarize  # noqa: E402

SHARD_SIZE = 512
PRIOR_WEIGHT = 4.0
PARTS = ".parts"
IDENTITY = ("clip", "embed_dim", "knowledge_hash")  # what a re-run may not change without --overwrite
FORMAT = 1


class LabelError(ValueError):
    """Nothing to label, or settings that cannot work; raised before anything is written."""


@dataclass
class Encoded:
    names: list[str]              # the images that decoded (paths relative to the source), in file order
    embeddings: torch.Tensor      # [n, D]
    probabilities: torch.Tensor   # [n, P] CLIP softmax over the sentences ([n, 0] without sentences)
    failed: list[tuple[str, str]]  # (name, reason)


def label_folder(image_dir, out_dir, clip, knowledge, top_k=5, batch_size=64, workers=2, class_prior=None,
                 progress=True, *, prior_weight=PRIOR_WEIGHT, max_pixels=DEFAULT_MAX_PIXELS,
                 shard_size=SHARD_SIZE, shard_index=None, num_shards=1, overwrite=False, device=None) -> Path:
    """Label every image under `image_dir` into the dataset directory `out_dir` and return it.

    clip: a CLIPW, or a hub id / directory to load (on `device`) once the folder is known to hold images.
    knowledge: a KnowledgeBase, a built-in name or a file. class_prior: None, a mapping or a YAML/JSON file.
    With shard_index set only that share of the shards is encoded (no merge); see the module docstring.
    """
    root = Path(image_dir)
    check_settings(top_k=top_k, batch_size=batch_size, workers=workers, shard_size=shard_size,
                   shard_index=shard_index, num_shards=num_shards, overwrite=overwrite, prior_weight=prior_weight)
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
        "source": str(root.resolve()), "max_pixels": max_pixels, "files": digest(stats),
    }
    out = Path(out_dir)
    if start_output(out, inputs, overwrite):
        return out
    encoded = encode_shards(files, names, stats, out / PARTS, clip, kb.sentences(), shard_size=shard_size,
                            batch_size=batch_size, workers=workers, max_pixels=max_pixels, progress=progress,
                            shard_index=shard_index, num_shards=num_shards)
    if encoded is None:
        return out  # this process's shards are done; a run without shard_index merges
    table = label_table(encoded, kb, inputs["top_k"], prior, prior_weight)
    finish_output(out, encoded.embeddings, table, inputs, encoded.failed)
    return out


def check_settings(top_k=1, batch_size=1, workers=0, shard_size=1, shard_index=None, num_shards=1, overwrite=False,
                   prior_weight=1.0):
    """Raise LabelError for settings that cannot work, before anything is read or written."""
    for name, value, least in (("top_k", top_k, 1), ("batch_size", batch_size, 1), ("workers", workers, 0),
                               ("shard_size", shard_size, 1), ("num_shards", num_shards, 1)):
        if not isinstance(value, int) or value < least:
            raise LabelError(f"{name} must be an integer >= {least}, got {value!r}")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise LabelError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    if shard_index is not None and overwrite:
        raise LabelError("overwrite with shard_index would delete the other processes' shards; "
                         "delete the output folder once before starting them instead")
    if not prior_weight > 0:
        raise LabelError(f"prior_weight must be > 0, got {prior_weight}")


def list_images(root) -> list:
    root = Path(root)
    if not root.is_dir():
        raise LabelError(f"{root}: no such folder")
    files = find_images(root)
    if not files:
        raise LabelError(f"{root}: no image files in it or its sub-folders (looked for "
                         f"{' '.join(IMAGE_EXTENSIONS)}; hidden files are skipped)")
    return files


def load_class_prior(source, knowledge):
    """None, a mapping or a YAML/JSON file of class folder -> "healthy" | "defect" | [prompt ids]
    -> {folder: [prompt ids]} (validated against the knowledge base), or None."""
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
    if not prior:
        return probabilities
    classes = np.asarray(classes, dtype=object)
    factors = torch.ones_like(probabilities)
    for folder, ids in prior.items():
        rows = torch.from_numpy(np.flatnonzero(classes == folder))
        factors[rows[:, None], torch.tensor([knowledge.index(i) for i in ids])] = weight
    scaled = probabilities * factors
    return scaled / scaled.sum(dim=1, keepdim=True)


def label_table(encoded, knowledge, top_k, prior=None, prior_weight=PRIOR_WEIGHT) -> pd.DataFrame:
    """id, path, class, caption = summarize(top-k), prompt_i / prob_i (prompt ids, probabilities)."""
    classes = [class_of(name, "") for name in encoded.names]
    probabilities = apply_class_prior(encoded.probabilities, classes, prior, knowledge, prior_weight)
    values, indices = probabilities.topk(top_k, dim=1)
    values, indices = values.tolist(), indices.tolist()
    prompts, ids = knowledge.prompts, knowledge.ids()
    table = {"id": make_ids(encoded.names), "path": encoded.names, "class": classes,
             "caption": [summarize([(prompts[j], p) for j, p in zip(row_ix, row_p)], knowledge)
                         for row_ix, row_p in zip(indices, values)]}
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


# Shared with train/importers.py: output folder state, sharded encoding, merging.

def clip_id(clip) -> str:
    """The CLIP as the manifest records it: a hub id as given, a local directory as an absolute path."""
    name = str(clip.name)
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def file_stats(files, names) -> list:
    """"name<TAB>size<TAB>mtime" per file: a changed or replaced image makes its shard stale."""
    lines = []
    for path, name in zip(files, names):
        try:
            stat = Path(path).stat()
            lines.append(f"{name}\t{stat.st_size}\t{stat.st_mtime_ns}")
        except OSError:
            lines.append(f"{name}\tmissing")
    return lines


def digest(lines) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def start_output(out, inputs, overwrite=False) -> bool:
    """True when `out` already holds this very dataset; otherwise ready it for (re)building.

    Refuses (DatasetMismatchError) to replace or resume work made with another CLIP or knowledge base
    unless `overwrite`, and refuses a folder holding dataset files without a manifest (not ours).
    """
    out = Path(out)
    manifest, started = read_manifest(out), _read_json(out / PARTS / "inputs.json")
    if overwrite:
        _clear(out)
    else:
        for previous, what in ((manifest, "the dataset in"), (started, "the unfinished run in")):
            differ = [f"{key} {previous.get(key)!r} there, {inputs[key]!r} now"
                      for key in IDENTITY if previous is not None and previous.get(key) != inputs[key]]
            if differ:
                raise DatasetMismatchError(f"{what} {out} was made with another CLIP or knowledge base "
                                           f"({'; '.join(differ)}); use --overwrite to replace it")
        if manifest is not None and all(manifest.get(key) == value for key, value in inputs.items()):
            shutil.rmtree(out / PARTS, ignore_errors=True)  # left over when a run died right after finishing
            return True
        ours = [name for name in (EMBEDDINGS, CAPTIONS, FAILED) if (out / name).exists()]
        if ours and manifest is None and started is None:
            raise DatasetError(f"{out} holds {', '.join(ours)} but no {MANIFEST}: not a dataset this tool "
                               "wrote; use --overwrite to replace it")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    identity = json.dumps({key: inputs[key] for key in IDENTITY})
    atomic_write(out / PARTS / "inputs.json", lambda p: p.write_text(identity))
    return False


def finish_output(out, embeddings, table, inputs, failed):
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save_dataset(out, embeddings, table, {**inputs, "created": created}, failed)
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)


def _clear(out):
    for name in (MANIFEST, EMBEDDINGS, CAPTIONS, FAILED):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def encode_shards(files, names, stats, parts_dir, clip, sentences, *, shard_size=SHARD_SIZE, batch_size=64,
                  workers=2, max_pixels=DEFAULT_MAX_PIXELS, progress=True, shard_index=None, num_shards=1):
    """Encode the files whose shard part is missing or stale, then merge all parts -> Encoded.

    Returns None when run for one share of the shards (shard_index), which leaves the merge to a full run.
    """
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    # A shard's key covers everything its numbers depend on, so a stale part is never reused.
    setting = json.dumps([clip.name, clip.embed_dim, list(sentences), max_pixels])
    shards = [range(start, min(start + shard_size, len(files))) for start in range(0, len(files), shard_size)]
    keys = [digest([setting, *stats[shard.start:shard.stop]]) for shard in shards]
    mine = [s for s in range(len(shards)) if shard_index is None or s % num_shards == shard_index]
    todo = [s for s in mine if _part_key(parts_dir, s) != keys[s]]
    if todo:
        _encode(files, shards, todo, keys, parts_dir, clip, sentences, batch_size, workers, max_pixels, progress)
    if shard_index is not None:
        return None
    return _merge(parts_dir, shards, names)


def _encode(files, shards, todo, keys, parts_dir, clip, sentences, batch_size, workers, max_pixels, progress):
    # Batches never straddle shards, so a resumed shard is encoded exactly as in an uninterrupted run.
    batches = [list(shards[s][i:i + batch_size]) for s in todo for i in range(0, len(shards[s]), batch_size)]
    shard_of_batch = [s for s in todo for _ in range(0, len(shards[s]), batch_size)]
    loader = DataLoader(ImageFiles(files, clip, max_pixels=max_pixels), batch_sampler=batches,
                        num_workers=workers, collate_fn=collate_images,
                        worker_init_fn=one_thread_worker if workers else None,
                        pin_memory=clip.device.type == "cuda")
    results, left = {}, {s: len(shards[s]) for s in todo}
    with tqdm(total=sum(left.values()), unit="img", desc="encoding", disable=not progress) as bar:
        for s, (indices, pixels, failed) in zip(shard_of_batch, loader):
            results.setdefault(s, []).append((indices, _encode_batch(clip, pixels, sentences), failed))
            left[s] -= len(indices) + len(failed)
            bar.update(len(indices) + len(failed))
            if left[s] == 0:
                _write_part(parts_dir, s, keys[s], shards[s], results.pop(s), clip.embed_dim, len(sentences))


@torch.no_grad()
def _encode_batch(clip, pixels, sentences):
    if pixels is None:
        return None
    features = clip.encode_images(pixels.to(clip.device, non_blocking=True), batch_size=len(pixels))
    probabilities = clip.logits(features, sentences).softmax(dim=-1) if sentences else features[:, :0]
    return features.float().cpu(), probabilities.float().cpu()


def _part_path(parts_dir, s):
    return Path(parts_dir) / f"shard-{s:06d}.safetensors"


def _part_key(parts_dir, s):
    try:
        with safe_open(str(_part_path(parts_dir, s)), "pt") as part:
            return json.loads(part.metadata()["part"])["key"]
    except Exception:  # noqa: BLE001 -- missing, half-written or foreign: encode the shard again
        return None


def _write_part(parts_dir, s, key, shard, results, dim, n_sentences):
    ok = [i - shard.start for indices, _, _ in results for i in indices]
    failed = [[i - shard.start, reason] for _, _, batch_failed in results for i, reason in batch_failed]
    encoded = [tensors for _, tensors, _ in results if tensors is not None]
    tensors = {"embeddings": torch.cat([e for e, _ in encoded]) if encoded else torch.zeros(0, dim),
               "probabilities": torch.cat([p for _, p in encoded]) if encoded else torch.zeros(0, n_sentences)}
    meta = {"part": json.dumps({"key": key, "ok": ok, "failed": failed})}
    atomic_write(_part_path(parts_dir, s), lambda p: save_file(tensors, str(p), metadata=meta))


def _merge(parts_dir, shards, names) -> Encoded:
    kept, embeddings, probabilities, failed = [], [], [], []
    for s, shard in enumerate(shards):
        with safe_open(str(_part_path(parts_dir, s)), "pt") as part:
            meta = json.loads(part.metadata()["part"])
            embeddings.append(part.get_tensor("embeddings"))
            probabilities.append(part.get_tensor("probabilities"))
        kept += [names[shard.start + offset] for offset in meta["ok"]]
        failed += [(names[shard.start + offset], reason) for offset, reason in meta["failed"]]
    return Encoded(kept, torch.cat(embeddings), torch.cat(probabilities), failed)


def add_run_arguments(parser):
    """Flags shared with train/importers.py."""
    parser.add_argument("--out", required=True, help="dataset folder to write (created if missing)")
    parser.add_argument("--clip", default=DEFAULT_CLIP,
                        help="CLIP hub id or local directory (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per CLIP forward (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader processes decoding images, 0 = in the main process; on a GPU use about "
                             "as many as CPU cores, on a CPU 1-2 are plenty (default: %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="larger images are listed as failed (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                        help="images per resumable shard (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset (or unfinished run) made with another CLIP or knowledge base")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def report(out) -> str:
    out = Path(out)
    manifest = read_manifest(out)
    if (out / PARTS).exists() or manifest is None:
        return (f"{out}: shards of this share done; when every --shard-index has finished, run once more "
                "without --shard-index to merge")
    return (f"{out}: {manifest['count']} rows, {manifest['failed']} images failed"
            + (f" (reasons in {out / FAILED})" if manifest["failed"] else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="image folder (class sub-folders or flat)")
    parser.add_argument("--knowledge", default="fruit",
                        help="knowledge base: built-in name or YAML/JSON file (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="prompts kept per image (default: %(default)s)")
    parser.add_argument("--class-prior", help="YAML/JSON: class folder -> healthy | defect | [prompt ids]")
    parser.add_argument("--prior-weight", type=float, default=PRIOR_WEIGHT,
                        help="factor for the prompts a folder is mapped to (default: %(default)s)")
    parser.add_argument("--num-shards", type=int, default=1, help="split the shards among this many processes")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="encode only shards s with s %% num-shards == this (no merge)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        out = label_folder(args.images, args.out, args.clip, args.knowledge, top_k=args.top_k,
                           batch_size=args.batch_size, workers=args.workers, class_prior=args.class_prior,
                           progress=not args.quiet, prior_weight=args.prior_weight, max_pixels=args.max_pixels,
                           shard_size=args.shard_size, shard_index=args.shard_index, num_shards=args.num_shards,
                           overwrite=args.overwrite, device=args.device)
    except (LabelError, DatasetError, KnowledgeError, OSError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(report(out))


if __name__ == "__main__":
    main()
