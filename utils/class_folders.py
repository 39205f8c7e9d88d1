"""Class folders: the images of a folder with one sub-folder per class, and the knowledge-base prompts each
class stands for (what train/finetune_clip.py trains CLIP toward).

    cells/defective/mono/a.png   class "defective"; deeper folders ("mono") only stratify the splits
    cells/functional/b.png       class "functional"

A class map (YAML/JSON) says what each class folder means, as a distribution over the prompts:
    functional: healthy                             # spread evenly over the healthy prompts
    defective: defect                               # ... over the defect prompts
    cracked: [microcrack, crack]                    # ... over these prompt ids
    possibly_defective: {intact: 2, possible_defect: 1}   # by weight: a third defect
Without one, class folders must be named after prompt ids (or "healthy" / "defect").
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from utils.images import IMAGE_EXTENSIONS, find_images


class ClassFolderError(ValueError):
    """A folder or class map that cannot be trained on; the message names the file and the problem."""


@dataclass
class ClassFolders:
    root: Path
    files: list   # image paths, sorted
    classes: list  # the class (first sub-folder) of every file
    strata: list   # the whole sub-folder path of every file ("defective/mono"): what splits stratify on

    @property
    def names(self) -> list:
        """The class folders, sorted."""
        return sorted(set(self.classes))


def scan_class_folders(root) -> ClassFolders:
    """Every readable image under `root`'s class sub-folders; a folder that cannot be trained on raises
    ClassFolderError naming it (missing, images outside class folders, an empty class, a single class)."""
    root = Path(root)
    if not root.is_dir():
        raise ClassFolderError(f"{root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p.name for p in find_images(root) if p.parent == root]
    if loose:
        raise ClassFolderError(f"{root}: {len(loose)} images lie outside any class folder (e.g. {loose[0]}); "
                               "put every image in a sub-folder named after its class")
    empty = [folder for folder in folders if not find_images(folder)]
    if empty:
        raise ClassFolderError(f"{empty[0]}: empty class folder (no {' '.join(IMAGE_EXTENSIONS)} files in it or "
                               "its sub-folders); remove it or add its images")
    if len(folders) < 2:
        raise ClassFolderError(f"{root}: {len(folders)} class folder(s) found ({', '.join(f.name for f in folders)}"
                               "); contrastive training needs at least two classes")
    files = find_images(root)
    relative = [path.relative_to(root) for path in files]
    return ClassFolders(root, files, [r.parts[0] for r in relative], [r.parent.as_posix() for r in relative])


def class_targets(source, knowledge, classes, root="") -> np.ndarray:
    """[C, P] distribution over the knowledge base's prompts for each class in `classes` (in that order).

    source: a class-map file or mapping, or None for class folders named after prompt ids."""
    where = str(source) if isinstance(source, (str, Path)) else "class map"
    mapping = _read_map(source) if source is not None else {name: name for name in classes}
    if not isinstance(mapping, dict) or not mapping:
        raise ClassFolderError(f"{where}: expected a mapping of class folder -> healthy | defect | [prompt ids] | "
                               "{prompt id: weight}")
    missing = [name for name in classes if name not in mapping]
    if missing:
        raise ClassFolderError(f"{where}: no entry for the class folder(s) {', '.join(missing)} of {root}")
    unused = sorted(set(map(str, mapping)) - set(classes))
    if unused:
        warnings.warn(f"{where}: entries for folders that hold no images: {', '.join(unused)}", stacklevel=2)
    targets = np.stack([_class_row(mapping[name], name, knowledge, where if source is not None else root)
                        for name in classes])
    return targets / targets.sum(axis=1, keepdims=True)


def defect_share(targets, knowledge) -> np.ndarray:
    """[C] the share of each class's target on defect prompts: 0 healthy, 1 defect, 1/3 "possibly"."""
    return np.asarray(targets)[:, ~np.asarray(knowledge.healthy_mask())].sum(axis=1)


def _read_map(source):
    if isinstance(source, dict):
        return {str(k): v for k, v in source.items()}
    try:
        mapping = yaml.safe_load(Path(source).read_text(encoding="utf-8"))  # JSON is YAML too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ClassFolderError(f"{source}: cannot read the class map ({error})") from error
    return {str(k): v for k, v in mapping.items()} if isinstance(mapping, dict) else mapping


def _class_row(value, name, knowledge, where) -> np.ndarray:
    ids = knowledge.ids()
    if value in ("healthy", "defect"):
        value = [p.id for p in knowledge.prompts if p.healthy == (value == "healthy")]
    elif isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        value = {prompt: 1.0 for prompt in value}
    if not isinstance(value, dict) or not value:
        raise ClassFolderError(f"{where}: {name}: expected healthy, defect, a list of prompt ids or "
                               f"{{prompt id: weight}}, got {value!r}")
    unknown = [str(prompt) for prompt in value if prompt not in ids]
    if unknown:
        raise ClassFolderError(f"{where}: {name}: no prompt {', '.join(map(repr, unknown))} in knowledge base "
                               f"{knowledge.name!r} (its ids: {', '.join(ids)}; or name the class healthy/defect)")
    row = np.zeros(len(ids))
    for prompt, weight in value.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise ClassFolderError(f"{where}: {name}: weight of {prompt!r} must be a number >= 0, got {weight!r}")
        row[ids.index(prompt)] = float(weight)
    if row.sum() <= 0:
        raise ClassFolderError(f"{where}: {name}: the weights add up to 0")
    return row
