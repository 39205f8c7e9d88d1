"""Labeling throughput at CLIP ViT-B/32 sizes (random init, no download): is decoding keeping up?

Writes --n JPEG photos (synthetic fruit, 640x480 by default) to a temp folder, each read as label.py reads it
(its square tiles: 2 for 640x480, models/views.py PhotoTiles), then prints photos/s ("images/s") for
  - pure batched CLIP encoding of ready pixel tensors, as many tiles as the photos have (the ceiling),
  - decoding + preprocessing alone in one process (what one worker can feed),
  - end-to-end sharded encoding as label.py runs it (workers decode, CLIP encodes, shards written) for each
    --workers value, with JPEG draft decoding and, for comparison, without it,
and the ratio end-to-end / pure encoding (the aim: >= 0.8 on 2 cores). Pure encoding is timed again right
before each end-to-end run, so each ratio compares neighbours in time. Beside wall-clock images/s it prints
CPU milliseconds per image (this process plus its finished DataLoader workers): on a machine shared with
other work the wall-clock ratio is noisy, the CPU-time ratio much less so. Asserts nothing.

    python bench/bench_label.py --n 200 --size 640x480 --workers 0 1 2
"""
import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from transformers import CLIPConfig

from demo.world import item_rng, render_sample
from models.clip import CLIPW, make_word_tokenizer
from models.views import PhotoTiles
from utils.data import ImageFiles, collate_tiles
from utils.encoding import encode_shards, file_stats
from utils.knowledge import load_knowledge


def write_photos(folder, n, width, height, unique=8):
    """`unique` rendered scenes saved at several JPEG qualities (rendering 640x480 costs ~0.5 s a scene)."""
    scenes = [render_sample(item_rng(0, i), width, height).image for i in range(unique)]
    for i in range(n):
        (folder / f"class{i % 4}").mkdir(exist_ok=True)
        scenes[i % unique].save(folder / f"class{i % 4}" / f"{i:05d}.jpg", quality=85 + i % 11)


def cpu_seconds():
    """CPU time of this process and of its children that have exited (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """(wall seconds, CPU seconds) of fn()."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def line(name, n, wall, cpu, pure=None):
    ratio = f"  ({n / wall / pure[0]:4.0%} of pure encoding; by CPU time {pure[1] / (cpu / n):4.0%})" if pure else ""
    print(f"{name:<44} {n / wall:7.1f} images/s {cpu / n * 1000:8.1f} ms CPU/image{ratio}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="number of photos")
    parser.add_argument("--size", default="640x480", help="photo size WxH")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to try")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (encoder)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"torch {torch.__version__}, {cores} cores, {args.threads} torch threads; {args.n} JPEGs {width}x{height}, "
          f"batch {args.batch_size}")

    kb = load_knowledge("fruit")
    torch.manual_seed(0)
    clip = CLIPW.from_config(CLIPConfig(), make_word_tokenizer(kb.sentences()), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        write_photos(folder, args.n, width, height)
        files = sorted(folder.rglob("*.jpg"))

        tiles = PhotoTiles(tuple(kb.healthy_mask()))
        decode = ImageFiles(files, clip, tiles=tiles)
        line("decode + preprocess, 1 process", args.n, *timed(lambda: [decode[i] for i in range(len(files))]))
        no_draft = ImageFiles(files, clip, draft=False, tiles=tiles)
        line("decode + preprocess, 1 process, no draft", args.n,
             *timed(lambda: [no_draft[i] for i in range(len(files))]))

        _, batch, counts, _ = collate_tiles([decode[i] for i in range(args.batch_size)])
        count = round(args.n * len(batch) / len(counts))  # the tiles of all the photos
        pixels = batch.repeat((count + len(batch) - 1) // len(batch), 1, 1, 1)[:count]
        clip.encode_images(pixels[:args.batch_size])  # warm-up
        clip.encode_texts(kb.sentences())

        def pure_encoding():
            wall, cpu = timed(lambda: clip.encode_images(pixels, batch_size=args.batch_size))
            line(f"pure CLIP encoding of ready tensors ({count} tiles)", args.n, wall, cpu)
            return args.n / wall, cpu / args.n

        runs = [(workers, True) for workers in args.workers] + [(max(args.workers), False)]
        for run, (workers, draft) in enumerate(runs):
            pure = pure_encoding()
            names = [path.relative_to(folder).as_posix() for path in files]
            wall, cpu = timed(lambda: encode_shards(
                files, names, file_stats(files, names), Path(tmp) / f"out{run}", clip, kb.sentences(),
                batch_size=args.batch_size, workers=workers, progress=False, draft=draft, tiles=tiles))
            line(f"end-to-end sharded encoding (label.py's work), {workers} workers" + ("" if draft else ", no draft"),
                 args.n, wall, cpu, pure)


if __name__ == "__main__":
    main()
