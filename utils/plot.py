"""Heat-map overlays as PIL images: per-description and combined, with titles and legends.

Drawn with numpy/cv2 and PIL (matplotlib only lends its colour tables and its bundled font): a pyplot
figure costs ~290 ms, these cost a few ms. A heat map covers a region of the photo: CLIP's square center
crop by default, or, given `region` (left, top, right, bottom as shares of the width and height), the whole
photo (tiles) or any box; it is laid exactly onto that region, and the rest, which CLIP never saw, is shown
dimmed. Maps are upsampled bilinearly, so a coarse patch grid never shows as blocks.
"""
import functools
import os
from typing import NamedTuple

import cv2
import matplotlib
import matplotlib.colors
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.images import center_crop_box, load_image

DISPLAY_LONG_SIDE = 448  # large enough to read, small enough to draw fast
DIM_FACTOR = 0.5  # brightness kept outside the crop
PANEL_GAP = 4
LEGEND_PAD = 6
# Text scales with the picture, since the app shows it scaled to fit: a gallery tile or a phone shows a
# 900 px overlay about 330 px wide, where width / 24 still makes 12 px text, and the combined view gets a
# 400 px high slot (tests/test_browser.py checks both).
TITLE_SCALE = 24
LEGEND_SCALE = 20
MIN_FONT = 14
TITLE_LINES = 2
LEGEND_LINES = 4  # a legend entry wraps onto at most this many lines under a narrow (tall) photo
BACKGROUND = 255  # white
TEXT_COLOR = (20, 20, 20)
MEANINGFUL = 0.1  # a description colours the combined view when its probability is at least this share of the top one
_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class LegendEntry(NamedTuple):
    """One description as the legend shows it; a UI uses the same rgb to match the overlay."""
    label: str
    percent: str  # e.g. "62.3%"
    rgb: tuple

    @property
    def hex(self):
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)

    @property
    def text(self):
        return f"{self.label} ({self.percent})"


def percent_text(prob):
    """ "62.3%"; under 1% two significant digits ("0.52%"), so a small probability never reads as 0%."""
    percent = 100.0 * float(prob)
    if percent == 0 or abs(percent) >= 0.995:
        return f"{percent:.1f}%"
    return f"{percent:.2g}%"


def title_font_size(width):
    """Pixel size of an individual overlay's title (and colour-bar labels) on a picture `width` wide."""
    return max(MIN_FONT, round(width / TITLE_SCALE))


def legend_font_size(size):
    """Pixel size of the combined overlay's legend text under a panel of this (width, height)."""
    return max(MIN_FONT, round(max(size) / LEGEND_SCALE))


def title_for(label, prob):
    """The individual overlay's title, e.g. "green mold - 62.3%"."""
    return f"{label} - {percent_text(prob)}"


def legend_entries(labels, probs, palette="tab10"):
    """(label, percent text, rgb) per description, in the colours combined_overlay uses."""
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} probabilities")
    colors = _palette(palette, len(labels))
    return [LegendEntry(str(label), percent_text(prob), tuple(int(c) for c in color))
            for label, prob, color in zip(labels, probs, colors)]


def display_size(size, long_side=DISPLAY_LONG_SIDE):
    """(width, height) with the long side at `long_side` (None keeps the size), aspect kept."""
    width, height = size
    if long_side is None:
        return width, height
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_for_display(image, long_side=DISPLAY_LONG_SIDE):
    """RGB PIL image resized for display; resize once and pass the result to several overlays."""
    return Image.fromarray(_display_rgb(image, long_side))


def map_box(width, height, region=None):
    """(left, top, right, bottom) pixels of a width x height picture that a map covers: CLIP's center crop when
    `region` is None, else the region's shares of the width and height."""
    if region is None:
        return center_crop_box(width, height)
    left, top, right, bottom = region
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    return box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)


def map_to_image(heatmap, image_size, interpolation="bilinear", region=None):
    """Heat map on its region (default CLIP's crop) -> float32 (H, W) on the whole photo, NaN where CLIP did not
    look."""
    width, height = image_size
    left, top, right, bottom = map_box(width, height, region)
    full = np.full((height, width), np.nan, dtype=np.float32)
    full[top:bottom, left:right] = _resize_map(heatmap, (right - left, bottom - top), interpolation)
    return full


def normalize_map(values):
    """Min-max to [0, 1], ignoring NaN; a flat map carries no evidence and becomes all zeros."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.where(finite, 0.0, values).astype(np.float32)
    low, high = values[finite].min(), values[finite].max()
    scale = 1.0 / (high - low) if high > low else 0.0
    return ((values - low) * scale).astype(np.float32)


def dim_outside_crop(rgb, factor=DIM_FACTOR, region=None):
    """uint8 (H, W, 3) copy with everything outside the map's region (default CLIP's center crop) darkened."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    left, top, right, bottom = map_box(rgb.shape[1], rgb.shape[0], region)
    out = (rgb * np.float32(factor)).astype(np.uint8)
    out[top:bottom, left:right] = rgb[top:bottom, left:right]
    return out


def overlay_panel(image, heatmap, alpha=0.5, threshold=0.0, cmap="jet", long_side=DISPLAY_LONG_SIDE, region=None):
    """uint8 (H, W, 3): the photo, dimmed outside the map's region, with the map coloured where above threshold."""
    base = dim_outside_crop(_display_rgb(image, long_side), region=region)
    box = map_box(base.shape[1], base.shape[0], region)
    norm = normalize_map(_resize_map(heatmap, (box[2] - box[0], box[3] - box[1])))
    colors = _lut(cmap)[np.rint(norm * 255).astype(np.uint8)]
    return _blend(base, box, colors, alpha * _above(norm, threshold))


def combined_panel(image, heatmaps, probs, threshold=0.5, alpha=0.5, alpha_by_prob=False,
                   palette="tab10", long_side=DISPLAY_LONG_SIDE, region=None):
    """uint8 (H, W, 3): every meaningful description (probability >= MEANINGFUL of the top one) colours its own
    region, where its map is above threshold; where several overlap, their colours mix by map value times
    probability. Opacity follows the map's value, so region edges fade smoothly; with alpha_by_prob it is also
    scaled by the description's probability (alpha * p)."""
    base = dim_outside_crop(_display_rgb(image, long_side), region=region)
    if len(heatmaps) == 0:
        return base
    box = map_box(base.shape[1], base.shape[0], region)
    norms = np.stack([normalize_map(_resize_map(m, (box[2] - box[0], box[3] - box[1]))) for m in heatmaps])
    relative = _relative(probs)
    shown = norms * _above(norms, threshold) * (relative >= MEANINGFUL)[:, None, None]
    mix = shown * relative[:, None, None]
    total = mix.sum(axis=0)
    palette_rgb = np.asarray(_palette(palette, len(heatmaps)), dtype=np.float32)
    colors = np.einsum("kyx,kc->yxc", mix, palette_rgb) / np.maximum(total, 1e-12)[..., None]
    alphas = _map_alphas(probs, len(heatmaps), alpha, alpha_by_prob)[:, None, None]
    return _blend(base, box, colors, (alphas * shown).max(axis=0))


def individual_overlay(image, heatmap, title, alpha=0.5, threshold=0.0, cmap="jet",
                       long_side=DISPLAY_LONG_SIDE, region=None):
    """PIL image: original | overlay side by side, over a strip with the title and a low-to-high colour bar.
    The text sits below the pictures, where no image button of the app ever covers it."""
    original = _display_rgb(image, long_side)
    overlay = overlay_panel(original, heatmap, alpha, threshold, cmap, long_side=None, region=region)
    height, width = original.shape[:2]
    canvas_width = 2 * width + PANEL_GAP
    font = _font(title_font_size(canvas_width))
    bar = _colour_bar(cmap, font, canvas_width)
    lines = _wrap(str(title), font, canvas_width - bar.width - 3 * LEGEND_PAD)
    line_height = round(font.size * 1.3)
    strip = max(len(lines) * line_height, bar.height) + 2 * LEGEND_PAD
    canvas = np.full((height + strip, canvas_width, 3), BACKGROUND, dtype=np.uint8)
    canvas[:height, :width] = original
    canvas[:height, width + PANEL_GAP:] = overlay
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    top = height + LEGEND_PAD + (strip - 2 * LEGEND_PAD - len(lines) * line_height) // 2
    for index, line in enumerate(lines):
        draw.text((LEGEND_PAD, top + index * line_height + line_height // 2), line, fill=TEXT_COLOR, font=font,
                  anchor="lm")
    picture.paste(bar, (canvas_width - bar.width - LEGEND_PAD, height + (strip - bar.height) // 2))
    return picture


def combined_overlay(image, heatmaps, labels, probs, threshold=0.5, alpha=0.5, alpha_by_prob=False,
                     palette="tab10", long_side=DISPLAY_LONG_SIDE, region=None):
    """PIL image: the combined panel with a legend strip tying each colour to "label (xx.x%)" below it."""
    if not len(heatmaps) == len(labels) == len(probs):
        raise ValueError(f"{len(heatmaps)} maps, {len(labels)} labels, {len(probs)} probabilities")
    panel = combined_panel(image, heatmaps, probs, threshold, alpha, alpha_by_prob, palette, long_side, region)
    entries = legend_entries(labels, probs, palette)
    font = _font(legend_font_size(panel.shape[1::-1]))
    rows = _legend_rows(entries, panel.shape[1], font)
    height = panel.shape[0] + (sum(_legend_height(rows, font)) + 2 * LEGEND_PAD if rows else 0)
    canvas = np.full((height, panel.shape[1], 3), BACKGROUND, dtype=np.uint8)
    canvas[:panel.shape[0]] = panel
    picture = Image.fromarray(canvas)
    _draw_legend(picture, rows, panel.shape[0] + LEGEND_PAD, font)
    return picture


def _display_rgb(image, long_side):
    rgb_array = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2:] == (3,)
    rgb = image if rgb_array else np.asarray(load_image(image))  # skip a copy per overlay
    size = display_size((rgb.shape[1], rgb.shape[0]), long_side)
    if size == (rgb.shape[1], rgb.shape[0]):
        return rgb
    shrinking = size[0] < rgb.shape[1]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _resize_map(heatmap, size, interpolation="bilinear"):
    """A map resized to `size` (width, height), or to a square of that side when `size` is one number."""
    if hasattr(heatmap, "detach"):  # a torch tensor, without importing torch here
        heatmap = heatmap.detach().cpu().numpy()
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if heatmap.ndim != 2:
        raise ValueError(f"a heat map must be 2-D (h, w), got shape {heatmap.shape}")
    size = (size, size) if np.isscalar(size) else tuple(size)
    return cv2.resize(heatmap, size, interpolation=_INTERPOLATION[interpolation])


def _above(norm, threshold):
    """Weight 1 where a pixel gets colour: every pixel at threshold <= 0, none at threshold >= 1."""
    if threshold <= 0:
        return np.ones_like(norm)
    return (norm > threshold).astype(np.float32)


def _relative(probs):
    """Each probability over the largest one (all ones when none is positive)."""
    probs = np.asarray(probs, dtype=np.float32)
    top = probs.max() if len(probs) else 0
    return probs / top if top > 0 else np.ones_like(probs)


def _map_alphas(probs, count, alpha, alpha_by_prob):
    """Each description's opacity: alpha, or alpha times its probability (a 30% one is drawn at 0.3 alpha)."""
    if not alpha_by_prob:
        return np.full(count, alpha, dtype=np.float32)
    return (alpha * np.clip(np.asarray(probs, dtype=np.float32), 0, 1)).astype(np.float32)


def _blend(base, box, colors, weights):
    left, top, right, bottom = box
    region = base[top:bottom, left:right].astype(np.float32)
    mixed = region + weights[..., None] * (colors.astype(np.float32) - region)
    out = base.copy()
    out[top:bottom, left:right] = np.rint(mixed).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=None)
def _lut(name):
    """256 x 3 uint8 colour table of a matplotlib colormap."""
    table = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.rint(table * 255).astype(np.uint8)


def _palette(name, count):
    """`count` distinct rgb colours: a qualitative map's own list, cycled; else evenly sampled."""
    colormap = matplotlib.colormaps[name]
    listed = getattr(colormap, "colors", None)
    if listed is not None and len(listed) < 256:
        table = [matplotlib.colors.to_rgb(listed[i % len(listed)]) for i in range(count)]
    else:
        table = colormap(np.linspace(0.0, 1.0, max(count, 1)))[:count, :3]
    return [tuple(int(round(c * 255)) for c in row) for row in table]


@functools.lru_cache(maxsize=None)
def _font(size):
    """matplotlib's bundled DejaVu Sans, so no system font is needed."""
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:
        return ImageFont.load_default(size)


def _fit_text(text, font, width):
    """Text cut in the middle with an ellipsis to fit `width` pixels; the end (the percentage) survives."""
    keep = len(text)
    short = text
    while keep > 0 and font.getlength(short) > width:
        keep -= 1
        short = text[:(keep + 1) // 2] + "…" + text[len(text) - keep // 2:]
    return short if font.getlength(short) <= width else ""


def _wrap(text, font, width, max_lines=TITLE_LINES):
    """Words flowed into at most `max_lines` lines of `width` pixels; the last one is cut in the middle
    when the text is longer (its end, e.g. the percentage, survives)."""
    lines, words = [], text.split()
    while words and len(lines) < max_lines - 1:
        count = len(words)
        while count > 1 and font.getlength(" ".join(words[:count])) > width:
            count -= 1
        lines.append(" ".join(words[:count]))
        words = words[count:]
    if words:
        lines.append(" ".join(words))
    return [_fit_text(line, font, width) for line in lines] or [""]


def _colour_bar(cmap, font, canvas_width):
    """ "low [colour ramp] high" as a small RGB picture, as tall as the text."""
    labels = ("low", "high")
    ramp_width = max(40, canvas_width // 7)
    gap = font.size // 3
    label_widths = [int(font.getlength(label)) + 1 for label in labels]
    height = round(font.size * 1.3)
    picture = Image.new("RGB", (label_widths[0] + ramp_width + label_widths[1] + 2 * gap, height), (BACKGROUND,) * 3)
    ramp = np.repeat(_lut(cmap)[np.linspace(0, 255, ramp_width).astype(int)][None], max(4, font.size * 2 // 3), axis=0)
    picture.paste(Image.fromarray(ramp), (label_widths[0] + gap, (height - ramp.shape[0]) // 2))
    draw = ImageDraw.Draw(picture)
    draw.text((0, height // 2), labels[0], fill=TEXT_COLOR, font=font, anchor="lm")
    draw.text((picture.width, height // 2), labels[1], fill=TEXT_COLOR, font=font, anchor="rm")
    return picture


def _legend_rows(entries, width, font):
    """Entries flowed left to right into rows that fit the width: [[(entry, lines, x), ...], ...]. An entry
    too long for a row of its own (a tall photo's narrow legend) wraps onto lines of its own."""
    swatch = font.size
    rows, row, x = [], [], LEGEND_PAD
    for entry in entries:
        lines = _wrap(entry.text, font, width - 2 * LEGEND_PAD - swatch - 5, LEGEND_LINES)
        span = swatch + 5 + int(max(font.getlength(line) for line in lines)) + font.size
        if row and x + span > width:
            rows.append(row)
            row, x = [], LEGEND_PAD
        row.append((entry, lines, x))
        x += span
    return rows + [row] if row else rows


def _legend_line_heights(font):
    """(a legend row's height for one line, what each further wrapped line adds)."""
    return round(font.size * 1.5), round(font.size * 1.2)


def _legend_height(rows, font):
    """Pixel height of each legend row: one line, plus a line height per extra wrapped line."""
    first, more = _legend_line_heights(font)
    return [first + more * (max(len(lines) for _, lines, _ in row) - 1) for row in rows]


def _draw_legend(picture, rows, top, font):
    draw = ImageDraw.Draw(picture)
    swatch = font.size
    first, more = _legend_line_heights(font)
    for row, row_height in zip(rows, _legend_height(rows, font)):
        middle = top + first // 2  # of the row's first line, where the swatch sits
        swatch_top = middle - swatch // 2
        for entry, lines, x in row:
            draw.rectangle((x, swatch_top, x + swatch - 1, swatch_top + swatch - 1), fill=entry.rgb)
            for index, line in enumerate(lines):
                draw.text((x + swatch + 5, middle + index * more), line, fill=TEXT_COLOR, font=font, anchor="lm")
        top += row_height
