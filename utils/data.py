"""Labeled datasets on disk, image files for DataLoader workers, and class-stratified splits.

A dataset is a directory (written by train/label.py and train/importers.py, read by training/evaluation):
    embeddings.safetensors   tensor "embeddings" [N, D] float32; row i belongs to CSV row i
    caption_mapping.csv      id, path, class, caption, then prompt_1, prob_1, ..., prompt_k, prob_k
                             (path relative to manifest["source"]; prompt columns hold prompt ids);
                             with a knowledge base that lists kinds, kind and kind_prob after caption
    failed_images.txt        "path<TAB>reason" per image that could not be used
    manifest.json            clip, embed_dim, knowledge, knowledge_hash, top_k, count, failed, source, created
                             (knowledge / knowledge_hash are null for imported captions)
manifest.json is written last and removed first, so a directory with one is always complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from utils.files import atomic_write, load_safetensors, read_json, write_json
from utils.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

EMBEDDINGS = "embeddings.safetensors"
CAPTIONS = "caption_mapping.csv"
FAILED = "failed_images.txt"
MANIFEST = "manifest.json"
BASE_COLUMNS = ["id", "path", "class", "caption"]


class DatasetError(ValueError):
    """A dataset directory that is missing, incomplete or inconsistent."""


class DatasetMismatchError(DatasetError):
    """A dataset built with another CLIP or knowledge base than the one it is used with."""


@dataclass
class LabeledDataset:
    embeddings: torch.Tensor  # [N, D] float32
    table: pd.DataFrame       # N rows: id, path, class, caption, prompt_i, prob_i
    manifest: dict
    directory: Path | None = None

    def __len__(self):
        return len(self.table)

    @property
    def captions(self) -> list[str]:
        return self.table["caption"].tolist()

    @property
    def classes(self) -> list[str]:
        return self.table["class"].tolist()

    @property
    def top_k(self) -> int:
        return sum(1 for column in self.table.columns if column.startswith("prompt_"))


def save_dataset(directory, embeddings, table: pd.DataFrame, manifest: dict, failed=()) -> Path:
    """Write the four files atomically; count / failed / embed_dim in the manifest are set from the data."""
    directory = Path(directory)
    embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
    if list(table.columns[:4]) != BASE_COLUMNS:
        raise DatasetError(f"table columns must start with {BASE_COLUMNS}, got {list(table.columns[:4])}")
    if embeddings.ndim != 2 or len(embeddings) != len(table):
        raise DatasetError(f"{len(table)} table rows but embeddings of shape {tuple(embeddings.shape)}")
    failed = list(failed)
    manifest = {**manifest, "count": len(table), "failed": len(failed), "embed_dim": int(embeddings.shape[1])}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # incomplete until the new manifest lands
    atomic_write(directory / EMBEDDINGS, lambda p: save_file({"embeddings": embeddings}, str(p)))
    atomic_write(directory / CAPTIONS, lambda p: table.to_csv(p, index=False, lineterminator="\n"))
    lines = "".join(f"{_one_line(path)}\t{_one_line(reason)}\n" for path, reason in failed)
    atomic_write(directory / FAILED, lambda p: p.write_text(lines, encoding="utf-8"))
    write_json(directory / MANIFEST, manifest)
    return directory


def _one_line(text) -> str:
    return " ".join(str(text).replace("\t", " ").splitlines())


def read_manifest(directory) -> dict | None:
    return read_json(Path(directory) / MANIFEST)


def read_failed(directory) -> list[tuple[str, str]]:
    text = (Path(directory) / FAILED).read_text(encoding="utf-8")
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line]


def load_dataset(directory) -> LabeledDataset:
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DatasetError(f"{directory}: not a finished dataset (no readable {MANIFEST}); "
                           "make one with train/label.py or train/importers.py")
    try:
        embeddings = load_safetensors(directory / EMBEDDINGS, "embeddings")["embeddings"]
        table = pd.read_csv(directory / CAPTIONS, dtype=str, keep_default_na=False)
    except (OSError, KeyError, ValueError) as error:
        raise DatasetError(f"{directory}: cannot read the dataset ({error})") from error
    for column in table.columns:
        if column.startswith("prob_") or column == "kind_prob":
            table[column] = pd.to_numeric(table[column].replace("", np.nan))
    if list(table.columns[:4]) != BASE_COLUMNS:
        raise DatasetError(f"{directory / CAPTIONS}: columns must start with {BASE_COLUMNS}")
    if len(embeddings) != len(table) or manifest.get("count", len(table)) != len(table):
        raise DatasetError(f"{directory}: {len(embeddings)} embeddings, {len(table)} CSV rows and "
                           f"manifest count {manifest.get('count')} disagree")
    return LabeledDataset(embeddings.float(), table, manifest, directory)


def check_compatible(manifest: dict, *, clip=None, knowledge_hash=None, embed_dim=None, what="dataset"):
    """Raise DatasetMismatchError when the manifest's CLIP / knowledge hash / embed_dim differ from the given.

    None (given or recorded) means "don't care": imported captions record no knowledge base.
    """
    wanted = {"clip": clip, "knowledge_hash": knowledge_hash, "embed_dim": embed_dim}
    differ = [f"{key} {manifest.get(key)!r} (wanted {value!r})" for key, value in wanted.items()
              if value is not None and manifest.get(key) is not None and manifest.get(key) != value]
    if differ:
        raise DatasetMismatchError(f"{what} was built with {', '.join(differ)}")


def class_of(path, root) -> str:
    """The first sub-folder under `root` ("rotten" for root/rotten/a/x.jpg), or "" for a file in root itself."""
    path = Path(path)
    try:
        path = path.relative_to(root)
    except ValueError:
        pass  # already relative to root
    return path.parts[0] if len(path.parts) > 1 else ""


def stratified_split(classes, val_fraction=0.1, seed=0, groups=None) -> tuple[list[int], list[int]]:
    """Row indices (train, val): about `val_fraction` of every class in val, deterministic for a seed.

    Every class with >= 2 items (and val_fraction > 0) gets at least one val item and keeps one for train.
    `groups` (e.g. the image path of imported captions) keeps all rows of a group on the same side.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    classes = [str(c) for c in classes]
    groups = list(range(len(classes))) if groups is None else list(groups)
    if len(groups) != len(classes):
        raise ValueError(f"{len(groups)} groups for {len(classes)} rows")
    rows_of, class_of_group = {}, {}
    for row, (cls, group) in enumerate(zip(classes, groups)):
        rows_of.setdefault(group, []).append(row)
        class_of_group.setdefault(group, cls)  # a group's first row decides its class
    members = {}
    for group, cls in class_of_group.items():
        members.setdefault(cls, []).append(group)
    rng = np.random.default_rng(seed)
    val_groups = []
    for cls in sorted(members):
        items = members[cls]
        n_val = round(len(items) * val_fraction)
        if val_fraction > 0 and len(items) >= 2:
            n_val = min(max(n_val, 1), len(items) - 1)
        val_groups += [items[i] for i in rng.permutation(len(items))[:n_val]]
    val = sorted(row for group in val_groups for row in rows_of[group])
    chosen = set(val)
    return [row for row in range(len(classes)) if row not in chosen], val


def read_image(path, max_pixels=DEFAULT_MAX_PIXELS, draft_size=0):
    """load_image for a file, with JPEG draft decoding: since the result is resized down to CLIP's input
    anyway, the pixels CLIP sees move by about one grey level on average (measured on 640x480 photos at
    224 px: embedding cosine to the full decode > 0.9999)."""
    return load_image(path, max_pixels=max_pixels, draft_size=draft_size)


class ImageFiles(Dataset):
    """Image paths -> (index, pixels [3, S, S] or None, error) through a CLIPW's processor.

    Made for DataLoader workers: decoding and preprocessing run there, and a bad file comes back as an
    error string (corrupt, not an image, too large, missing) instead of stopping the run. With `tiles` (an
    object whose crops(picture) lists square crops, e.g. models/views.py PhotoTiles) the pixels are every
    crop's, [t, 3, S, S] (collate_tiles).
    """

    def __init__(self, paths, processor, max_pixels=DEFAULT_MAX_PIXELS, draft=True, tiles=None):
        self.paths = [str(p) for p in paths]
        self.processor = getattr(processor, "processor", processor)  # a CLIPW or its image processor
        self.max_pixels = max_pixels
        self.draft_size = _input_side(self.processor) if draft else 0
        self.tiles = tiles

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            image = read_image(path, self.max_pixels, self.draft_size)
            crops = [image] if self.tiles is None else self.tiles.crops(image)
            pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"]
            pixels = pixels[0] if self.tiles is None else pixels
        except ImageLoadError as error:  # the failed list names the file already
            return index, None, str(error).removeprefix(f"{path}: ").replace(f" '{path}'", "")
        except Exception as error:  # noqa: BLE001 -- one odd file must not end a long labeling run
            return index, None, f"cannot preprocess ({type(error).__name__}: {error})"
        return index, pixels, ""


def _input_side(processor) -> int:
    """The largest side the processor resizes or crops to: a draft decode must not go below it."""
    sides = []
    for sizes in (getattr(processor, "size", None), getattr(processor, "crop_size", None)):
        for key in ("shortest_edge", "longest_edge", "height", "width"):
            value = sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)
            sides += [value] if isinstance(value, int) else []
    return max(sides, default=0)


def collate_images(batch):
    """[(index, pixels | None, error)] -> (indices decoded, pixels [b, 3, S, S] or None, [(index, error)])."""
    good = [(index, pixels) for index, pixels, _ in batch if pixels is not None]
    failed = [(index, error) for index, pixels, error in batch if pixels is None]
    pixels = torch.stack([p for _, p in good]) if good else None
    return [index for index, _ in good], pixels, failed


def collate_tiles(batch):
    """[(index, tiles [t, 3, S, S] | None, error)] -> (indices decoded, all their tiles [T, 3, S, S] or None, tiles
    per index decoded, [(index, error)])."""
    good = [(index, tiles) for index, tiles, _ in batch if tiles is not None]
    failed = [(index, error) for index, tiles, error in batch if tiles is None]
    pixels = torch.cat([tiles for _, tiles in good]) if good else None
    return [index for index, _ in good], pixels, [len(tiles) for _, tiles in good], failed


def one_thread_worker(_worker_id):
    """DataLoader worker_init_fn: decoders need one core each; the encoder keeps the rest."""
    torch.set_num_threads(1)
