"""The whole photo: CLIP sees one square, so a wide, tall or large photo is covered by overlapping square tiles.

Each tile is preprocessed like a photo of its own; the probabilities are aggregated so that a defect seen in
any tile counts (a defect prompt takes its largest probability over the tiles, a healthy prompt its smallest,
then they are renormalized), and the tiles' maps are stitched back in the photo's own coordinates.
"""
import math

import cv2
import numpy as np

VIEWS = ("tiles", "center", "letterbox")
MIN_OVERLAP = 0.25  # neighbouring tiles share at least this share of a side: an item cut by one edge is whole in the next
STITCH_CELLS = 4  # stitched map pixels per patch-grid cell along a side: fine enough to place tiles, cheap to draw


def tile_starts(length, side, min_overlap=MIN_OVERLAP):
    """Evenly spaced offsets of `side`-long tiles covering [0, length), neighbours overlapping >= min_overlap."""
    if side >= length:
        return [0]
    count = math.ceil((length - side) / (side * (1 - min_overlap))) + 1
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def tile_boxes(width, height, side=0):
    """(left, top, right, bottom) of every square tile of the photo, row by row; side 0 = the short side."""
    side = min(width, height) if side <= 0 else min(side, width, height)
    return [(left, top, left + side, top + side)
            for top in tile_starts(height, side) for left in tile_starts(width, side)]


def aggregate(tile_probs, healthy):
    """[T, P] per-tile probabilities -> [P]: a defect seen in any tile counts, a healthy prompt only as much
    as its least healthy tile allows; renormalized to sum 1. `healthy` [P] marks the healthy prompts."""
    tile_probs = np.asarray(tile_probs, dtype=np.float64)
    healthy = np.asarray(healthy, dtype=bool)
    merged = np.where(healthy, tile_probs.min(axis=0), tile_probs.max(axis=0))
    return merged / merged.sum()


def most_defective(tile_probs, healthy):
    """Index of the tile with the least healthy probability mass (the one the caption describes)."""
    return int(np.asarray(tile_probs)[:, np.asarray(healthy, dtype=bool)].sum(axis=1).argmin())


def stitch(tile_maps, boxes, size, weights=None):
    """Tile maps [T, k, g, g] (each on its box) -> [k, h, w] over the whole photo of `size` (width, height),
    scaled so one grid cell is STITCH_CELLS pixels. Each tile's maps are scaled by `weights` [T, k] (how
    strongly that tile shows the prompt, e.g. its probability over the largest); overlaps keep the maximum;
    every stitched map is rescaled to [0, 1]."""
    tile_maps = np.asarray(tile_maps, dtype=np.float32)
    count, k, grid = tile_maps.shape[:3]
    weights = np.ones((count, k), np.float32) if weights is None else np.asarray(weights, np.float32)
    side = boxes[0][2] - boxes[0][0]
    scale = STITCH_CELLS * grid / side
    width, height = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    cells = max(1, round(side * scale))
    out = np.zeros((k, height, width), np.float32)
    for maps, box, weight in zip(tile_maps, boxes, weights):
        left, top = min(round(box[0] * scale), width - cells), min(round(box[1] * scale), height - cells)
        for index in range(k):
            resized = cv2.resize(maps[index], (cells, cells), interpolation=cv2.INTER_LINEAR) * weight[index]
            region = out[index, top:top + cells, left:left + cells]
            np.maximum(region, resized[:region.shape[0], :region.shape[1]], out=region)
    peaks = out.reshape(k, -1).max(axis=1)[:, None, None]
    return np.where(peaks > 0, out / np.maximum(peaks, 1e-12), 0.0).astype(np.float32)


def letterbox(picture, fill=(124, 116, 104)):
    """The photo centred on a square of `fill` (CLIP's mean colour), so nothing is cropped; and its box there."""
    from PIL import Image

    width, height = picture.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), fill)
    left, top = (side - width) // 2, (side - height) // 2
    square.paste(picture, (left, top))
    return square, (left, top, left + width, top + height)


def crop_letterbox(maps, box, side):
    """[k, g, g] maps of a letterboxed square of `side` -> [k, h, w] over the photo's own box within it."""
    maps = np.asarray(maps, dtype=np.float32)
    grid = maps.shape[-1]
    scale = STITCH_CELLS * grid / side
    full = np.stack([cv2.resize(m, (round(side * scale),) * 2, interpolation=cv2.INTER_LINEAR) for m in maps])
    left, top, right, bottom = (round(v * scale) for v in box)
    return full[:, top:max(bottom, top + 1), left:max(right, left + 1)]
