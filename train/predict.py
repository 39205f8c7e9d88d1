"""Caption, top-k knowledge-base matches and heat-map overlays for an image or a folder, with one or more bundles.

    python train/predict.py photo.jpg --bundle checkpoints/run1/best --out predictions
    python train/predict.py photos/ --bundle checkpoints/run1/best --bundle checkpoints/run2/best --out preds \\
        --k 3 --method relevancy --beams 3

OUT gets predictions.csv and predictions.json (image, model, caption, knowledge-base summary, top-k prompts
with probabilities), failed_images.txt, and under overlays/MODEL/ one combined overlay per image, one per
top-k prompt and one for the caption. Images that cannot be read are reported and skipped.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.explain import METHODS  # noqa: E402
from models.inspector import Inspector  # noqa: E402
from train.evaluate import display_names  # noqa: E402
from utils.data import atomic_write  # noqa: E402
from utils.images import ImageLoadError, find_images, load_image  # noqa: E402
from utils.summarizer import summarize  # noqa: E402


def list_images(sources, out_dir=None):
    """(key, path) per image: files as given, folders walked; key names the overlays (unique, no slashes)."""
    found = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        source = Path(source)
        if source.is_dir():
            skip = Path(out_dir).resolve() if out_dir else None
            for path in find_images(source):
                if skip is None or not path.resolve().is_relative_to(skip):  # never our own overlays
                    found.append((path.relative_to(source).with_suffix("").as_posix().replace("/", "__"), path))
        else:
            found.append((source.stem, source))
    keys, seen = [], {}
    for key, path in found:
        seen[key] = seen.get(key, 0) + 1
        keys.append((key if seen[key] == 1 else f"{key}_{seen[key]}", path))
    return keys


def caption_and_top_k(inspector, picture, k, generation):
    """The cheap path without overlays: one CLIP pass, one caption, no gradients."""
    with torch.no_grad():
        features = inspector.clip.encode_images([picture])
        probs = inspector.clip.probabilities(features, inspector.sentences)[0]
    values, indices = probs.topk(min(k, len(inspector.sentences)))
    top_k = [(inspector.knowledge.prompts[i], p) for i, p in zip(indices.tolist(), values.tolist())]
    caption = inspector.captioner.generate(embeddings=features, **generation)[0]
    return caption, top_k


def save_png(image, path):
    atomic_write(path, lambda p: image.save(p, format="PNG"))
    return path


def save_overlays(inspection, folder, key):
    files = {"combined": save_png(inspection.combined, folder / f"{key}_combined.png"), "individual": []}
    for rank, ((prompt, _), overlay) in enumerate(zip(inspection.top_k, inspection.overlays), start=1):
        files["individual"].append(save_png(overlay, folder / f"{key}_{rank}_{prompt.id}.png"))
    if inspection.caption_overlay is not None:
        files["caption"] = save_png(inspection.caption_overlay, folder / f"{key}_caption.png")
    return files


def predict_one(inspector, path, *, k, method, overlays, caption_map, threshold, generation, folder, key):
    picture = load_image(path, max_pixels=inspector.max_pixels)
    files = {}
    if overlays:
        inspection = inspector.inspect(picture, k=k, method=method, threshold=threshold,
                                       with_caption_map=caption_map, generation=generation)
        caption, top_k = inspection.caption, inspection.top_k
        files = save_overlays(inspection, folder, key)
    else:
        caption, top_k = caption_and_top_k(inspector, picture, k, generation)
    return caption, top_k, files


def predict(bundles, sources, out_dir, *, k=5, method="gradcam", overlays=True, caption_map=True, threshold=0.5,
            knowledge=None, lm_precision="fp32", device=None, progress=True, **generation):
    """Run every bundle on every image; write OUT/predictions.csv, .json, failed_images.txt and overlays.
    Returns (records, failed): failed lists (image, reason) for images that could not be used."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    bundles = [bundles] if isinstance(bundles, (str, Path)) else list(bundles)
    out_dir = Path(out_dir)
    images = list_images(sources, out_dir)
    if not images:
        raise ValueError(f"no images found in {sources}")
    records, failed, unreadable = [], [], set()
    for name, bundle in zip(display_names(bundles), bundles):
        inspector = Inspector.load(bundle, knowledge=knowledge, device=device, lm_precision=lm_precision)
        folder = out_dir / "overlays" / name.replace("/", "__")
        for key, path in tqdm(images, desc=name, unit="image", disable=not progress):
            if path in unreadable:
                continue
            try:
                caption, top_k, files = predict_one(
                    inspector, path, k=k, method=method, overlays=overlays, caption_map=caption_map,
                    threshold=threshold, generation=generation, folder=folder, key=key)
            except ImageLoadError as error:
                unreadable.add(path)
                failed.append((str(path), str(error).removeprefix(f"{path}: ")))
                continue
            except Exception as error:  # noqa: BLE001 -- one odd image must not end a batch run
                failed.append((str(path), f"{name}: {type(error).__name__}: {error}"))
                warnings.warn(f"{path}: {failed[-1][1]}", stacklevel=2)
                continue
            records.append(_record(path, name, bundle, caption, top_k, inspector.knowledge, files, out_dir))
    write_outputs(records, failed, out_dir)
    return records, failed


def _record(path, name, bundle, caption, top_k, knowledge, files, out_dir):
    def relative(file):
        return Path(file).relative_to(out_dir).as_posix()

    return {
        "image": str(path), "model": name, "bundle": str(bundle), "caption": caption,
        "summary": summarize(top_k, knowledge),
        "top_k": [{"id": p.id, "text": p.text, "category": p.category, "healthy": p.healthy, "prob": prob}
                  for p, prob in top_k],
        "overlays": {kind: [relative(f) for f in value] if isinstance(value, list) else relative(value)
                     for kind, value in files.items()},
    }


def write_outputs(records, failed, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for record in records:
        row = {key: record[key] for key in ("image", "model", "caption", "summary")}
        for rank, match in enumerate(record["top_k"], start=1):
            row[f"prompt_{rank}"], row[f"prob_{rank}"] = match["id"], match["prob"]
        rows.append(row)
    atomic_write(out_dir / "predictions.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    payload = {"predictions": records, "failed": [{"image": image, "reason": reason} for image, reason in failed]}
    atomic_write(out_dir / "predictions.json",
                 lambda p: p.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8"))
    lines = "".join(f"{image}\t{' '.join(reason.split())}\n" for image, reason in failed)
    atomic_write(out_dir / "failed_images.txt", lambda p: p.write_text(lines, encoding="utf-8"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files and/or folders (walked recursively)")
    ap.add_argument("--bundle", action="append", required=True, dest="bundles",
                    help="trained bundle dir; repeat to compare several")
    ap.add_argument("--out", required=True, help="output folder for CSV, JSON and overlays")
    ap.add_argument("--k", type=int, default=5, help="knowledge-base descriptions to show (default: %(default)s)")
    ap.add_argument("--knowledge", help="knowledge base name or file (default: the bundle's)")
    ap.add_argument("--method", choices=METHODS, default="gradcam", help="explanation maps (default: %(default)s)")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="map values below this are not drawn on the combined overlay (default: %(default)s)")
    ap.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True,
                    help="write overlay PNGs; --no-overlays skips the explanations (much faster)")
    ap.add_argument("--caption-map", action=argparse.BooleanOptionalAction, default=True,
                    help="also explain the generated caption (one more PNG per image; default: on)")
    gen = ap.add_argument_group("caption generation")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy or beam search (default: 0)")
    gen.add_argument("--top-k", type=int, default=0, help="sampling: keep the k likeliest tokens; 0 = all")
    gen.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass (default: 1)")
    gen.add_argument("--beams", type=int, default=1, help="beam search width (default: %(default)s)")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="shortest caption in tokens (default: 0)")
    gen.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=None, help="seed for sampling (default: none)")
    run = ap.add_argument_group("run")
    run.add_argument("--lm-precision", choices=("fp32", "bf16", "int8"), default="fp32",
                     help="LM weights for inference; int8 is CPU-only and gives no caption map (default: fp32)")
    run.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="show progress bars (default: on)")
    args = ap.parse_args(argv)
    generation = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, num_beams=args.beams,
                      min_new_tokens=args.min_new_tokens, max_new_tokens=args.max_new_tokens, seed=args.seed)
    try:
        records, failed = predict(args.bundles, args.images, args.out, k=args.k, method=args.method,
                                  overlays=args.overlays, caption_map=args.caption_map, threshold=args.threshold,
                                  knowledge=args.knowledge, lm_precision=args.lm_precision, device=args.device,
                                  progress=args.progress, **generation)
    except (ValueError, OSError) as error:
        ap.exit(2, f"error: {error}\n")
    for image, reason in failed:
        print(f"skipped {image}: {reason}")
    print(f"{len(records)} predictions, {len(failed)} images skipped -> {Path(args.out) / 'predictions.csv'}")
    return records, failed


if __name__ == "__main__":
    main()
