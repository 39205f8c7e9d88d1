"""The ELPV solar-cell data set as class folders: what `python train/importers.py elpv` writes.

ELPV (Buerhop-Lutz et al. 2018; Deitsch et al., Solar Energy 2019) holds 2,624 electroluminescence images of
solar cells (300 x 300, grayscale) from 44 modules, each with an expert defect probability (0, 1/3, 2/3
or 1) and the cell type (mono / poly). Its data are CC BY-NC-SA 4.0: the user installs the PyPI package
`elpv-dataset`, and the class folders link to the images inside it (a copy only where links cannot be made).

    OUT/train/<level>/<type>/cellNNNN.png     75%, stratified by level and type (seeded), as in the paper
    OUT/test/<level>/<type>/cellNNNN.png      25%, held out: only ever scored
    OUT/examples/<level>_<type>_cellNNNN.png  a few held-out cells of every level and type (app.py --examples)
    OUT/class_map.yaml                        level folder -> solar_cell prompts (train/finetune_clip.py)
    OUT/labels.csv                            path, probability, type, level, split
    OUT/elpv.json                             the settings; written last, it marks a finished import
"""
import csv
import importlib.util
import os
import shutil
from pathlib import Path

import yaml

from utils.data import stratified_split
from utils.files import read_json, staged_directory, write_json

PACKAGE = "elpv_dataset"
INSTALL = "pip install elpv-dataset==1.0.0.post1"
LEVELS = {0.0: "functional", 1 / 3: "possibly_defective", 2 / 3: "likely_defective", 1.0: "defective"}
# The expert probability is the defect share of each level's target, so CLIP's probability mass on the
# defect prompts estimates it: a "possibly defective" cell is 2/3 healthy, 1/3 a mild defect.
CLASS_MAP = {
    "functional": "healthy",
    "possibly_defective": {"intact": 1, "intact_grain": 1, "possible_defect": 0.5, "material_defect": 0.5},
    "likely_defective": {"intact": 0.5, "intact_grain": 0.5, "microcrack": 1, "finger_interruption": 1},
    "defective": ["crack", "dark_region"],
}
INFO_FILE = "elpv.json"
EXAMPLES = 3  # held-out cells of every level and type linked into OUT/examples


class ElpvError(ValueError):
    """The package is missing or its files are not what this importer expects."""


def package_data(source=None) -> Path:
    """The data folder (labels.csv, images/) of the installed package, or `source` when given."""
    if source is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.origin is None:
            raise ElpvError(f"the ELPV data set is not installed: {INSTALL} (data CC BY-NC-SA 4.0), or give "
                            "--source with its data folder")
        source = Path(spec.origin).parent / "data"
    source = Path(source)
    if not (source / "labels.csv").is_file():
        raise ElpvError(f"{source}: no labels.csv (expected the elpv-dataset package's data folder)")
    return source


def read_labels(source) -> list:
    """[(image path, probability, type, level)] in labels.csv order; a bad line raises naming it."""
    rows = []
    labels = Path(source) / "labels.csv"
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            name, probability, kind = fields
            probability = float(probability)
            level = next(LEVELS[p] for p in LEVELS if abs(p - probability) < 1e-6)
        except (ValueError, StopIteration):
            raise ElpvError(f"{labels}: line {number}: expected 'images/NAME.png PROBABILITY mono|poly' with a "
                            f"probability of 0, 1/3, 2/3 or 1, got {line!r}") from None
        path = Path(source) / name
        if not path.is_file():
            raise ElpvError(f"{labels}: line {number}: {path} is missing")
        rows.append((path, probability, kind, level))
    if not rows:
        raise ElpvError(f"{labels}: no images listed")
    return rows


def split_rows(rows, test_fraction=0.25, seed=0):
    """(train, test) row indices: `test_fraction` of every (level, type) stratum held out."""
    return stratified_split([f"{level}/{kind}" for _, _, kind, level in rows], test_fraction, seed=seed)


def import_elpv(out, source=None, test_fraction=0.25, seed=0) -> Path:
    """Write the class folders (see the module doc) into `out`, in one step; a finished import with the
    same settings is left as it is."""
    source = package_data(source)
    rows = read_labels(source)
    settings = {"source": str(source.resolve()), "images": len(rows), "test_fraction": test_fraction, "seed": seed,
                "examples": EXAMPLES}
    if read_json(Path(out) / INFO_FILE) == settings:
        return Path(out)
    train, test = split_rows(rows, test_fraction, seed)
    split_of = {**dict.fromkeys(train, "train"), **dict.fromkeys(test, "test")}
    with staged_directory(out) as staging:
        table = []
        for index, (path, probability, kind, level) in enumerate(rows):
            relative = Path(split_of[index]) / level / kind / path.name
            _link(path, staging / relative)
            table.append([relative.as_posix(), probability, kind, level, split_of[index]])
        _link_examples(rows, test, staging / "examples")
        _write_table(staging / "labels.csv", table)
        (staging / "class_map.yaml").write_text(yaml.safe_dump(CLASS_MAP, sort_keys=False), encoding="utf-8")
        write_json(staging / INFO_FILE, settings)
    return Path(out)


def _link(target, path):
    """A symbolic link to the package's image; a copy where the file system has no links."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(target.resolve(), path)
    except OSError:
        shutil.copyfile(target, path)


def _link_examples(rows, test, folder):
    shown = {}
    for index in test:
        path, _, kind, level = rows[index]
        shown[(level, kind)] = shown.get((level, kind), 0) + 1
        if shown[(level, kind)] <= EXAMPLES:
            _link(path, folder / f"{level}_{kind}_{path.name}")


def _write_table(path, table):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "probability", "type", "level", "split"])
        writer.writerows(table)


def summary(out) -> str:
    counts = {}
    with open(Path(out) / "labels.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            counts[(row["split"], row["level"])] = counts.get((row["split"], row["level"]), 0) + 1
    parts = [f"{split} {sum(counts.get((split, level), 0) for level in LEVELS.values())} ("
             + ", ".join(f"{level} {counts.get((split, level), 0)}" for level in LEVELS.values()) + ")"
             for split in ("train", "test")]
    return f"{out}: class folders linked to the installed images; " + "; ".join(parts)
