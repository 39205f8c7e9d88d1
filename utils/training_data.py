"""Captioner training data: labeled dataset dirs joined into one set, checked, and split (train and evaluate)."""
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.data import DatasetMismatchError, check_compatible, load_dataset, stratified_split


@dataclass
class TrainingData:
    embeddings: torch.Tensor  # [N, D] float32, L2-normalized
    captions: list
    classes: list  # "" where an image sat in no class folder
    paths: list  # image paths: rows of one image (imported datasets have several captions) stay together
    manifest: dict  # the first dataset's; all agree on CLIP, embed dim and knowledge base
    fingerprint: list  # [dir, rows] per dataset: resume refuses other data


def load_training_data(dataset_dirs):
    """Concatenate dataset dirs after checking that their manifests agree (one CLIP, one knowledge base)."""
    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    if not dataset_dirs:
        raise ValueError("give at least one dataset dir")
    parts = [load_dataset(d) for d in dataset_dirs]
    for directory, part in zip(dataset_dirs, parts):
        check_manifest(part.manifest, parts[0].manifest, directory, dataset_dirs[0])
    embeddings, captions, classes, paths = [], [], [], []
    for number, (directory, part) in enumerate(zip(dataset_dirs, parts)):
        table = part.table
        keep = (table["caption"].str.strip() != "").to_numpy()
        if not keep.all():
            warnings.warn(f"{directory}: {int((~keep).sum())} rows without a caption are left out", stacklevel=2)
        rows = np.flatnonzero(keep)
        embeddings.append(part.embeddings[rows])
        captions += table["caption"].str.strip().iloc[rows].tolist()
        classes += table["class"].iloc[rows].tolist()
        paths += [f"{number}:{path}" for path in table["path"].iloc[rows]]  # two datasets may share a path
    fingerprint = [[str(Path(d).resolve()), len(p.table)] for d, p in zip(dataset_dirs, parts)]
    return TrainingData(torch.cat(embeddings), captions, classes, paths, parts[0].manifest, fingerprint)


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
    """The same hub id, or two spellings of one local directory."""
    if a == b:
        return True
    if a and b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


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
