"""Generate the synthetic fruit world: product photos with known defects and pixel masks.

    python train/make_world.py --out checkpoints/world --n 2000 --seed 0 --size 128
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from utils.synthetic import load_truth, write_world  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """'128' -> (128, 128); '160x120' -> (160, 120) as (width, height)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"size must be N or WxH with sides >= 16, got {text!r}")
    return parts[0], parts[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="checkpoints/world",
                    help="output folder: images/<class>/<id>.jpg, masks/<id>.npz, labels.csv, world.json "
                         "(default: %(default)s)")
    ap.add_argument("--n", type=int, default=2000, help="number of images (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0,
                    help="random seed; the same seed and size give identical images (default: %(default)s)")
    ap.add_argument("--size", type=parse_size, default=(128, 128), metavar="N|WxH",
                    help="image size in pixels, square N or width x height (default: 128)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")

    start = time.perf_counter()
    out = write_world(args.out, args.n, seed=args.seed, width=args.size[0], height=args.size[1],
                      progress=not args.quiet)
    counts = load_truth(out)["primary"].value_counts()
    print(f"{out}: {args.n} images in {time.perf_counter() - start:.1f}s")
    print(", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
