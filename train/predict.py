"""Caption, top-k knowledge-base matches and heat-map overlays for an image or a folder, with one or more bundles.

    python train/predict.py photo.jpg --bundle checkpoints/run1/best --out predictions
    python train/predict.py photos/ --bundle checkpoints/run1/best --bundle checkpoints/run2/best --out preds \\
        --k 3 --method relevancy --num-beams 3

OUT gets predictions.csv and predictions.json (image, model, verdict (pass / fail / review, from the bundle's
calibration) with its reason and the caption check, caption, knowledge-base summary, top-k prompts with
probabilities), failed_images.txt, and under overlays/MODEL/ one combined overlay per image, one per
top-k prompt and one for the caption. Images that cannot be read (corrupt, too large, unsupported formats
such as .svg) are listed with the reason and skipped. Offline, the demo bundle (checkpoints/demo) works.
"""
import argparse
import json
import warnings
from pathlib import Path

from models.config import GenerationOptions, InspectOptions, LoadOptions, add_inference_arguments
from utils.options import add_arguments, from_namespace

CSV_COLUMNS = ("image", "model", "verdict", "caption", "reason", "caption_check", "top_defect", "top_defect_prob",
               "summary")  # then prompt_i, prob_i: the app's batch table, for scripts


def list_images(sources, out_dir=None):
    """(key, path) per image: files as given, folders walked; key names the overlays (unique, no slashes)."""
    from utils.images import IMAGE_EXTENSIONS, UNSUPPORTED_EXTENSIONS, find_images

    found = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        source = Path(source)
        if source.is_dir():
            skip = Path(out_dir).resolve() if out_dir else None
            for path in find_images(source, IMAGE_EXTENSIONS + UNSUPPORTED_EXTENSIONS):
                if skip is None or not path.resolve().is_relative_to(skip):  # never our own overlays
                    found.append((path.relative_to(source).with_suffix("").as_posix().replace("/", "__"), path))
        else:
            found.append((source.stem, source))
    keys, seen = [], {}
    for key, path in found:
        seen[key] = seen.get(key, 0) + 1
        keys.append((key if seen[key] == 1 else f"{key}_{seen[key]}", path))
    return keys


def caption_and_top_k(inspector, picture, options, generation):
    """The cheap path without overlays: the photo read as the app's view reads it (tiles by default), one caption,
    no gradients -> (caption, top-k, verdict, CLIP's kind or None)."""
    import numpy as np

    from models.views import photo_reading

    healthy = [p.healthy for p in inspector.knowledge.prompts]
    embedding, probabilities = photo_reading(inspector.clip, picture, inspector.sentences, healthy, options.view,
                                             options.tile_side)
    caption = inspector.captioner.generate(embeddings=embedding, options=generation)[0]
    probabilities, verdict = inspector.assess(picture, embedding, caption, probabilities, generation)
    best = np.argsort(-probabilities, kind="stable")[:options.k]
    top_k = [(inspector.knowledge.prompts[i], float(probabilities[i])) for i in best]
    return caption, top_k, verdict, inspector.kind_of(embedding)


def save_png(image, path):
    from utils.files import atomic_write

    atomic_write(path, lambda p: image.save(p, format="PNG"))
    return path


def save_overlays(inspection, folder, key):
    files = {"combined": save_png(inspection.combined, folder / f"{key}_combined.png"), "individual": []}
    for rank, ((prompt, _), overlay) in enumerate(zip(inspection.top_k, inspection.overlays), start=1):
        files["individual"].append(save_png(overlay, folder / f"{key}_{rank}_{prompt.id}.png"))
    if inspection.caption_overlay is not None:
        files["caption"] = save_png(inspection.caption_overlay, folder / f"{key}_caption.png")
    return files


def predict_one(inspector, path, *, options, overlays, generation, folder, key):
    from utils.images import load_image

    picture = load_image(path, max_pixels=inspector.max_pixels)
    if not overlays:
        return (*caption_and_top_k(inspector, picture, options, generation), {})
    inspection = inspector.inspect(picture, options, generation)
    files = save_overlays(inspection, folder, key)
    return inspection.caption, inspection.top_k, inspection.verdict, inspection.kind, files


def predict(bundles, sources, out_dir, *, options=None, overlays=True, knowledge=None, load=None,
            generation=None, progress=True):
    """Run every bundle on every image; write OUT/predictions.csv, .json, failed_images.txt and overlays.
    Returns (records, failed): failed lists (image, reason) for images that could not be used.
    `options` an InspectOptions, `load` a LoadOptions, `generation` a GenerationOptions."""
    from tqdm.auto import tqdm

    from models.explain import get_method
    from models.inspector import Inspector
    from utils.files import short_names
    from utils.images import ImageLoadError

    options, load = options or InspectOptions(), load or LoadOptions()
    get_method(options.method)  # an unknown method fails before any model loads
    bundles = [bundles] if isinstance(bundles, (str, Path)) else list(bundles)
    out_dir = Path(out_dir)
    images = list_images(sources, out_dir)
    if not images:
        raise ValueError(f"no images found in {sources}")
    records, failed, unreadable = [], [], set()
    for name, bundle in zip(short_names(bundles), bundles):
        inspector = Inspector.load(bundle, knowledge=knowledge, device=load.device, lm_precision=load.lm_precision)
        folder = out_dir / "overlays" / name.replace("/", "__")
        for key, path in tqdm(images, desc=name, unit="image", disable=not progress):
            if path in unreadable:
                continue
            try:
                caption, top_k, verdict, kind, files = predict_one(inspector, path, options=options, overlays=overlays,
                                                             generation=generation, folder=folder, key=key)
            except ImageLoadError as error:
                unreadable.add(path)
                failed.append((str(path), str(error).removeprefix(f"{path}: ")))
                continue
            except Exception as error:  # noqa: BLE001 -- one odd image must not end a batch run
                failed.append((str(path), f"{name}: {type(error).__name__}: {error}"))
                warnings.warn(f"{path}: {failed[-1][1]}", stacklevel=2)
                continue
            records.append(_record(path, name, bundle, caption, top_k, verdict, kind, inspector.knowledge, files,
                                   out_dir))
    write_outputs(records, failed, out_dir)
    return records, failed


def _record(path, name, bundle, caption, top_k, verdict, kind, knowledge, files, out_dir):
    from utils.summarizer import summarize

    def relative(file):
        return Path(file).relative_to(out_dir).as_posix()

    return {
        "image": str(path), "model": name, "bundle": str(bundle), "verdict": verdict.decision,
        "reason": "; ".join(verdict.reasons), "caption_check": verdict.caption_check,
        "top_defect": verdict.top_defect, "top_defect_prob": verdict.top_defect_prob,
        "healthy_mass": verdict.healthy_mass, "caption": caption,
        "summary": summarize(top_k, knowledge, kind=kind and kind[0]),
        "top_k": [{"id": p.id, "text": p.text, "category": p.category, "healthy": p.healthy, "prob": prob}
                  for p, prob in top_k],
        "overlays": {what: [relative(f) for f in value] if isinstance(value, list) else relative(value)
                     for what, value in files.items()},
    }


def write_outputs(records, failed, out_dir):
    import pandas as pd

    from utils.files import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in records:
        row = {key: record[key] for key in CSV_COLUMNS}
        for rank, match in enumerate(record["top_k"], start=1):
            row[f"prompt_{rank}"], row[f"prob_{rank}"] = match["id"], match["prob"]
        rows.append(row)
    atomic_write(out_dir / "predictions.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    payload = {"predictions": records, "failed": [{"image": image, "reason": reason} for image, reason in failed]}
    atomic_write(out_dir / "predictions.json",
                 lambda p: p.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8"))
    lines = "".join(f"{image}\t{' '.join(reason.split())}\n" for image, reason in failed)
    atomic_write(out_dir / "failed_images.txt", lambda p: p.write_text(lines, encoding="utf-8"))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files and/or folders (walked recursively)")
    parser.add_argument("--bundle", action="append", required=True, dest="bundles",
                        help="trained bundle dir; repeat to compare several (required)")
    parser.add_argument("--out", required=True, help="output folder for CSV, JSON and overlays (required)")
    parser.add_argument("--knowledge", help="knowledge base name or file (default: the bundle's)")
    parser.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True,
                        help="write overlay PNGs; --no-overlays skips the explanations (much faster)")
    add_arguments(parser.add_argument_group("inspection"), InspectOptions)
    return add_inference_arguments(parser)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # before any heavy import: --help answers at once
    try:
        records, failed = predict(args.bundles, args.images, args.out, options=from_namespace(InspectOptions, args),
                                  overlays=args.overlays, knowledge=args.knowledge,
                                  load=from_namespace(LoadOptions, args),
                                  generation=from_namespace(GenerationOptions, args), progress=args.progress)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    for image, reason in failed:
        print(f"skipped {image}: {reason}")
    skipped = f"{len(failed)} image{'' if len(failed) == 1 else 's'} skipped"
    print(f"{len(records)} predictions, {skipped} -> {Path(args.out) / 'predictions.csv'}")
    return records, failed


if __name__ == "__main__":
    main()
