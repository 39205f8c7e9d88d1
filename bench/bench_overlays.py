"""Median time to draw k=5 individual overlays + the combined one for a 640x480 photo with 7x7 maps."""
import statistics
import time

import numpy as np

from utils.plot import combined_overlay, individual_overlay, title_for

RUNS = 20
K = 5


def median_ms(work, runs=RUNS):
    work()  # warm the colour tables and fonts
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    maps = [rng.random((7, 7)).astype(np.float32) for _ in range(K)]
    labels = ["green mold", "blue mold", "bruise", "dark spots", "fresh"]
    probs = [0.42, 0.23, 0.17, 0.11, 0.07]

    def individuals():
        return [individual_overlay(photo, m, title_for(l, p)) for m, l, p in zip(maps, labels, probs)]

    def combined():
        return combined_overlay(photo, maps, labels, probs, threshold=0.5, alpha_by_prob=True)

    def everything():
        return individuals(), combined()

    print(f"640x480 photo, {K} maps of 7x7, median of {RUNS} runs")
    print(f"{K} individual overlays: {median_ms(individuals):7.1f} ms")
    print(f"combined overlay:      {median_ms(combined):7.1f} ms")
    print(f"all together:          {median_ms(everything):7.1f} ms  (target <= 150 ms)")


if __name__ == "__main__":
    main()
