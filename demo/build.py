"""Build the offline demo bundle: synthetic world -> small CLIP -> auto-labels -> mapper on frozen SmolLM2 ->
verdict calibration.

    python -m demo.build                           # checkpoints/demo (`make demo`), about 75 minutes on 2 cores
    python -m demo.build --quick --out /tmp/demo   # a tiny chain in well under a minute (tests)
    python -m demo.build --reference               # checkpoints/demo-reference-clip (`make reference-clip`)

The recipe is data (demo/recipe.yaml). The labels and the mapper are made by the product's own scripts,
run as a user runs them (train/label.py, train/train.py, train/calibrate.py on a second world drawn with
another seed). Work goes to OUT-world (the synthetic world) and OUT-work (clip/, labels/, mapper/,
calibration-world/, calibration/); the finished bundle (self-contained: its CLIP inside as clip/, weights
stored in fp16 so the repository can carry it) is moved into OUT in one step, with demo.json (recipe and
timings) in it. Every stage is skipped when its output is complete and resumes when it was interrupted; a
stage whose inputs changed (e.g. the CLIP was retrained) is redone, and so is everything after it.

--reference trains the reference CLIP instead: the recipe's CLIP on the same world with the localization
losses off (recipe.yaml reference_clip), 10-20 minutes on 2 cores. It measures explanation methods on a
CLIP nobody coached and is not part of the bundle.
"""
import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from demo.pretrain_clip import SETTINGS_FILE, effective_options, pretrain_clip
from demo.world import write_world
from utils.files import read_json, staged_directory, write_json
from utils.options import as_plain, from_dict

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "checkpoints" / "demo"
DEFAULT_REFERENCE = ROOT / "checkpoints" / "demo-reference-clip"
RECIPES = Path(__file__).with_name("recipe.yaml")
STAGE_FILE = ".stage.json"
INFO_FILE = "demo.json"


@dataclass
class Recipe:
    world_size: int
    world_seed: int
    world_px: int
    clip: dict  # demo.pretrain_clip.PretrainOptions overrides
    knowledge: str
    top_k: int
    lm: str
    mapper: dict  # train/train.py options
    calibration_world: dict  # size, seed: the labeled validation world the verdict is calibrated on
    calibration: dict  # train/calibrate.py options


def load_recipe(name):
    """'full' or 'quick' from demo/recipe.yaml."""
    recipes = yaml.safe_load(RECIPES.read_text(encoding="utf-8"))
    recipes.pop("reference_clip")
    if name not in recipes:
        raise ValueError(f"{RECIPES}: no recipe {name!r} (have {', '.join(recipes)})")
    return from_dict(Recipe, recipes[name], f"{RECIPES}: {name}")


def fingerprint(*parts):
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage(directory, key, run, name):
    """Run a stage into `directory` unless it finished with this key; a different key (changed inputs)
    clears the directory first, the same key resumes what an interrupted run left there."""
    directory = Path(directory)
    marker = directory / STAGE_FILE
    previous = read_json(marker, {})
    if previous.get("key") == key and previous.get("done"):
        print(f"{name}: done already ({directory})")
        return 0.0
    if previous.get("key") != key and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"key": key, "done": False})
    print(f"{name} -> {directory}")
    start = time.perf_counter()
    run()
    write_json(marker, {"key": key, "done": True})
    return time.perf_counter() - start


def is_complete(out):
    """A finished bundle: demo.json (written last) next to config.json, the mapper, the CLIP and the calibration."""
    out = Path(out)
    return all((out / name).exists() for name in (INFO_FILE, "config.json", "mapper.safetensors",
                                                  "clip/config.json", "calibration.json"))


def build_demo(out=DEFAULT_OUT, quick=False, recipe=None, progress=True) -> Path:
    """Build (or finish building) the demo bundle at `out` and return it; a complete one is left alone."""
    out = Path(out)
    recipe = recipe or load_recipe("quick" if quick else "full")
    info = read_json(out / INFO_FILE, {})
    same_recipe = info.get("recipe") == as_plain(recipe)
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
    seconds["labels"] = stage(labels_dir, labels_key, lambda: _script(
        "label.py", "--images", world_dir / "images", "--out", labels_dir, "--clip", clip_dir.resolve(),
        "--knowledge", recipe.knowledge, "--top-k", recipe.top_k, "--workers", 0, progress=progress), "auto-labels")
    mapper_key = fingerprint(labels_key, recipe.lm, recipe.mapper)
    seconds["mapper"] = stage(mapper_dir, mapper_key, lambda: _script(
        "train.py", labels_dir, "--out", mapper_dir, "--lm", recipe.lm, "--include-clip", "--resume",
        *_flags(recipe.mapper), progress=progress), "mapper")
    seconds["calibration"] = _calibrate(work, mapper_dir / "best", recipe, mapper_key, progress)

    seconds = {k: round(v, 1) for k, v in seconds.items()}
    info = {"recipe": as_plain(recipe), "seconds": seconds, "clip": read_json(clip_dir / SETTINGS_FILE),
            "total_seconds": round(time.perf_counter() - started, 1)}
    _install(mapper_dir / "best", out, info)
    print(f"demo bundle ready: {out} ({info['total_seconds']:.0f}s: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + ")")
    return out


def reference_options(recipe):
    """The recipe's CLIP options with recipe.yaml's reference_clip changes (the localization losses off)."""
    changes = yaml.safe_load(RECIPES.read_text(encoding="utf-8"))["reference_clip"]
    return {**recipe.clip, **changes}


def build_reference(out=DEFAULT_REFERENCE, quick=False, progress=True) -> Path:
    """Train (or finish, or leave alone when done) the reference CLIP at `out` on the recipe's world, drawn
    into OUT-world; returns `out`, a directory CLIPW.from_pretrained loads."""
    out, recipe = Path(out), load_recipe("quick" if quick else "full")
    world_dir = out.with_name(out.name + "-world")
    write_world(world_dir, recipe.world_size, seed=recipe.world_seed, width=recipe.world_px,
                height=recipe.world_px, progress=progress)
    return pretrain_clip(world_dir, out, recipe.knowledge, progress=progress, **reference_options(recipe))


def _calibrate(work, bundle, recipe, mapper_key, progress):
    """The verdict's thresholds and input checks, fitted on a world the CLIP and the mapper never saw."""
    world = work / "calibration-world"
    started = time.perf_counter()
    write_world(world, recipe.calibration_world["size"], seed=recipe.calibration_world["seed"],
                width=recipe.world_px, height=recipe.world_px, progress=progress)
    key = fingerprint(mapper_key, recipe.calibration_world, recipe.calibration)
    return time.perf_counter() - started + stage(work / "calibration", key, lambda: _script(
        "calibrate.py", "--bundle", bundle, "--images", world / "images", "--workers", 0,
        *_flags(recipe.calibration), progress=progress), "calibration")


def _flags(options):
    """{'batch_size': 8, 'metrics': 'none'} -> ['--batch-size', '8', '--metrics', 'none']."""
    return [part for key, value in options.items() for part in ("--" + key.replace("_", "-"), str(value))]


def _script(name, *arguments, progress=True):
    """Run one of the product's scripts as a user would; its own error message ends the build."""
    command = [sys.executable, str(ROOT / "train" / name), *map(str, arguments)]
    command += [] if progress else (["--quiet"] if name == "label.py" else ["--no-progress"])
    subprocess.run(command, check=True)


def _install(bundle, out, info):
    """Copy the trained bundle with its weights in fp16 (half the bytes, the same captions: the loaders
    cast back to fp32), add demo.json, then swap it in with one rename."""
    with staged_directory(out) as staging:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        for weights in (staging / "mapper.safetensors", staging / "clip" / "model.safetensors"):
            _to_fp16(weights)
        write_json(staging / INFO_FILE, info)


def _to_fp16(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help=f"bundle directory (default: {DEFAULT_OUT}; with --reference: "
                        f"{DEFAULT_REFERENCE})")
    parser.add_argument("--quick", action="store_true", help="tiny world, tiny CLIP, one short epoch each")
    parser.add_argument("--reference", action="store_true",
                        help="train the reference CLIP (no localization losses) instead of the bundle")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.reference:
        build_reference(args.out or DEFAULT_REFERENCE, quick=args.quick, progress=not args.quiet)
    else:
        build_demo(args.out or DEFAULT_OUT, quick=args.quick, progress=not args.quiet)


if __name__ == "__main__":
    main()
