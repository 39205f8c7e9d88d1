"""Captioner training data: labeled dataset dirs joined into one set, checked, and split (train and evaluate).

Datasets marked human-labeled (manifest "labeled_by": "human", e.g. operator corrections from
train/corrections.py) win over the others: an auto-labeled row of the same image is left out. "The same
image" is the same CLIP embedding (cosine >= SAME_IMAGE): the same bytes through the same CLIP give the same
embedding up to float noise, while two different photos stay far below that.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.data import DatasetMismatchError, check_compatible, load_dataset, stratified_split

SAME_IMAGE = 0.9999  # cosine similarity from which two rows hold the same image (JPEG draft decode: > 0.9999)


@dataclass
class TrainingData:
    embeddings: torch.Tensor  # [N, D] float32, L2-normalized
    captions: list
    classes: list  # "" where an image sat in no class folder
    paths: list  # image paths: rows of one image (imported datasets have several captions) stay together
    manifest: dict  # the first dataset's; all agree on CLIP, embed dim and knowledge base
    fingerprint: list  # [dir, rows] per dataset: resume refuses other data


def load_training_data(dataset_dirs, human_repeat=1):
    """Concatenate dataset dirs after checking that their manifests agree (one CLIP, one knowledge base);
    human-labeled rows replace auto-labeled rows of the same image and count `human_repeat` times."""
    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    if not dataset_dirs:
        raise ValueError("give at least one dataset dir")
    parts = [load_dataset(d) for d in dataset_dirs]
    for directory, part in zip(dataset_dirs, parts):
        check_manifest(part.manifest, parts[0].manifest, directory, dataset_dirs[0])
    human = torch.cat([p.embeddings for p in parts if is_human(p.manifest)] or [torch.zeros(0, 1)])
    embeddings, captions, classes, paths = [], [], [], []
    for number, (directory, part) in enumerate(zip(dataset_dirs, parts)):
        table = part.table
        keep = (table["caption"].str.strip() != "").to_numpy()
        if not keep.all():
            warnings.warn(f"{directory}: {int((~keep).sum())} rows without a caption are left out", stacklevel=2)
        if not is_human(part.manifest) and len(human):
            keep = keep & ~same_image_as(part.embeddings, human)
        rows = np.flatnonzero(keep)
        rows = np.repeat(rows, human_repeat) if is_human(part.manifest) else rows
        embeddings.append(part.embeddings[rows])
        captions += table["caption"].str.strip().iloc[rows].tolist()
        classes += table["class"].iloc[rows].tolist()
        paths += [f"{number}:{path}" for path in table["path"].iloc[rows]]  # two datasets may share a path
    fingerprint = [[str(Path(d).resolve()), len(p.table)] for d, p in zip(dataset_dirs, parts)]
    return TrainingData(torch.cat(embeddings), captions, classes, paths, parts[0].manifest, fingerprint)


def is_human(manifest):
    return manifest.get("labeled_by") == "human"


def same_image_as(embeddings, others):
    """[N] bool: the row's embedding is (almost exactly) one of `others` (in chunks: memory stays small)."""
    others = torch.nn.functional.normalize(others, dim=-1)
    best = [(torch.nn.functional.normalize(chunk, dim=-1) @ others.T).max(dim=1).values
            for chunk in embeddings.split(4096)]
    return (torch.cat(best) >= SAME_IMAGE).numpy()


def check_manifest(manifest, reference, directory, reference_dir):
    """Embeddings from different CLIPs, or captions from different knowledge bases, cannot be mixed."""
    clip = None if same_model(manifest.get("clip"), reference.get("clip")) else reference.get("clip")
    try:
        check_compatible(manifest, clip=clip, knowledge_hash=reference.get("knowledge_hash"),
                         embed_dim=reference.get("embed_dim"), what=str(directory))
    except DatasetMismatchError as error:
        raise DatasetMismatchError(f"{error}, as {reference_dir} was: datasets labeled with different CLIPs "
                                   "or knowledge bases cannot be trained together (re-label one)") from None


def same_model(a, b):
    """The same hub id, two spellings of one local directory, or two local directories holding the same weights
    (a copied or renamed CLIP)."""
    if a == b:
        return True
    if a and b and Path(a).is_dir() and Path(b).is_dir():
        return Path(a).resolve() == Path(b).resolve() or _weights_digest(a) == _weights_digest(b) != ""
    return False


def _weights_digest(directory):
    """sha256 over a model directory's weight files (name and bytes); "" when it has none."""
    import hashlib

    digest, files = hashlib.sha256(), sorted(p for p in Path(directory).iterdir()
                                             if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest() if files else ""


def split_indices(data, val_fraction, seed):
    """Seeded train/val split, stratified on the class column (one class "" = a plain random split); all
    rows of one image land on the same side."""
    train_idx, val_idx = stratified_split(data.classes, val_fraction, seed, groups=data.paths)
    return np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)


def references_by_image(paths, captions, rows):
    """One item per image: its first row, and every caption that its rows carry (COCO has several)."""
    first, references = {}, {}
    for row in rows:
        key = paths[row]
        first.setdefault(key, int(row))
        references.setdefault(first[key], []).append(captions[row])
    return list(first.values()), references
