"""Precision bench on a held-out synthetic world: does each LM precision give the fp32 LM's greedy captions?

    python -m demo.precision_bench                     # checkpoints/demo, world seed 7, 60 images
    python -m demo.precision_bench --bundle OTHER --n 200 --precisions bf16,int8

Rows (one image at a time, as the app captions, default decoding):
  fp32 (reference)      the fp32 LM alone, one pass per token (phrase draft off)
  fp32, phrase draft    what the app does by default: the knowledge base's sentences draft, the fp32 LM checks
                        several tokens per pass (models/checked.py PhraseDraft)
  fp32 batched          fp32 captions in batches of 32 against one at a time: the noise floor (the same LM,
                        other float rounding)
  plain X               the LM itself cast to X (bf16) or with int8 Linears: what `--lm-precision X` did
                        before issue 15
  X draft, fp32 check   what `--lm-precision X` does now (models/checked.py)
  chance                fp32 captions of other images (the list shuffled, seed 0): how often two images
                        share a caption anyway
Columns: identical (share of captions identical to fp32's, one at a time), CPU s/caption (process time, so
other jobs on the machine do not count) and that as a ratio to fp32's.
"""
import argparse
import os
import time
from pathlib import Path

from models.config import PRECISIONS  # plain dataclasses, no torch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo",
                        help="captioner bundle (default: %(default)s, the offline demo)")
    parser.add_argument("--world", default="checkpoints/demo-precision-world",
                        help="held-out world, generated when missing (default: %(default)s)")
    parser.add_argument("--n", type=int, default=60, help="held-out images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="held-out world seed; the demo trains on 0 (default: 7)")
    parser.add_argument("--precisions", default="bf16,int8", help="comma-separated reduced precisions (default: "
                                                                  "%(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args(argv)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(args.precisions) - set(PRECISIONS[1:]))
    if unknown:
        parser.error(f"--precisions: unknown {unknown} (known: {', '.join(PRECISIONS[1:])})")
    return args


def timed_captions(captioner, embeddings, batch_size=1, phrase_draft=False):
    """(captions, CPU seconds per caption)."""
    from models.config import GenerationOptions

    start = time.process_time()
    captions = captioner.caption_embeddings(embeddings, GenerationOptions(phrase_draft=phrase_draft), batch_size)
    return captions, (time.process_time() - start) / len(captions)


def plain(captioner, precision):
    """The captioner with its LM replaced by the reduced copy itself: no fp32 check."""
    import copy

    from models.lm import draft_lm

    reduced = copy.deepcopy(captioner)
    reduced.lm = draft_lm(reduced.lm, precision)
    return reduced


def rows(captioner, embeddings, precisions):
    """{row name: {identical, CPU s/caption}}, each row also printed as it is measured (a long run that is
    cut short keeps its figures); the reference is fp32 one image at a time."""
    import random

    reference, seconds = timed_captions(captioner, embeddings)
    table = {}

    def add(name, captions, seconds=None):
        identical = sum(a == b for a, b in zip(captions, reference)) / len(reference)
        table[name] = {"identical": identical, "CPU s/caption": seconds}
        print(f"  {name}: identical {identical:.3f}" + (f", {seconds:.2f} CPU s/caption" if seconds else ""),
              flush=True)

    add("fp32 (reference)", reference, seconds)
    add("fp32, phrase draft", *timed_captions(captioner, embeddings, phrase_draft=True))
    add("chance (other images' fp32 captions)", random.Random(0).sample(reference, len(reference)))
    add("fp32 batched (noise floor)", *timed_captions(captioner, embeddings, batch_size=32))
    for precision in precisions:
        add(f"{precision} draft, fp32 check", *timed_captions(captioner.set_precision(precision), embeddings))
        captioner.set_precision("fp32")
        add(f"plain {precision}", *timed_captions(plain(captioner, precision), embeddings))
    return table


def run(args):
    import pandas as pd
    import torch

    from demo.world import load_truth, write_world
    from models.vlm import ClipCaptioner

    torch.set_num_threads(args.threads)
    captioner = ClipCaptioner.from_pretrained(args.bundle, device="cpu")
    world = write_world(args.world, args.n, seed=args.seed, width=128, height=128, progress=True)
    truth = load_truth(world).head(args.n)
    embeddings = captioner.clip.encode_images([Path(world) / p for p in truth["path"]])
    table = pd.DataFrame(rows(captioner, embeddings, args.precisions)).T
    table["x fp32 time"] = table["CPU s/caption"] / table.loc["fp32 (reference)", "CPU s/caption"]
    return (f"\nheld-out world {world} (seed {args.seed}, {len(truth)} images), bundle {args.bundle}, "
            f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}\n"
            + table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-"))


def main(argv=None):
    args = parse_args(argv)  # before any heavy import: --help answers at once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    print(run(args))
    print(f"({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
