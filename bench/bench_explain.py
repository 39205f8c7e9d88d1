"""What an explanation costs next to a plain image encode, at ViT-B/32 sizes (random weights, no download).

    python bench/bench_explain.py [--runs 10] [--threads 2] [--k 5]

Prints median (and min) milliseconds per image and the median's ratio to the plain no-grad encode.
Asserts nothing.
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import CLIPConfig

from models.clip import CLIPW, make_word_tokenizer
from models.explain import Explainer


def timings_ms(rows, runs, warmup=2):
    """Runs the rows round-robin, so load from other processes on shared cores hits every row alike."""
    for _, fn in rows:
        for _ in range(warmup):
            fn()
    times = {name: [] for name, _ in rows}
    for _ in range(runs):
        for name, fn in rows:
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=5, help="maps per image (top-k prompts)")
    parser.add_argument("--prompts", type=int, default=12, help="size of the prompt bank")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    clip = CLIPW.from_config(CLIPConfig(), make_word_tokenizer(["a fruit"]), device="cpu")  # ViT-B/32 defaults
    explainer = Explainer(clip)
    pixels = torch.randn(1, 3, clip.image_size, clip.image_size)
    texts = torch.nn.functional.normalize(torch.randn(args.prompts, clip.embed_dim), dim=-1)
    top = list(range(args.k))

    rows = [
        ("plain image encode (no grad)", lambda: clip.encode_images(pixels)),
        (f"Grad-CAM, {args.k} maps, 1 forward + batched backward",
         lambda: explainer.prompt_maps(pixels, texts, "gradcam", indices=top)),
        (f"Grad-CAM contrastive, {args.k} maps, batched",
         lambda: explainer.prompt_maps(pixels, texts, "gradcam_contrastive", indices=top)),
        (f"Grad-CAM, {args.k} maps, {args.k} separate forward+backward",
         lambda: explainer.prompt_maps(pixels, texts, "gradcam", indices=top, separate_passes=True)),
        (f"relevancy, {args.k} maps, 1 forward + batched backward",
         lambda: explainer.prompt_maps(pixels, texts, "relevancy", indices=top)),
        (f"relevancy, {args.k} maps, {args.k} separate forward+backward",
         lambda: explainer.prompt_maps(pixels, texts, "relevancy", indices=top, separate_passes=True)),
    ]
    print(f"ViT-B/32 sizes ({clip.image_size} px, {clip.patch_grid}x{clip.patch_grid} patches), batch 1, "
          f"{args.threads} threads, median of {args.runs} runs, torch {torch.__version__}")
    times = timings_ms(rows, args.runs)
    base = statistics.median(times[rows[0][0]])
    print(f"{'':58s} {'median ms':>9s} {'min ms':>8s} {'x encode':>9s}")
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"{name:58s} {ms:9.1f} {min(values):8.1f} {ms / base:9.2f}")


if __name__ == "__main__":
    main()
