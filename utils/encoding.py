"""Encoding image folders with CLIP into a dataset directory, resumably: what train/label.py and
train/importers.py share (output folder state, sharded encoding, merging, run flags, the report).

Images are encoded in shards; each finished shard is saved in OUT/.parts, keyed by everything its numbers
depend on, so an interrupted run redoes only the missing shards and equals an uninterrupted one. torch is
imported inside the functions that encode, so the scripts' --help stays instant.
"""
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from models.config import DEFAULT_CLIP
from utils.files import atomic_write, local_or_id, read_json, write_json
from utils.images import DEFAULT_MAX_PIXELS

SHARD_SIZE = 512
PARTS = ".parts"
IDENTITY = ("clip", "embed_dim", "knowledge_hash")  # what a re-run may not change without --overwrite
FORMAT = 1


def default_workers() -> int:
    """DataLoader processes that help rather than crowd the encoder: at most one per core beside its own, and 2 are
    plenty on a CPU (bench/bench_label.py, 2 cores, 640x480 JPEGs: 0 or 1 worker 14.5 photos/s, 2 workers 11.8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(2, cores - 1))


DEFAULT_WORKERS = default_workers()


class LabelError(ValueError):
    """Nothing to label, or settings that cannot work; raised before anything is written."""


@dataclass
class Encoded:
    names: list[str]              # the images that decoded (paths relative to the source), in file order
    embeddings: object            # torch.Tensor [n, D]
    probabilities: object         # torch.Tensor [n, P], CLIP softmax over the sentences ([n, 0] without any)
    failed: list[tuple[str, str]]  # (name, reason)


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


def clip_id(clip) -> str:
    """The CLIP as the manifest records it: a hub id as given, a local directory as an absolute path."""
    return local_or_id(str(clip.name))


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


def start_output(out, inputs, overwrite=False, defaults=None) -> bool:
    """True when `out` already holds this very dataset; otherwise ready it for (re)building. `defaults`: values
    of inputs that datasets written before them did not record (they were made with these).

    Refuses (DatasetMismatchError) to replace or resume work made with another CLIP or knowledge base
    unless `overwrite`, and refuses a folder holding dataset files without a manifest (not ours).
    """
    out = Path(out)
    from utils.data import CAPTIONS, EMBEDDINGS, FAILED, MANIFEST, DatasetError, DatasetMismatchError, read_manifest

    manifest, started = read_manifest(out), read_json(out / PARTS / "inputs.json")
    manifest = None if manifest is None else {**(defaults or {}), **manifest}
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
    write_json(out / PARTS / "inputs.json", {key: inputs[key] for key in IDENTITY})
    return False


def finish_output(out, embeddings, table, inputs, failed):
    from utils.data import save_dataset

    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    save_dataset(out, embeddings, table, {**inputs, "created": created}, failed)
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)


def _clear(out):
    from utils.data import CAPTIONS, EMBEDDINGS, FAILED, MANIFEST

    for name in (MANIFEST, EMBEDDINGS, CAPTIONS, FAILED):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)


def encode_shards(files, names, stats, parts_dir, clip, sentences, *, shard_size=SHARD_SIZE, batch_size=64,
                  workers=DEFAULT_WORKERS, max_pixels=DEFAULT_MAX_PIXELS, progress=True, shard_index=None, num_shards=1,
                  draft=True, tiles=None):
    """Encode the files whose shard part is missing or stale, then merge all parts -> Encoded.

    Each image is CLIP's center square of it; with `tiles` (models/views.py PhotoTiles) it is every square tile of
    it, encoded and reduced to one row by tiles.reduce(embeddings, probabilities) (the probabilities are over
    `sentences`). Returns None when run for one share of the shards (shard_index), which leaves the merge to a
    full run.
    """
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    # A shard's key covers everything its numbers depend on, so a stale part is never reused.
    setting = json.dumps([clip.name, clip.embed_dim, list(sentences), max_pixels, tiles and tiles.key])
    shards = [range(start, min(start + shard_size, len(files))) for start in range(0, len(files), shard_size)]
    keys = [digest([setting, *stats[shard.start:shard.stop]]) for shard in shards]
    mine = [s for s in range(len(shards)) if shard_index is None or s % num_shards == shard_index]
    todo = [s for s in mine if _part_key(parts_dir, s) != keys[s]]
    if todo:
        _encode(files, shards, todo, keys, parts_dir, clip, sentences, batch_size, workers, max_pixels, progress,
                draft, tiles)
    if shard_index is not None:
        return None
    return _merge(parts_dir, shards, names)


def _encode(files, shards, todo, keys, parts_dir, clip, sentences, batch_size, workers, max_pixels, progress, draft,
            tiles):
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from utils.data import ImageFiles, collate_tiles, one_thread_worker

    # Batches never straddle shards, so a resumed shard is encoded exactly as in an uninterrupted run.
    batches = [list(shards[s][i:i + batch_size]) for s in todo for i in range(0, len(shards[s]), batch_size)]
    shard_of_batch = [s for s in todo for _ in range(0, len(shards[s]), batch_size)]
    loader = DataLoader(ImageFiles(files, clip, max_pixels=max_pixels, draft=draft, tiles=tiles), batch_sampler=batches,
                        num_workers=workers, collate_fn=collate_tiles if tiles else _one_tile_each,
                        worker_init_fn=one_thread_worker if workers else None,
                        pin_memory=clip.device.type == "cuda")
    results, left = {}, {s: len(shards[s]) for s in todo}
    with tqdm(total=sum(left.values()), unit="img", desc="encoding", disable=not progress) as bar:
        for s, (indices, pixels, counts, failed) in zip(shard_of_batch, loader):
            results.setdefault(s, []).append((indices, _encode_batch(clip, pixels, sentences, counts, tiles), failed))
            left[s] -= len(indices) + len(failed)
            bar.update(len(indices) + len(failed))
            if left[s] == 0:
                _write_part(parts_dir, s, keys[s], shards[s], results.pop(s), clip.embed_dim, len(sentences))


def _one_tile_each(batch):
    from utils.data import collate_images

    indices, pixels, failed = collate_images(batch)
    return indices, pixels, [1] * len(indices), failed


def _encode_batch(clip, pixels, sentences, counts, tiles):
    import torch

    if pixels is None:
        return None
    features = clip.encode_images(pixels.to(clip.device, non_blocking=True), batch_size=len(pixels))
    with torch.no_grad():
        probabilities = clip.logits(features, sentences).softmax(dim=-1) if sentences else features[:, :0]
    features, probabilities = features.float().cpu(), probabilities.float().cpu()
    return (features, probabilities) if tiles is None else tiles.reduce_photos(features, probabilities, counts)


def _part_path(parts_dir, s):
    return Path(parts_dir) / f"shard-{s:06d}.safetensors"


def _part_key(parts_dir, s):
    from safetensors import safe_open

    try:
        with safe_open(str(_part_path(parts_dir, s)), "pt") as part:
            return json.loads(part.metadata()["part"])["key"]
    except Exception:  # noqa: BLE001 -- missing, half-written or foreign: encode the shard again
        return None


def _write_part(parts_dir, s, key, shard, results, dim, n_sentences):
    import torch
    from safetensors.torch import save_file

    ok = [i - shard.start for indices, _, _ in results for i in indices]
    failed = [[i - shard.start, reason] for _, _, batch_failed in results for i, reason in batch_failed]
    encoded = [tensors for _, tensors, _ in results if tensors is not None]
    tensors = {"embeddings": torch.cat([e for e, _ in encoded]) if encoded else torch.zeros(0, dim),
               "probabilities": torch.cat([p for _, p in encoded]) if encoded else torch.zeros(0, n_sentences)}
    meta = {"part": json.dumps({"key": key, "ok": ok, "failed": failed})}
    atomic_write(_part_path(parts_dir, s), lambda p: save_file(tensors, str(p), metadata=meta))


def _merge(parts_dir, shards, names) -> Encoded:
    import torch
    from safetensors import safe_open

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
    """The flags train/label.py and train/importers.py share."""
    parser.add_argument("--out", required=True, help="dataset folder to write (created if missing)")
    parser.add_argument("--clip", default=DEFAULT_CLIP,
                        help="CLIP hub id or local directory; offline, a directory such as checkpoints/demo/clip "
                             "(default: %(default)s, needs the network once)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per CLIP forward (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="DataLoader processes decoding images, 0 = in the main process; on a GPU use about "
                             "as many as CPU cores (default: %(default)s, i.e. up to 2 and fewer than the cores)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="larger images are listed as failed (default: %(default)s)")
    parser.add_argument("--shard-size", type=int, default=SHARD_SIZE,
                        help="images per resumable shard (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset (or unfinished run) made with another CLIP or knowledge base")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def report(out) -> str:
    from utils.data import FAILED, read_manifest

    out = Path(out)
    manifest = read_manifest(out)
    if (out / PARTS).exists() or manifest is None:
        return (f"{out}: shards of this share done; when every --shard-index has finished, run once more "
                "without --shard-index to merge")
    failed = manifest["failed"]
    return (f"{out}: {manifest['count']} rows, {failed} image{'' if failed == 1 else 's'} failed"
            + (f" (reasons in {out / FAILED})" if failed else ""))
