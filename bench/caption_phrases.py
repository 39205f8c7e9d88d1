"""The caption explained and the whole photo, measured on a bundle (default the demo's) over a held-out world.

    python bench/caption_phrases.py --bundle checkpoints/demo --n 40 --seed 7 --repeats 3 --strips 20 --wide 120

Prints: (1) strict pointing of the caption's defect-phrase maps (the map's peak pixel inside the true mask of
the defect the phrase names, dilated by half a patch) beside the chance of a random peak and the whole-caption
map's; (2) a wide strip of healthy items with one defective item at the right end, in the tiles and center
views: the verdict, the top description and whether its map's peak lands on that item, then the same over
--strips strips of other seeds (one strip is a coin flip), and the control: as many strips of six healthy items;
(3) one item in a 4:3 photo in each view (--wide items): the verdicts, healthy and defective; (4) the Inspect
cost with and without caption maps. Asserts nothing about speed.
"""
import argparse
import statistics
import time

import cv2
import numpy as np

from demo.world import item_rng, render_sample, render_strip, widen_to_4_by_3
from models.inspector import Inspector
from utils.plot import map_to_image


def strict_hit(heatmap, mask, region, patch_px):
    """The map's peak pixel (bilinear on the photo) inside the mask dilated by half a patch; and the chance of
    that for a peak drawn uniformly over the pixels the map covers."""
    full = map_to_image(heatmap, mask.shape[::-1], region=region)
    radius = max(1, round(patch_px / 2))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    grown = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    covered = np.isfinite(full)
    peak = np.unravel_index(np.nanargmax(full), full.shape)
    return bool(grown[peak]), float(grown[covered].mean())


def pointing(inspector, n, seed):
    """Defect phrases naming a true defect: hits, chance; and the whole-caption map on all the item's defects."""
    phrase_hits, phrase_chance, caption_hits, caption_chance, absent, images = [], [], [], [], 0, 0
    for index in range(n):
        sample = render_sample(item_rng(seed, index))
        if not sample.masks:
            continue
        images += 1
        found = inspector.inspect(sample.image)
        patch_px = sample.image.size[0] / inspector.clip.patch_grid
        union = np.any(np.stack(list(sample.masks.values())), axis=0)
        hit, chance = strict_hit(found.caption_map, union, found.region, patch_px)
        caption_hits.append(hit), caption_chance.append(chance)
        for phrase, heatmap in zip(found.phrases, found.phrase_maps):
            if phrase.role != "defect":
                continue
            if phrase.prompt not in sample.masks:
                absent += 1
                continue
            hit, chance = strict_hit(heatmap, sample.masks[phrase.prompt], found.region, patch_px)
            phrase_hits.append(hit), phrase_chance.append(chance)
    print(f"held-out world seed {seed}: {n} drawn, {images} with defects")
    print(f"  defect-phrase maps, strict pointing: {np.mean(phrase_hits):.3f} over {len(phrase_hits)} phrases "
          f"naming a true defect (random peak: {np.mean(phrase_chance):.3f}); {absent} phrases named an absent defect")
    print(f"  whole-caption map on all defects, strict pointing: {np.mean(caption_hits):.3f} over {len(caption_hits)} "
          f"images (random peak: {np.mean(caption_chance):.3f})")


def strip_test(inspector, seed):
    picture, (start, end), defects = render_strip(seed)
    print(f"strip {picture.size[0]}x{picture.size[1]}: 5 healthy items, then one with {defects} at x {start}-{end}")
    for view in ("tiles", "center"):
        found = inspector.inspect(picture, view=view)
        top, prob = found.top_k[0]
        full = map_to_image(found.maps[0], picture.size, region=found.region)
        peak_x = int(np.unravel_index(np.nanargmax(full), full.shape)[1])
        print(f"  {view} ({found.tiles} tiles): verdict {found.verdict.decision}, top '{top.text}' {prob:.3f}, "
              f"its map's peak at x {peak_x} ({'on' if start <= peak_x < end else 'not on'} the defective item); "
              f"caption '{found.caption}'")


def strips(inspector, seed, count):
    """The strip over `count` seeds (one strip is a coin flip): the share judged defective (fail), whose top
    description is a true defect of the item, and whose top map peaks on the item; chance for a peak: 1/6. Then
    the control, a strip of six healthy items per seed: the share judged defective (fail) and passed."""
    failed, named, landed = [], [], []
    for index in range(count):
        picture, (start, end), defects = render_strip(seed + index)
        found = inspector.inspect(picture, caption_map=False)
        full = map_to_image(found.maps[0], picture.size, region=found.region)
        peak_x = int(np.unravel_index(np.nanargmax(full), full.shape)[1])
        failed.append(found.verdict.decision == "fail")
        named.append(found.top_k[0][0].id in defects)
        landed.append(start <= peak_x < end)
    decisions = [inspector.inspect(render_strip(seed + index, defective=False)[0], caption_map=False).verdict.decision
                 for index in range(count)]
    print(f"strips of seeds {seed}-{seed + count - 1} (tiles view): judged defective {np.mean(failed):.2f}, top "
          f"description a true defect {np.mean(named):.2f}, top map's peak on the defective item {np.mean(landed):.2f} "
          f"(random peak: {1 / 6:.2f}), both {np.mean(np.logical_and(named, landed)):.2f}; the control, six healthy "
          f"items: judged defective {decisions.count('fail') / count:.2f}, passed {decisions.count('pass') / count:.2f}")


def wide_photos(inspector, seed, n):
    """One item in a 4:3 photo (a rendered item widened with its own border, like a landscape phone shot), in
    each view, beside the square photo: the shares passed, failed and sent to review, healthy and defective."""
    decisions = {}
    for index in range(n):
        sample = render_sample(item_rng(seed, index))
        wide = widen_to_4_by_3(sample.image)
        kind = "defective" if sample.masks else "healthy"
        for name, picture, view in (("square photo", sample.image, "tiles"), ("4:3, tiles", wide, "tiles"),
                                    ("4:3, center", wide, "center"), ("4:3, letterbox", wide, "letterbox")):
            found = inspector.inspect(picture, view=view, caption_map=False)
            decisions.setdefault((kind, name), []).append(found.verdict.decision)
    print(f"one item per photo, world seed {seed}, {n} items:")
    for (kind, name), said in decisions.items():
        print(f"  {kind:9} {name:15} ({len(said)}): " + ", ".join(f"{d} {said.count(d) / len(said):.2f}"
                                                               for d in ("pass", "fail", "review")))


def cost(inspector, seed, repeats):
    """Median ms of one Inspect with and without caption maps (greedy captions; interleaved runs)."""
    pictures = [render_sample(item_rng(seed, i)).image for i in range(3)]
    times = {True: [], False: []}
    inspector.inspect(pictures[0])  # warm-up
    for _ in range(repeats):
        for picture in pictures:
            for with_maps in (False, True):
                start = time.perf_counter()
                inspector.inspect(picture, caption_map=with_maps)
                times[with_maps].append(1000 * (time.perf_counter() - start))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"Inspect cost ({len(times[True])} runs each): {off:.0f} ms without caption maps, {on:.0f} ms with "
          f"(whole caption + phrase maps): {on / off:.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo")
    parser.add_argument("--n", type=int, default=40, help="held-out world images drawn (healthy ones skipped)")
    parser.add_argument("--seed", type=int, default=7, help="held-out world seed")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds over 3 images (0: no timing)")
    parser.add_argument("--strips", type=int, default=20, help="strips measured, of seeds from --seed on")
    parser.add_argument("--wide", type=int, default=120, help="items shown in a 4:3 photo in each view (0: none)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    inspector = Inspector.load(args.bundle, device=args.device)
    pointing(inspector, args.n, args.seed)
    strip_test(inspector, args.seed)
    if args.strips:
        strips(inspector, args.seed, args.strips)
    if args.wide:
        wide_photos(inspector, args.seed, args.wide)
    if args.repeats:
        cost(inspector, args.seed, args.repeats)


if __name__ == "__main__":
    main()
