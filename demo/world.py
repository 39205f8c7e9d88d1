"""Seeded synthetic product photos with ground truth: fruit-like objects, drawn defects, pixel masks.

    python -m demo.world --out checkpoints/world --n 2000 --seed 0 --size 128

The offline demo trains its small CLIP on these images and measures explanations against the masks.
Everything is drawn with numpy + OpenCV at the target size, so a thousand 128 px images take seconds.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from utils.files import atomic_write, read_json, write_json
from utils.options import option

DEFECT_KINDS = (
    "green_mold", "blue_mold", "white_mold", "black_mold", "dark_spots",
    "bruise", "rot", "wrinkles", "cut", "scar",
)
HEALTHY = "healthy"
FRUITS = ("apple", "orange", "tomato", "pear", "banana", "lemon")
# Probability of 0, 1, 2, 3 defects on one item.
DEFAULT_DEFECT_PROBS = (0.25, 0.50, 0.17, 0.08)
# Bump when the drawing changes, so cached worlds from older code are rebuilt.
GENERATOR_VERSION = 1
JPEG_QUALITY = 92

Color = tuple[float, float, float]


@dataclass(frozen=True)
class WorldOptions:
    """How hard a world is to explain; the defaults draw the original world, item for item."""
    defect_scale: float = option(1.0, "defect sizes scale with this fraction of the item's radius")
    faintest: float = option(1.0, "each defect is blended in at an opacity drawn from [faintest, 1]")
    items_max: int = option(1, "items per photo: 1 to this many; defects land on one random item each")
    item_scale: float = option(0.7, "size of each item when a photo holds several")
    speckles: float = option(0.0, "probability of natural lenticel speckles on an item (not a defect)")
    sticker: float = option(0.0, "probability of a produce sticker on an item")
    leaf: float = option(0.0, "probability of a leaf next to or over an item")
    stems: bool = option(False, "a stem on every kind of fruit (not only apples and pears)")


# the explanation benchmark's harder world: smaller and fainter defects, two items, distractors; the
# un-coached reference CLIP still names the primary defect of about a third of the defect items
HARD = WorldOptions(defect_scale=0.85, faintest=0.7, items_max=2, item_scale=0.7, speckles=0.5, sticker=0.4,
                    leaf=0.4, stems=True)


@dataclass
class Sample:
    image: Image.Image
    fruit: str
    defects: list[str]
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        """The defect covering the most pixels (first listed wins a tie), or "healthy"."""
        if not self.defects:
            return HEALTHY
        return max(self.defects, key=lambda d: int(self.masks[d].sum()))


@dataclass
class _Fruit:
    """Geometry of the drawn object; u runs along its axis, v across it (both roughly in [-1, 1])."""
    kind: str
    alpha: np.ndarray   # soft coverage in [0, 1]
    inside: np.ndarray  # boolean silhouette
    r: np.ndarray       # normalized radius: 0 at the centre, 1 on the outline
    u: np.ndarray
    vn: np.ndarray      # across-axis position normalized to [-1, 1] at every u (meridians)
    radius: float       # typical half size in pixels; defects scale with it
    top: tuple[float, float]  # pixel position of the stem end
    axis: float         # direction from the centre to the stem end, radians


@dataclass
class _Surface:
    """What defects paint on: albedo (H,W,3), gloss (H,W) scaling the highlight, bump (H,W) height."""
    albedo: np.ndarray
    gloss: np.ndarray
    bump: np.ndarray

    def copy(self) -> "_Surface":
        return _Surface(self.albedo.copy(), self.gloss.copy(), self.bump.copy())


# small drawing helpers

def _noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    scale = cells / max(h, w)
    grid = rng.uniform(-1, 1, (max(2, round(h * scale) + 1), max(2, round(w * scale) + 1)))
    return cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _grain(rng: np.random.Generator, h: int, w: int, sigma: float = 0.0) -> np.ndarray:
    """Per-pixel noise (speckle, fuzz), optionally softened."""
    g = rng.standard_normal((h, w)).astype(np.float32)
    if sigma:
        g = cv2.GaussianBlur(g, (0, 0), sigma)
        g /= g.std() + 1e-6  # keep unit spread whatever the softening
    return g


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mix(dst: np.ndarray, color, amount: np.ndarray) -> None:
    """In place: dst = dst*(1-a) + color*a, with a per-pixel amount."""
    a = amount[..., None]
    dst *= 1 - a
    dst += np.asarray(color, np.float32) * a


def _jitter(rng: np.random.Generator, color: Color, spread: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(color, np.float32) * rng.uniform(1 - spread, 1 + spread, 3), 0, 1)


def _polyline_coverage(shape, paths: Sequence[np.ndarray], thickness: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of open polylines given as float (N, 2) pixel points."""
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(p * 16).astype(np.int32) for p in paths]
    cv2.polylines(canvas, pts, False, 255, max(1, int(thickness)), cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255


def _curve(start, direction: float, length: float, bend: float, n: int = 12) -> np.ndarray:
    """Points along a gently turning path: heading changes by `bend` radians over its length."""
    t = np.linspace(0, 1, n)
    heading = direction + bend * t
    step = length / (n - 1)
    dx, dy = np.cos(heading) * step, np.sin(heading) * step
    xs = start[0] + np.concatenate([[0], np.cumsum(dx[:-1])])
    ys = start[1] + np.concatenate([[0], np.cumsum(dy[:-1])])
    return np.stack([xs, ys], 1)


def _dist(h: int, w: int, center) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - center[0], ys - center[1]
    return np.sqrt(dx * dx + dy * dy), dx, dy


# fruit shapes and skins

_PALETTES: dict[str, list[tuple[Color, Color]]] = {
    # (base skin colour, secondary colour for streaks / blush)
    "apple": [((0.72, 0.09, 0.08), (0.88, 0.62, 0.22)), ((0.80, 0.17, 0.10), (0.95, 0.80, 0.30)),
              ((0.56, 0.76, 0.22), (0.80, 0.82, 0.32)), ((0.88, 0.76, 0.26), (0.85, 0.35, 0.15)),
              ((0.62, 0.10, 0.14), (0.40, 0.05, 0.08))],
    "orange": [((0.96, 0.55, 0.10), (0.98, 0.65, 0.15)), ((0.93, 0.47, 0.07), (0.96, 0.58, 0.12))],
    "tomato": [((0.84, 0.12, 0.08), (0.92, 0.30, 0.12)), ((0.90, 0.25, 0.09), (0.95, 0.45, 0.15))],
    "pear": [((0.66, 0.76, 0.26), (0.85, 0.82, 0.35)), ((0.82, 0.76, 0.30), (0.90, 0.60, 0.25)),
             ((0.70, 0.52, 0.26), (0.78, 0.62, 0.34)), ((0.62, 0.18, 0.14), (0.80, 0.45, 0.20))],
    "banana": [((0.96, 0.83, 0.24), (0.90, 0.88, 0.35)), ((0.86, 0.86, 0.30), (0.70, 0.80, 0.25))],
    "lemon": [((0.97, 0.88, 0.24), (0.99, 0.93, 0.40)), ((0.56, 0.76, 0.20), (0.70, 0.82, 0.30))],
}
# (shininess exponent, highlight strength)
_GLOSS = {"apple": (30, 0.55), "orange": (12, 0.25), "tomato": (45, 0.75),
          "pear": (15, 0.3), "banana": (10, 0.2), "lemon": (14, 0.3)}


def _fruit_axes(rng: np.random.Generator, kind: str, s: int) -> tuple[float, float, float]:
    """Half-length a along the axis, half-width b across it, and the axis angle, for a kind of fruit."""
    upright = -np.pi / 2  # the u axis points up the image, towards the stem
    if kind in ("apple", "orange", "tomato"):
        b = s * rng.uniform(0.24, 0.35)
        a = b * {"apple": rng.uniform(0.90, 1.0), "orange": rng.uniform(0.96, 1.04),
                 "tomato": rng.uniform(0.78, 0.9)}[kind]
        angle = upright + rng.normal(0, 0.25) if kind != "orange" else rng.uniform(-np.pi, np.pi)
    elif kind == "pear":
        b, angle = s * rng.uniform(0.18, 0.24), upright + rng.normal(0, 0.4)
        a = b * rng.uniform(1.35, 1.6)
    elif kind == "banana":
        b, a = s * rng.uniform(0.10, 0.13), s * rng.uniform(0.36, 0.44)
        angle = rng.uniform(-0.6, 0.6) + rng.choice([0.0, np.pi])
    else:  # lemon
        b, angle = s * rng.uniform(0.19, 0.26), rng.uniform(-np.pi, np.pi)
        a = b * rng.uniform(1.25, 1.45)
    return a, b, angle


def _fruit_geometry(rng: np.random.Generator, kind: str, h: int, w: int, scale: float = 1.0,
                    center=None) -> _Fruit:
    a, b, angle = _fruit_axes(rng, kind, min(h, w) * scale)
    extent = max(a, b) * 0.35
    mx, my = (w / 2, h / 2) if center is None else center
    cx = mx + np.clip(rng.normal(0, 0.08 * w * scale), -extent, extent)
    cy = my + np.clip(rng.normal(0, 0.08 * h * scale), -extent, extent)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xs - cx, ys - cy
    c, si = np.cos(angle), np.sin(angle)
    along, across = dx * c + dy * si, -dx * si + dy * c
    u, v = along / a, across / b
    u2 = np.minimum(u * u, 0.999)
    if kind == "pear":
        r, vn = _pear(along, across, a, b, rng.uniform(0.55, 0.68))
    else:
        if kind == "banana":
            v = v - rng.uniform(0.22, 0.32) * (a / b) * (u2 - 0.33) * rng.choice([-1, 1])
            width = np.sqrt((1 - u2 ** 2.5) / (1 - u2)) * (1 - 0.35 * u2)  # blunt body, tapered tips
        elif kind == "lemon":
            width = (1 - u2) ** 0.22  # pointed ends
        else:
            width = np.ones_like(u)
        r = np.sqrt(u * u + (v / width) ** 2)
        vn = np.clip(v / (width * np.sqrt(1 - u2)), -1, 1)
    if kind in ("apple", "orange", "tomato"):
        phi = np.arctan2(v, u)
        wobble = sum(rng.uniform(-0.015, 0.015) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in (2, 3, 5))
        if kind == "apple":  # shoulders wider than the base, a dimple at the stem
            wobble = wobble + 0.05 * np.cos(phi) - 0.07 * np.exp(-(phi / 0.28) ** 2)
        if kind == "tomato":
            wobble = wobble + 0.012 * np.cos(5 * phi) - 0.03 * np.exp(-(phi / 0.35) ** 2)
        r = r / (1 + wobble)
    gy, gx = np.gradient(r)
    grad = np.sqrt(gx * gx + gy * gy) + 1e-6
    alpha = np.clip((1 - r) / grad + 0.5, 0, 1).astype(np.float32)
    top = (cx + c * a * 0.95, cy + si * a * 0.95)
    return _Fruit(kind, alpha, alpha > 0.5, r.astype(np.float32), u.astype(np.float32),
                  vn.astype(np.float32), float(min(np.sqrt(a * b), 1.6 * min(a, b))), top, float(angle))


def _pear(along, across, a, b, neck):
    """Smooth union of a large body circle and a smaller neck circle along the axis."""
    rb, rt = b, b * neck
    sd1 = np.hypot(along + a - rb, across) - rb
    sd2 = np.hypot(along - a + rt, across) - rt
    k = 0.9 * b  # wide blend: a concave waist instead of two touching balls
    t = np.clip(0.5 + 0.5 * (sd2 - sd1) / k, 0, 1)
    sd = sd2 * (1 - t) + sd1 * t - k * t * (1 - t)
    local = rb + (rt - rb) * np.clip((along + a - rb) / (2 * a - rb - rt), 0, 1)
    return 1 + sd / rb, np.clip(across / local, -1, 1)


def _skin(rng: np.random.Generator, fruit: _Fruit) -> _Surface:
    h, w = fruit.r.shape
    base, second = _PALETTES[fruit.kind][rng.integers(len(_PALETTES[fruit.kind]))]
    base, second = _jitter(rng, base), _jitter(rng, second)
    albedo = np.empty((h, w, 3), np.float32)
    albedo[:] = base
    _mix(albedo, second, np.clip(_noise(rng, h, w, 3) * 0.6 + rng.uniform(-0.3, 0.2), 0, 1) * 0.6)
    if fruit.kind == "apple":  # streaks along the meridians
        knots = rng.uniform(0, 1, 40).astype(np.float32)
        streak = np.interp(fruit.vn, np.linspace(-1, 1, 40), knots).astype(np.float32)
        _mix(albedo, second, streak * rng.uniform(0.2, 0.5))
    if fruit.kind == "pear":  # fine russet
        albedo *= (1 + 0.06 * _grain(rng, h, w, 0.6))[..., None]
    if fruit.kind in ("orange", "lemon"):  # dimpled peel
        albedo *= (1 + 0.07 * _grain(rng, h, w, 0.7))[..., None]
    if fruit.kind == "banana":  # brown tips and faint ridges
        tips = _smoothstep(0.82, 0.97, np.abs(fruit.u))
        _mix(albedo, (0.35, 0.25, 0.10), tips * 0.9)
        albedo *= (1 - 0.05 * np.cos(fruit.vn * np.pi * 2.5) ** 2)[..., None]
    albedo *= (1 + 0.04 * _noise(rng, h, w, 6))[..., None]
    _, strength = _GLOSS[fruit.kind]
    gloss = np.full((h, w), strength * rng.uniform(0.6, 1.3), np.float32)
    return _Surface(np.clip(albedo, 0, 1), gloss, np.zeros((h, w), np.float32))


# defects
# Each painter gets (rng, surface, fruit, centre) and returns the defect's coverage in [0, 1].

def _mold(color: Color, rim: Color | None, fluffy: float) -> Callable:
    def paint(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
        h, w = fruit.r.shape
        R = fruit.radius
        d, _, _ = _dist(h, w, center)
        radius = R * rng.uniform(0.3, 0.55)
        lumps = max(h, w) / (radius * 0.6)  # a few irregular lobes per colony
        field_ = d / radius + 0.4 * _noise(rng, h, w, lumps) + 0.1 * _grain(rng, h, w, 0.5)
        for _ in range(rng.integers(0, 3)):  # satellite colonies
            ang, dd = rng.uniform(0, 2 * np.pi), radius * rng.uniform(0.9, 1.4)
            sat, _, _ = _dist(h, w, (center[0] + dd * np.cos(ang), center[1] + dd * np.sin(ang)))
            field_ = np.minimum(field_, sat / (radius * rng.uniform(0.25, 0.45)) + 0.1 * _grain(rng, h, w))
        cov = _smoothstep(1.05, 0.75, field_)
        fuzz = 0.6 * _grain(rng, h, w, 0.6) + 0.4 * _noise(rng, h, w, max(h, w) / 3)
        core = _jitter(rng, color, 0.08)
        tone = np.clip(1 + 0.22 * fuzz, 0.5, 1.5)[..., None] * core
        if rim is not None:  # paler growing edge, as on Penicillium colonies
            ring = (0.7 * _smoothstep(0.6, 0.9, field_))[..., None]
            tone = tone * (1 - ring) + np.asarray(rim, np.float32) * ring
        a = cov[..., None]
        surf.albedo[:] = surf.albedo * (1 - a) + np.clip(tone, 0, 1) * a
        surf.gloss *= 1 - cov
        surf.bump += cov * fluffy * (1 + 0.4 * fuzz)
        return cov
    return paint


def _dark_spots(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    cov = np.zeros((h, w), np.float32)
    spread = R * rng.uniform(0.3, 0.55)
    color = _jitter(rng, (0.13, 0.08, 0.05), 0.2)
    for _ in range(rng.integers(3, 10)):
        ang, rad = rng.uniform(0, 2 * np.pi), spread * np.sqrt(rng.uniform(0, 1))
        c = (center[0] + rad * np.cos(ang), center[1] + rad * np.sin(ang))
        d, _, _ = _dist(h, w, c)
        size = max(1.1, R * rng.uniform(0.05, 0.11))
        cov = np.maximum(cov, _smoothstep(size + 0.8, size - 0.6, d))
    _mix(surf.albedo, color, cov * 0.92)
    surf.gloss *= 1 - 0.5 * cov
    surf.bump -= 0.02 * cov
    return cov


def _bruise(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    _, dx, dy = _dist(h, w, center)
    ang = rng.uniform(0, np.pi)
    rx, ry = R * rng.uniform(0.45, 0.7), R * rng.uniform(0.35, 0.55)
    ex = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
    ey = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
    field_ = np.sqrt(ex * ex + ey * ey) + 0.15 * _noise(rng, h, w, 5)
    cov = _smoothstep(1.1, 0.45, field_)
    strength = rng.uniform(0.75, 0.95) * (1 + 0.1 * _noise(rng, h, w, 10))
    darker = surf.albedo * np.asarray([0.42, 0.32, 0.24], np.float32) + np.asarray([0.08, 0.05, 0.02], np.float32)
    a = (cov * strength)[..., None]
    surf.albedo[:] = surf.albedo * (1 - a) + darker * a
    surf.gloss *= 1 - 0.4 * cov
    surf.bump -= 0.06 * cov
    return cov


def _rot(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    d, _, _ = _dist(h, w, center)
    radius = R * rng.uniform(0.3, 0.55)
    field_ = d / radius + 0.12 * _noise(rng, h, w, 7)
    cov = _smoothstep(1.05, 0.85, field_)
    outer = _jitter(rng, (0.55, 0.34, 0.14), 0.1)
    inner = _jitter(rng, (0.20, 0.11, 0.05), 0.15)
    rings = 0.5 + 0.5 * np.cos(field_ * np.pi * 2 * rng.uniform(2.0, 3.5))
    t = np.clip(field_, 0, 1)[..., None]
    tone = inner * (1 - t) + outer * t
    tone *= (1 - 0.22 * rings * (field_ < 1))[..., None]
    tone *= (1 + 0.08 * _grain(rng, h, w, 0.6))[..., None]
    a = cov[..., None]
    surf.albedo[:] = surf.albedo * (1 - a) + np.clip(tone, 0, 1) * a
    surf.gloss *= 1 - 0.7 * cov
    surf.bump -= 0.12 * cov * (1 - np.clip(field_, 0, 1))
    return cov


def _wrinkles(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    area = R * rng.uniform(0.4, 0.65)
    heading = rng.uniform(0, np.pi)
    along = np.array([np.cos(heading), np.sin(heading)])
    normal = np.array([-along[1], along[0]])
    spacing = max(2.0, min(h, w) / 128 * rng.uniform(2.5, 3.5))
    paths = []
    for off in np.arange(-area, area, spacing):  # a family of near-parallel wavy folds
        half = np.sqrt(max(area * area - off * off, 0)) * rng.uniform(0.5, 1.0)
        if half < 2:
            continue
        t = np.linspace(-half, half, 10)
        wave = rng.uniform(0.5, 1.5) * np.sin(t / area * rng.uniform(3, 6) + rng.uniform(0, 6.3))
        shift = t[:, None] * along + (off + rng.normal(0, 0.4) + wave)[:, None] * normal
        paths.append(np.asarray(center) + shift)
    thick = 1 if min(h, w) < 192 else 2
    lines = _polyline_coverage((h, w), paths, thick)
    shifted = _polyline_coverage((h, w), [p + normal for p in paths], thick)
    k = 2 * round(min(h, w) / 64) + 1  # fill the gaps between neighbouring folds
    region = cv2.dilate((lines > 0.3).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    dull = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 1.5)
    surf.albedo *= (1 - 0.15 * dull)[..., None]  # shrivelled skin is duller
    _mix(surf.albedo, (0.22, 0.14, 0.07), lines * 0.65)
    surf.albedo *= (1 + 0.3 * np.clip(shifted - lines, 0, 1))[..., None]
    surf.gloss *= 1 - 0.7 * dull
    surf.bump -= 0.04 * lines
    return region.astype(np.float32)


def _cut(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    length, heading = R * rng.uniform(0.7, 1.3), rng.uniform(0, np.pi)
    start = np.array(center) - 0.5 * length * np.array([np.cos(heading), np.sin(heading)])
    path = _curve(start, heading, length, rng.uniform(-0.4, 0.4))
    width = max(2, round(min(h, w) / 128 * rng.uniform(2.0, 3.5)))
    edge = _polyline_coverage((h, w), [path], width + 2)
    flesh = _polyline_coverage((h, w), [path], width)
    _mix(surf.albedo, (0.30, 0.18, 0.08), edge * 0.8)
    _mix(surf.albedo, _jitter(rng, (0.97, 0.93, 0.74), 0.05), flesh)
    surf.gloss = np.maximum(surf.gloss * (1 - edge), 0.6 * flesh)
    surf.bump -= 0.08 * flesh
    return edge


def _scar(rng, surf: _Surface, fruit: _Fruit, center) -> np.ndarray:
    h, w = fruit.r.shape
    R = fruit.radius
    _, dx, dy = _dist(h, w, center)
    ang = rng.uniform(0, np.pi)
    along = dx * np.cos(ang) + dy * np.sin(ang)
    across = -dx * np.sin(ang) + dy * np.cos(ang)
    length, width = R * rng.uniform(0.45, 0.85), R * rng.uniform(0.1, 0.18) + 1.0
    across = across - rng.uniform(-0.25, 0.25) * along * along / length  # slight curve
    field_ = np.sqrt((along / length) ** 4 + (across / width) ** 2)
    field_ += 0.35 * _noise(rng, h, w, 18) + 0.12 * _grain(rng, h, w)  # ragged edge
    cov = _smoothstep(1.0, 0.8, field_)
    tan = _jitter(rng, (0.86, 0.76, 0.56), 0.07)
    rough = np.clip(1 + 0.28 * _grain(rng, h, w, 0.5), 0.5, 1.3)[..., None]
    a = cov[..., None]
    surf.albedo[:] = surf.albedo * (1 - a) + np.clip(tan * rough, 0, 1) * a
    surf.gloss *= 1 - cov
    surf.bump += 0.03 * cov * rough[..., 0]
    return cov


_PAINTERS: dict[str, Callable] = {
    "green_mold": _mold((0.34, 0.56, 0.18), (0.78, 0.84, 0.66), 0.08),
    "blue_mold": _mold((0.22, 0.40, 0.68), (0.78, 0.84, 0.88), 0.08),
    "white_mold": _mold((0.94, 0.94, 0.90), None, 0.14),
    "black_mold": _mold((0.07, 0.07, 0.06), (0.20, 0.21, 0.17), 0.06),
    "dark_spots": _dark_spots,
    "bruise": _bruise,
    "rot": _rot,
    "wrinkles": _wrinkles,
    "cut": _cut,
    "scar": _scar,
}


def _place(rng: np.random.Generator, fruit: _Fruit, taken: list) -> tuple[float, float]:
    """A point well inside the fruit, away from earlier defects when possible."""
    ys, xs = np.nonzero(fruit.inside & (fruit.r < 0.62))
    if len(xs) == 0:  # a tiny image: any pixel of the fruit will do
        ys, xs = np.nonzero(fruit.alpha > 0)
    best, best_gap = None, -1.0
    for _ in range(8):
        i = rng.integers(len(xs))
        p = (float(xs[i]), float(ys[i]))
        gap = min((np.hypot(p[0] - q[0], p[1] - q[1]) for q in taken), default=np.inf)
        if gap > fruit.radius * 0.8:
            return p
        if gap > best_gap:
            best, best_gap = p, gap
    return best


def _paint_defects(rng, surf: _Surface, fruit: _Fruit, kinds: Sequence[str],
                   options: WorldOptions = WorldOptions()) -> dict[str, np.ndarray]:
    min_px = max(4, fruit.r.size // 2000)
    masks, taken = {}, []
    sized = fruit if options.defect_scale == 1 else replace(fruit, radius=fruit.radius * options.defect_scale)
    for kind in kinds:
        for _ in range(6):  # retry if the defect barely touched the fruit
            trial = surf.copy()
            center = _place(rng, fruit, taken)
            mask = (_PAINTERS[kind](rng, trial, sized, center) > 0.35) & fruit.inside
            if mask.sum() >= min_px:
                break
        if not mask.any():  # only on tiny images: leave out a defect that cannot be seen
            continue
        if options.faintest < 1:  # a faint defect: the same shape and mask, part of its colour and relief
            _blend(surf, trial, np.float32(rng.uniform(options.faintest, 1.0)))
        surf.albedo, surf.gloss, surf.bump = trial.albedo, trial.gloss, trial.bump
        masks[kind] = mask
        taken.append(center)
    return masks


def _blend(before: _Surface, after: _Surface, opacity) -> None:
    """In place: `after` keeps only `opacity` of its change from `before`."""
    after.albedo = before.albedo + opacity * (after.albedo - before.albedo)
    after.gloss = before.gloss + opacity * (after.gloss - before.gloss)
    after.bump = before.bump + opacity * (after.bump - before.bump)


# scene: background, light, camera

def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.choice(["flat", "gradient", "wood", "cloth", "check"])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    s = min(h, w)
    neutral = [(0.92, 0.92, 0.9), (0.8, 0.8, 0.78), (0.55, 0.56, 0.58), (0.85, 0.80, 0.70),
               (0.70, 0.78, 0.85), (0.25, 0.27, 0.30), (0.93, 0.88, 0.80), (0.60, 0.68, 0.62)]
    c1 = _jitter(rng, neutral[rng.integers(len(neutral))], 0.1)
    if kind == "flat":
        bg = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == "gradient":
        c2 = _jitter(rng, neutral[rng.integers(len(neutral))], 0.1)
        ang = rng.uniform(0, 2 * np.pi)
        t = ((xs * np.cos(ang) + ys * np.sin(ang)) / s * 0.7 + 0.5).clip(0, 1)[..., None]
        bg = c1 * (1 - t) + c2 * t
    elif kind == "wood":
        light = _jitter(rng, [(0.78, 0.60, 0.40), (0.62, 0.42, 0.25), (0.45, 0.30, 0.18)][rng.integers(3)])
        ang = rng.uniform(-0.3, 0.3) + rng.choice([0, np.pi / 2])
        pos = (xs * np.cos(ang) + ys * np.sin(ang)) / s
        warp = _noise(rng, h, w, 4) * 0.04
        grain = 0.5 + 0.5 * np.sin((pos + warp) * 2 * np.pi * rng.uniform(6, 14))
        bg = light * (1 - 0.22 * grain[..., None]) * (1 + 0.06 * _grain(rng, h, w, 1.0)[..., None])
    elif kind == "cloth":
        period = max(2.5, rng.uniform(2.2, 3.5) * s / 128)  # finer would alias into moire
        weave = 0.5 * (np.sin(xs * 2 * np.pi / period) * np.sin(ys * 2 * np.pi / period))
        c = _jitter(rng, [(0.85, 0.82, 0.75), (0.35, 0.45, 0.65), (0.6, 0.6, 0.6), (0.8, 0.7, 0.55)]
                    [rng.integers(4)])
        bg = c * (1 + 0.08 * weave[..., None]) * (1 + 0.05 * _noise(rng, h, w, 5)[..., None])
    else:  # gingham tablecloth
        cell = rng.uniform(10, 20) * s / 128
        ang = rng.uniform(-0.2, 0.2)
        px, py = xs * np.cos(ang) + ys * np.sin(ang), -xs * np.sin(ang) + ys * np.cos(ang)
        stripes = ((px // cell) % 2 == 0).astype(np.float32) + ((py // cell) % 2 == 0)
        ink = _jitter(rng, [(0.75, 0.2, 0.2), (0.2, 0.35, 0.7), (0.3, 0.55, 0.35)][rng.integers(3)])
        tint = (stripes * 0.45)[..., None]
        bg = (0.95 * (1 - tint) + ink * tint) * np.ones(3, np.float32)
        bg = cv2.GaussianBlur(bg.astype(np.float32), (0, 0), 0.6)
    if rng.random() < 0.3:  # table edge: a darker wall or floor behind
        edge = h * rng.uniform(0.05, 0.3) + (xs - w / 2) * rng.uniform(-0.15, 0.15)
        wall = _jitter(rng, neutral[rng.integers(len(neutral))], 0.1) * rng.uniform(0.4, 0.8)
        behind = _smoothstep(0.8, -0.8, ys - edge)[..., None]
        bg = bg * (1 - behind) + wall * behind
    return bg.astype(np.float32)


def _shade(rng, surf: _Surface, fruit: _Fruit, light: np.ndarray) -> np.ndarray:
    """Lambert + Blinn-Phong on a pseudo-3D height field (a dome over the silhouette plus bumps)."""
    height = np.sqrt(np.clip(1 - fruit.r ** 2, 0, 1)) * fruit.radius + surf.bump * fruit.radius
    gy, gx = np.gradient(height)
    norm = np.sqrt(gx * gx + gy * gy + 1)
    nx, ny, nz = -gx / norm, -gy / norm, 1 / norm
    diffuse = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    half = light + np.array([0, 0, 1.0])
    half /= np.linalg.norm(half)
    ndoth = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1)
    shin, _ = _GLOSS[fruit.kind]
    spec = surf.gloss * ndoth ** shin
    ambient = rng.uniform(0.3, 0.45)
    return surf.albedo * (ambient + (1 - ambient) * diffuse)[..., None] + spec[..., None]


def _light(rng: np.random.Generator) -> np.ndarray:
    az = rng.uniform(-np.pi * 0.9, -np.pi * 0.1)  # light mostly from above
    tilt = rng.uniform(0.35, 0.8)
    light = np.array([np.cos(az) * tilt, np.sin(az) * tilt, 1.0])
    return light / np.linalg.norm(light)


def _place_item(rng, img: np.ndarray, fruit: _Fruit, surf: _Surface, light: np.ndarray, stem: bool) -> np.ndarray:
    """Draw one item over `img` (its shadow, its shaded skin, its stem) and return the new picture."""
    h, w, _ = img.shape
    shift = -light[:2] / light[2] * fruit.radius * rng.uniform(0.15, 0.35)
    m = np.float32([[1, 0, shift[0]], [0, 1, shift[1] + fruit.radius * 0.1]])
    shadow = cv2.warpAffine(fruit.alpha, m, (w, h))
    shadow = cv2.GaussianBlur(shadow, (0, 0), fruit.radius * rng.uniform(0.15, 0.3))
    img = img * (1 - rng.uniform(0.3, 0.55) * shadow)[..., None]
    a = fruit.alpha[..., None]
    img = _shade(rng, surf, fruit, light) * a + img * (1 - a)
    if stem or fruit.kind in ("apple", "pear"):
        bend = fruit.axis + rng.normal(0, 0.3)
        length = min(h, w) * rng.uniform(0.06, 0.1) * (1 if fruit.kind in ("apple", "pear") else 0.5)
        path = _curve(np.array(fruit.top), bend, length, rng.uniform(-0.5, 0.5), 5)
        cov = _polyline_coverage((h, w), [path], max(1, round(min(h, w) / 96)))
        _mix(img, _jitter(rng, (0.33, 0.22, 0.10) if fruit.kind != "tomato" else (0.25, 0.45, 0.15)), cov)
    return img


# the harder settings (WorldOptions): several items, distractors that are not defects

def _layout(rng: np.random.Generator, n: int, w: int, h: int) -> list:
    """Item centres: one anywhere near the middle (None), two side by side, three in a rotated triangle."""
    if n == 1:
        return [None]
    if n == 2:
        spots = [(0.29, 0.5 + rng.uniform(-0.12, 0.12)), (0.71, 0.5 + rng.uniform(-0.12, 0.12))]
    else:
        turn = rng.uniform(0, 2 * np.pi)
        spots = [(0.5 + 0.25 * np.cos(turn + k * 2 * np.pi / 3), 0.5 + 0.25 * np.sin(turn + k * 2 * np.pi / 3))
                 for k in range(3)]
    return [(x * w, y * h) for x, y in spots]


def _speckle(rng, surf: _Surface, fruit: _Fruit) -> None:
    """Natural lenticels: many small pale (or dark) dots over the skin, painted before the defects."""
    h, w = fruit.r.shape
    ys, xs = np.nonzero(fruit.inside & (fruit.r < 0.9))
    if len(xs) == 0:
        return
    dots = np.zeros((h, w), np.float32)
    size = max(0.5, min(h, w) / 128 * rng.uniform(0.5, 0.9))
    for i in rng.integers(len(xs), size=rng.integers(25, 70)):
        d, _, _ = _dist(h, w, (xs[i] + rng.uniform(-0.5, 0.5), ys[i] + rng.uniform(-0.5, 0.5)))
        dots = np.maximum(dots, _smoothstep(size + 0.7, size - 0.3, d))
    tone = (0.93, 0.85, 0.62) if rng.random() < 0.7 else (0.25, 0.17, 0.09)
    _mix(surf.albedo, _jitter(rng, tone, 0.1), dots * rng.uniform(0.35, 0.6))


def _sticker(rng, img, fruit: _Fruit, avoid: np.ndarray) -> np.ndarray:
    """A produce sticker (an oval label with a printed line) on the item, away from its defects where it can;
    returns its coverage."""
    h, w = fruit.r.shape
    ys, xs = np.nonzero(fruit.inside & (fruit.r < 0.6))
    if len(xs) == 0:
        return np.zeros((h, w), np.float32)
    rx, ry = fruit.radius * rng.uniform(0.25, 0.35), fruit.radius * rng.uniform(0.17, 0.24)
    keep_out = cv2.dilate(avoid.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=int(rx) + 2) > 0
    for _ in range(12):
        i = rng.integers(len(xs))
        if not keep_out[ys[i], xs[i]]:
            break
    _, dx, dy = _dist(h, w, (xs[i], ys[i]))
    ang = rng.uniform(0, np.pi)
    ex = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
    ey = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
    cov = _smoothstep(1.05, 0.9, np.sqrt(ex * ex + ey * ey)) * fruit.alpha
    paper = [(0.95, 0.95, 0.92), (0.98, 0.85, 0.2), (0.25, 0.45, 0.8), (0.85, 0.2, 0.2)][rng.integers(4)]
    _mix(img, _jitter(rng, paper, 0.04), cov)
    ink = cov * (np.abs(ey) < 0.22) * (np.abs(ex) < 0.7) * (0.5 + 0.5 * np.sin(ex * rng.uniform(8, 14)) > 0.3)
    _mix(img, (0.1, 0.1, 0.12) if paper[0] > 0.5 else (0.95, 0.95, 0.95), ink * 0.8)
    return cov


def _leaf(rng, img, fruit: _Fruit) -> np.ndarray:
    """A leaf with a midrib, attached near the stem end and lying partly over the item; returns its coverage."""
    h, w = fruit.r.shape
    length = fruit.radius * rng.uniform(0.8, 1.3)
    heading = fruit.axis + rng.choice([-1, 1]) * rng.uniform(0.5, 1.6)
    base = np.array(fruit.top) - 0.15 * length * np.array([np.cos(heading), np.sin(heading)])
    _, dx, dy = _dist(h, w, base)
    u = (dx * np.cos(heading) + dy * np.sin(heading)) / length  # 0 at the base, 1 at the tip
    v = (-dx * np.sin(heading) + dy * np.cos(heading)) / (length * rng.uniform(0.18, 0.28))
    v = v - rng.uniform(-0.5, 0.5) * u * u  # a slight curl
    width = np.clip(np.sin(np.clip(u, 0, 1) * np.pi), 0, 1) ** 0.8
    cov = _smoothstep(1.05, 0.85, np.abs(v) / np.maximum(width, 1e-3)) * ((u > 0) & (u < 1))
    green = _jitter(rng, [(0.22, 0.45, 0.12), (0.30, 0.55, 0.18), (0.38, 0.58, 0.16)][rng.integers(3)], 0.1)
    shade = (1 + 0.18 * np.clip(v, -1, 1))[..., None]  # lit on one side of the midrib
    leaf = np.clip(green * shade * (1 + 0.05 * _grain(rng, h, w, 0.7))[..., None], 0, 1)
    a = cov[..., None]
    img[:] = img * (1 - a) + leaf * a
    _mix(img, green * 1.35, cov * (np.abs(v) < 0.12) * 0.7)  # midrib
    return cov.astype(np.float32)


def _distractors(rng, img, fruits, masks, options: WorldOptions) -> np.ndarray:
    """Stickers and leaves over the items, drawn into `img`; returns where they cover the picture."""
    covered = np.zeros(img.shape[:2], bool)
    for j, fruit in enumerate(fruits):
        defects_here = np.zeros(img.shape[:2], bool)
        for owner, mask in masks.values():
            defects_here |= mask & (owner == j)
        if rng.random() < options.sticker:
            covered |= _sticker(rng, img, fruit, defects_here) > 0.1
        if rng.random() < options.leaf:
            covered |= _leaf(rng, img, fruit) > 0.1
    return covered


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure, white balance, vignette, focus blur and sensor noise."""
    h, w, _ = img.shape
    img = img * rng.uniform(0.85, 1.15) * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    if rng.random() < 0.4:
        d, _, _ = _dist(h, w, (w / 2, h / 2))
        img = img * (1 - rng.uniform(0.1, 0.3) * (d / max(h, w)) ** 2 * 2)[..., None]
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 0.9) * min(h, w) / 128)
    img = img + rng.normal(0, rng.uniform(0.003, 0.018), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# public API

def _choose_defects(rng: np.random.Generator, defect_probs) -> list[str]:
    probs = np.asarray(DEFAULT_DEFECT_PROBS if defect_probs is None else defect_probs, float)
    count = int(rng.choice(len(probs), p=probs / probs.sum()))
    return [str(k) for k in rng.choice(DEFECT_KINDS, size=min(count, len(DEFECT_KINDS)), replace=False)]


def render_sample(rng: np.random.Generator, width: int = 128, height: int = 128,
                  defect_probs: Sequence[float] | None = None, options: WorldOptions = WorldOptions()) -> Sample:
    """Draw one product photo with its truth.

    defect_probs[k] is the probability of k distinct defects in the photo (default DEFAULT_DEFECT_PROBS).
    Scene, defects and camera draw from separate streams (the harder options from two more), so the same
    rng state with defect_probs=[1] gives the identical photo without its defects (a healthy twin for
    counterfactual checks; with stickers, which avoid defects, up to where a sticker lands). Masks hold only
    what can be seen: a defect under another item, a sticker or a leaf loses those pixels, and is left out
    when too little of it shows.
    """
    scene_rng, defect_rng, camera_rng, extra_rng, distractor_rng = rng.spawn(5)
    centers = _layout(extra_rng, int(extra_rng.integers(1, options.items_max + 1)), width, height)
    scale = 1.0 if len(centers) == 1 else options.item_scale
    fruits, surfs = [], []
    for center in centers:
        fruit = _fruit_geometry(scene_rng, str(scene_rng.choice(FRUITS)), height, width, scale, center)
        surfs.append(_skin(scene_rng, fruit))
        if extra_rng.random() < options.speckles:
            _speckle(extra_rng, surfs[-1], fruit)
        fruits.append(fruit)
    kinds = _choose_defects(defect_rng, defect_probs)
    owners = defect_rng.integers(len(fruits), size=len(kinds)) if len(fruits) > 1 else [0] * len(kinds)
    masks = {}
    for j, (fruit, surf) in enumerate(zip(fruits, surfs)):
        mine = [kind for kind, owner in zip(kinds, owners) if owner == j]
        masks.update({k: (j, m) for k, m in _paint_defects(defect_rng, surf, fruit, mine, options).items()})
    light = _light(scene_rng)
    img, top = _background(scene_rng, height, width), np.full((height, width), -1)
    for j, (fruit, surf) in enumerate(zip(fruits, surfs)):
        img = _place_item(scene_rng, img, fruit, surf, light, options.stems)
        top[fruit.alpha > 0.5] = j  # which item is in front at each pixel
    covered = _distractors(distractor_rng, img, fruits, masks, options)
    visible = _visible(masks, top, covered)
    primary_owner = masks[max(visible, key=lambda k: int(visible[k].sum()))][0] if visible else 0
    img = _camera(camera_rng, img)
    return Sample(Image.fromarray(img), fruits[primary_owner].kind, list(visible), visible)


def _visible(masks, top, covered) -> dict[str, np.ndarray]:
    """Each defect's pixels where its own item is in front and nothing covers it; a defect that lost pixels
    and keeps too few is left out (an unoccluded one is kept as drawn)."""
    visible = {}
    for kind, (owner, mask) in masks.items():
        seen = mask & (top == owner) & ~covered
        if seen.sum() == mask.sum() or seen.sum() >= max(4, mask.size // 4000):
            visible[kind] = seen
    return visible


def widen_to_4_by_3(picture: Image.Image) -> Image.Image:
    """An item's square photo widened to about 4:3 with its own border, like a landscape phone shot."""
    square = np.asarray(picture)
    side = (square.shape[1] * 4 // 3 - square.shape[1]) // 2
    return Image.fromarray(np.pad(square, ((0, 0), (side, side), (0, 0)), mode="edge"))


def render_strip(seed: int, count: int = 6, side: int = 128, defective: bool = True):
    """`count` healthy items side by side, the last one defective (or healthy too: a control), like a photo of a
    conveyor: (picture, the last item's x range, its defects)."""
    items = [render_sample(item_rng(seed, 1000 + i), side, side, defect_probs=[1]) for i in range(count)]
    index = 0
    while defective and not (bad := render_sample(item_rng(seed, 2000 + index), side, side,
                                                  defect_probs=[0, 1])).masks:
        index += 1
    items = items[:-1] + [bad] if defective else items
    picture = np.concatenate([np.asarray(s.image) for s in items], axis=1)
    return Image.fromarray(picture), ((count - 1) * side, count * side), items[-1].defects


def item_rng(seed: int, index: int) -> np.random.Generator:
    """Independent stream per item, so any item can be redrawn alone (resume, debugging)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _save_npz(path: Path, masks: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: v.astype(bool) for k, v in masks.items()})


def write_world(out_dir, n: int, seed: int = 0, width: int = 128, height: int = 128,
                progress: bool = True, options: WorldOptions = WorldOptions()) -> Path:
    """Write n samples as images/<primary>/<id>.jpg, masks/<id>.npz, labels.csv, then world.json.

    A directory already holding the same finished world is left untouched; an interrupted run of the
    same world resumes (items are drawn independently per index, so finished files are reused).
    """
    out = Path(out_dir)
    params = {"n": int(n), "seed": int(seed), "width": int(width), "height": int(height),
              "generator": GENERATOR_VERSION}
    if options != WorldOptions():  # the original world keeps its old world.json (no rebuild)
        params["options"] = asdict(options)
    if read_json(out / "world.json") == params:
        return out
    started = out / ".world.partial.json"
    if read_json(started) != params:
        ours = (out / "world.json").exists() or started.exists()
        if out.exists() and any(out.iterdir()) and not ours:
            raise FileExistsError(f"{out} is not empty and holds no synthetic world; refusing to overwrite")
        for name in ("images", "masks"):
            shutil.rmtree(out / name, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json(started, params)
    (out / "world.json").unlink(missing_ok=True)
    for cls in (HEALTHY, *DEFECT_KINDS):
        (out / "images" / cls).mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)

    rows = []
    for i in tqdm(range(n), desc="synthetic world", disable=not progress):
        sid = f"{i:06d}"
        sample = render_sample(item_rng(seed, i), width, height, options=options)
        rel = f"images/{sample.primary}/{sid}.jpg"
        if not (out / rel).exists():
            atomic_write(out / rel, lambda p: sample.image.save(p, format="JPEG", quality=JPEG_QUALITY))
        mask_path = out / "masks" / f"{sid}.npz"
        if not mask_path.exists():
            atomic_write(mask_path, lambda p: _save_npz(p, sample.masks))
        rows.append({"id": sid, "path": rel, "fruit": sample.fruit, "primary": sample.primary,
                     "defects": ";".join(sample.defects)})
    atomic_write(out / "labels.csv", lambda p: pd.DataFrame(rows).to_csv(p, index=False))
    write_json(out / "world.json", params)
    started.unlink(missing_ok=True)
    return out


def load_truth(world_dir) -> pd.DataFrame:
    """labels.csv as strings (id, path, fruit, primary, defects); healthy items have defects == ""."""
    return pd.read_csv(Path(world_dir) / "labels.csv", dtype=str, keep_default_na=False)


def load_masks(world_dir, id) -> dict[str, np.ndarray]:
    """The boolean mask of each defect on item `id` (an empty dict for a healthy item)."""
    sid = id if isinstance(id, str) else f"{int(id):06d}"
    with np.load(Path(world_dir) / "masks" / f"{sid}.npz") as z:
        return {k: z[k].astype(bool) for k in z.files}


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
    ap.add_argument("--hard", action="store_true",
                    help="the harder world (small, faint defects; two items; stickers, leaves, speckles)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    start = time.perf_counter()
    out = write_world(args.out, args.n, seed=args.seed, width=args.size[0], height=args.size[1],
                      progress=not args.quiet, options=HARD if args.hard else WorldOptions())
    counts = load_truth(out)["primary"].value_counts()
    print(f"{out}: {args.n} images in {time.perf_counter() - start:.1f}s")
    print(", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
