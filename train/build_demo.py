"""Build the offline demo bundle: synthetic world -> small CLIP -> auto-labels -> mapper on frozen SmolLM2.

    python train/build_demo.py                           # checkpoints/demo, about 10 minutes on 2 cores
    python train/build_demo.py --quick --out /tmp/demo   # a tiny chain in well under a minute (tests, CI)

Work goes to OUT-world (the synthetic world) and OUT-work (clip/, labels/, mapper/); the finished bundle
(self-contained: its CLIP inside as clip/) is moved into OUT in one step, with demo.json (recipe and
timings) in it. Every stage is skipped when its output is complete and resumes when it was interrupted;
a stage whose inputs changed (e.g. the CLIP was retrained) is redone, and so is everything after it.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from train.pretrain_clip import SETTINGS_FILE, effective_options, pretrain_clip  # noqa: E402
from utils.files import atomic_write, replace_directory  # noqa: E402
from utils.synthetic import write_world  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"
STAGE_FILE = ".stage.json"
INFO_FILE = "demo.json"


@dataclass
class Recipe:
    world_size: int = 3000
    world_seed: int = 0
    world_px: int = 128  # rendered size; the CLIP sees it resized to its own input size
    clip: dict = field(default_factory=dict)  # train.pretrain_clip.PretrainOptions overrides
    knowledge: str = "fruit"
    top_k: int = 3
    lm: str = "smollm2"
    # one epoch is what the time budget allows; small batches make more steps of it (held-out caption
    # accuracy 0.85 at batch 32, 0.90 at batch 8, in about the same time)
    mapper: dict = field(default_factory=lambda: dict(
        prefix_length=6, epochs=1, batch_size=8, lr=1e-3, val_fraction=0.05, val_max=0, metrics=()))


FULL = Recipe()
QUICK = Recipe(
    world_size=40, world_px=64,
    clip=dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, text_width=32, text_layers=1,
              embed_dim=32, epochs=1, batch_size=16, text_warmup=5),
    mapper=dict(prefix_length=2, epochs=1, batch_size=16, lr=1e-3, val_fraction=0.1, val_max=0, metrics=()),
)


def fingerprint(*parts):
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage(directory, key, run, name):
    """Run a stage into `directory` unless it finished with this key; a different key (changed inputs)
    clears the directory first, the same key resumes what an interrupted run left there."""
    directory = Path(directory)
    marker = directory / STAGE_FILE
    try:
        previous = json.loads(marker.read_text())
    except (OSError, ValueError):
        previous = {}
    if previous.get("key") == key and previous.get("done"):
        print(f"{name}: done already ({directory})")
        return 0.0
    if previous.get("key") != key and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_json(marker, {"key": key, "done": False})
    print(f"{name} -> {directory}")
    start = time.perf_counter()
    run()
    _write_json(marker, {"key": key, "done": True})
    return time.perf_counter() - start


def _write_json(path, data):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out):
    """A finished bundle: demo.json (written last) next to config.json, the mapper and the CLIP."""
    out = Path(out)
    return all((out / name).exists() for name in (INFO_FILE, "config.json", "mapper.safetensors",
                                                  "clip/config.json"))


def build_demo(out=DEFAULT_OUT, quick=False, recipe=None, progress=True) -> Path:
    """Build (or finish building) the demo bundle at `out` and return it; a complete one is left alone."""
    out = Path(out)
    recipe = recipe or (QUICK if quick else FULL)
    recipe_dict = dataclasses.asdict(recipe)
    info = _read_json(out / INFO_FILE) or {}
    same_recipe = info.get("recipe") == json.loads(json.dumps(recipe_dict))
    same_clip = (info.get("clip") or {}).get("options") == effective_options(**recipe.clip)  # defaults may change
    if is_complete(out) and same_recipe and same_clip:
        print(f"demo bundle ready: {out}")
        return out
    started = time.perf_counter()
    world_dir, work = out.with_name(out.name + "-world"), out.with_name(out.name + "-work")
    clip_dir, labels_dir, mapper_dir = work / "clip", work / "labels", work / "mapper"
    seconds = {}

    world_start = time.perf_counter()
    write_world(world_dir, recipe.world_size, seed=recipe.world_seed, width=recipe.world_px,
                height=recipe.world_px, progress=progress)
    seconds["world"] = time.perf_counter() - world_start

    clip_start = time.perf_counter()
    pretrain_clip(world_dir, clip_dir, recipe.knowledge, progress=progress, **recipe.clip)
    seconds["clip"] = time.perf_counter() - clip_start
    clip_key = fingerprint((clip_dir / SETTINGS_FILE).read_text())  # changes whenever the CLIP is retrained

    labels_key = fingerprint(clip_key, recipe.knowledge, recipe.top_k)
    seconds["labels"] = stage(labels_dir, labels_key, lambda: _label(world_dir, clip_dir, labels_dir, recipe,
                                                                      progress), "auto-labels")
    mapper_key = fingerprint(labels_key, recipe.lm, recipe.mapper)
    seconds["mapper"] = stage(mapper_dir, mapper_key, lambda: _train_mapper(labels_dir, mapper_dir, recipe,
                                                                             progress), "mapper")

    seconds = {k: round(v, 1) for k, v in seconds.items()}
    info = {"recipe": recipe_dict, "seconds": seconds, "clip": _read_json(clip_dir / SETTINGS_FILE),
            "total_seconds": round(time.perf_counter() - started, 1)}
    _install(mapper_dir / "best", out, info)
    print(f"demo bundle ready: {out} ({info['total_seconds']:.0f}s: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + ")")
    return out


def _label(world_dir, clip_dir, labels_dir, recipe, progress):
    from train.label import label_folder
    label_folder(world_dir / "images", labels_dir, str(clip_dir.resolve()), recipe.knowledge,
                 top_k=recipe.top_k, workers=0, progress=progress)


def _train_mapper(labels_dir, mapper_dir, recipe, progress):
    from train.train import train
    train([str(labels_dir)], str(mapper_dir), lm=recipe.lm, include_clip=True, resume=True, progress=progress,
          **recipe.mapper)


def _install(bundle, out, info):
    """Copy the trained bundle next to `out`, add demo.json, then swap it in with one rename."""
    staging = out.with_name(f".{out.name}.staging{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle, staging)
    _write_json(staging / INFO_FILE, info)
    replace_directory(staging, out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="bundle directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny world, tiny CLIP, one short epoch each")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    build_demo(args.out, quick=args.quick, progress=not args.quiet)


if __name__ == "__main__":
    main()
