import matplotlib
import numpy as np
import pytest
from PIL import Image

from utils.plot import (
    PANEL_GAP, combined_overlay, display_size, individual_overlay, legend_entries,
    map_to_image, normalize_map, percent_text, title_for,
)

GRID = 7
HOT_ROW, HOT_COL = 1, 5  # top right of centre: off-centre on both axes


def crop_box(width, height):
    """Our own copy of CLIP's kept square, so the test does not trust the code under test."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def hot_map(row=HOT_ROW, col=HOT_COL):
    heatmap = np.zeros((GRID, GRID), dtype=np.float32)
    heatmap[row, col] = 1.0
    return heatmap


def expected_hot_spot(width, height, row=HOT_ROW, col=HOT_COL):
    """Centre of the hot patch in the original photo's pixel indices."""
    left, top, right, _ = crop_box(width, height)
    patch = (right - left) / GRID
    return left + (col + 0.5) * patch - 0.5, top + (row + 0.5) * patch - 0.5


def right_panel(picture, width, height):
    return np.asarray(picture)[:height, width + PANEL_GAP:width * 2 + PANEL_GAP]


def dimmed(rgb):
    left, top, right, bottom = crop_box(rgb.shape[1], rgb.shape[0])
    out = (rgb * 0.5).astype(np.uint8)
    out[top:bottom, left:right] = rgb[top:bottom, left:right]
    return out


def photo(width, height, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300)])
def test_map_to_image_lays_the_map_on_the_crop_only(width, height):
    full = map_to_image(hot_map(), (width, height))
    left, top, right, bottom = crop_box(width, height)
    assert full.shape == (height, width)
    covered = np.zeros_like(full, dtype=bool)
    covered[top:bottom, left:right] = True
    assert np.isfinite(full[covered]).all() and np.isnan(full[~covered]).all()
    y, x = np.unravel_index(np.nanargmax(full), full.shape)
    expected_x, expected_y = expected_hot_spot(width, height)
    assert abs(x - expected_x) <= 2 and abs(y - expected_y) <= 2


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300)])
@pytest.mark.parametrize("long_side", [None, 448])
def test_hottest_overlay_pixel_is_on_the_hot_patch_in_original_coordinates(width, height, long_side):
    black = np.zeros((height, width, 3), dtype=np.uint8)
    picture = individual_overlay(black, hot_map(), "hot", threshold=0.0, cmap="gray", long_side=long_side)
    shown_w, shown_h = display_size((width, height), long_side)
    brightness = right_panel(picture, shown_w, shown_h).astype(int).sum(axis=2)
    ys, xs = np.nonzero(brightness >= brightness.max() - 3)
    x = (xs.mean() + 0.5) * width / shown_w - 0.5  # back to the original photo's pixels
    y = (ys.mean() + 0.5) * height / shown_h - 0.5
    expected_x, expected_y = expected_hot_spot(width, height)
    assert abs(x - expected_x) <= 3 and abs(y - expected_y) <= 3
    left, top, right, bottom = crop_box(width, height)
    assert left <= x < right and top <= y < bottom


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300)])
def test_outside_the_crop_is_dimmed_and_never_coloured(width, height):
    rgb = photo(width, height)
    picture = individual_overlay(rgb, hot_map(), "x", threshold=0.0, long_side=None)
    overlay = right_panel(picture, width, height).astype(int)
    left, top, right, bottom = crop_box(width, height)
    outside = np.ones((height, width), dtype=bool)
    outside[top:bottom, left:right] = False
    assert np.abs(overlay[outside] - dimmed(rgb)[outside]).max() <= 1
    assert np.abs(overlay[~outside] - rgb[~outside]).mean() > 20  # threshold 0 colours the whole crop
    original = np.asarray(picture)[:height, :width]
    assert np.array_equal(original, rgb)  # the left panel is the untouched photo; bitwise: pixels copied


def test_a_low_map_value_gets_no_colour_above_the_threshold():
    rgb = photo(200, 200)
    overlay = right_panel(individual_overlay(rgb, hot_map(), "x", threshold=0.5, long_side=None), 200, 200)
    far_corner = (slice(150, 200), slice(0, 50))  # the map is 0 there
    assert np.array_equal(overlay[far_corner], rgb[far_corner])  # bitwise: pixels copied


@pytest.mark.parametrize("threshold", [1.0, 5.0])
@pytest.mark.parametrize("width,height", [(300, 200), (200, 300)])
def test_combined_at_full_threshold_is_the_dimmed_photo(width, height, threshold):
    rgb = photo(width, height, seed=1)
    maps = [hot_map(), hot_map(5, 1), np.random.default_rng(2).random((GRID, GRID))]
    picture = combined_overlay(rgb, maps, ["a", "b", "c"], [0.5, 0.3, 0.2], threshold=threshold,
                               long_side=None)
    panel = np.asarray(picture)[:height]
    assert np.abs(panel.astype(int) - dimmed(rgb)).max() <= 1


def test_legend_entries_list_labels_probabilities_and_distinct_colours():
    labels, probs = ["green mold", "bruise", "fresh"], [0.623, 0.25, 0.127]
    entries = legend_entries(labels, probs)
    assert [e.label for e in entries] == labels
    assert [e.percent for e in entries] == ["62.3%", "25.0%", "12.7%"]
    assert entries[0].text == "green mold (62.3%)"
    tab10 = [tuple(round(c * 255) for c in matplotlib.colors.to_rgb(color))
             for color in matplotlib.colormaps["tab10"].colors[:3]]
    assert [e.rgb for e in entries] == tab10
    assert len({e.rgb for e in entries}) == 3
    assert entries[0].hex == "#{:02x}{:02x}{:02x}".format(*tab10[0])
    assert title_for("green mold", 0.623) == "green mold - 62.3%"
    with pytest.raises(ValueError):
        legend_entries(labels, probs[:2])


def test_legend_strip_shows_every_colour_and_some_text():
    rgb = photo(300, 200)
    labels, probs = ["green mold", "bruise", "fresh", "rot", "scar"], [0.4, 0.3, 0.15, 0.1, 0.05]
    maps = [hot_map(i, i) for i in range(5)]
    picture = combined_overlay(rgb, maps, labels, probs, long_side=None)
    strip = np.asarray(picture)[200:]
    assert strip.shape[0] > 0
    pixels = {tuple(p) for p in strip.reshape(-1, 3)}
    for entry in legend_entries(labels, probs):
        assert entry.rgb in pixels
    assert (strip.sum(axis=2) < 200).sum() > 50  # dark text pixels on the white strip


def effective_alpha(picture_rgb, base_rgb, color, y, x):
    out, base = picture_rgb[y, x].astype(float), base_rgb[y, x].astype(float)
    channel = np.argmax(np.abs(np.asarray(color, dtype=float) - base))
    return (out[channel] - base[channel]) / (color[channel] - base[channel])


@pytest.mark.parametrize("alpha_by_prob,expected", [(False, (0.5, 0.5)), (True, (0.5 * 0.6, 0.5 * 0.4))])
def test_alpha_by_prob_scales_each_opacity_by_its_probability(alpha_by_prob, expected):
    gray = np.full((210, 210, 3), 128, dtype=np.uint8)
    maps, probs = [hot_map(1, 1), hot_map(5, 5)], [0.6, 0.4]
    picture = combined_overlay(gray, maps, ["likely", "unlikely"], probs, threshold=0.5, alpha=0.5,
                               alpha_by_prob=alpha_by_prob, long_side=None)
    panel = np.asarray(picture)[:210]
    colors = [e.rgb for e in legend_entries(["likely", "unlikely"], probs)]
    peaks = [(45, 45), (165, 165)]  # patch centres: (row + 0.5) * 30
    alphas = [effective_alpha(panel, gray, colors[i], *peaks[i]) for i in range(2)]
    assert alphas == pytest.approx(expected, abs=0.02)


def test_opacity_by_probability_visibly_changes_the_picture():
    rgb = photo(210, 210, seed=1)
    maps = [np.random.default_rng(i).random((GRID, GRID)).astype(np.float32) for i in range(3)]
    probs = [0.55, 0.3, 0.11]
    pictures = [np.asarray(combined_overlay(rgb, maps, ["a", "b", "c"], probs, threshold=0.3, alpha=0.6,
                                            alpha_by_prob=flag, long_side=None))[:210].astype(float)
                for flag in (False, True)]
    assert np.abs(pictures[0] - pictures[1]).mean() > 5  # levels of 255 per channel, averaged over the panel


def test_each_meaningful_description_colours_its_own_region():
    gray = np.full((140, 140, 3), 128, dtype=np.uint8)
    probs = [0.85, 0.11]  # a true 11% bruise next to the top defect
    picture = combined_overlay(gray, [hot_map(1, 1), hot_map(5, 5)], ["top", "bruise"], probs, threshold=0.5,
                               alpha=1.0, long_side=None)
    panel = np.asarray(picture)[:140]
    colors = [e.rgb for e in legend_entries(["top", "bruise"], probs)]
    assert tuple(panel[30, 30]) == colors[0] and tuple(panel[110, 110]) == colors[1]  # patch centres: 20 * (i + 0.5)


def test_where_two_maps_overlap_the_colour_leans_to_the_stronger():
    gray = np.full((140, 140, 3), 128, dtype=np.uint8)
    weak_everywhere = np.full((GRID, GRID), 0.6, dtype=np.float32)
    weak_everywhere[0, 0], weak_everywhere[6, 0] = 0.0, 1.0  # spans [0, 1], so 0.6 stays 0.6
    picture = combined_overlay(gray, [weak_everywhere, hot_map(3, 3)], ["a", "b"], [0.5, 0.5],
                               threshold=0.5, alpha=1.0, long_side=None)
    panel = np.asarray(picture)[:140].astype(float)
    colors = np.asarray([e.rgb for e in legend_entries(["a", "b"], [0.5, 0.5])], dtype=float)
    distance = np.abs(panel[70, 70] - colors).sum(axis=1)
    assert distance[1] < distance[0]  # b's peak: b's colour leads where both are high
    only_a = effective_alpha(panel, gray, colors[0], 130, 130)  # only a is above threshold there: its colour,
    assert only_a == pytest.approx(0.6, abs=0.03)  # as opaque as a's value (0.6): edges fade, never blocks


def test_threshold_zero_paints_no_blocks():
    gray = np.full((210, 210, 3), 128, dtype=np.uint8)
    heatmaps = [np.random.default_rng(i).random((GRID, GRID)).astype(np.float32) for i in range(2)]
    picture = combined_overlay(gray, heatmaps, ["a", "b"], [0.6, 0.4], threshold=0.0, alpha=0.7, long_side=None)
    panel = np.asarray(picture)[:210].astype(float)
    steps = max(np.abs(np.diff(panel, axis=0)).max(), np.abs(np.diff(panel, axis=1)).max())
    assert steps < 16  # a 30 px cell's edge would jump by tens of levels; a smooth ramp moves a few per pixel


def test_an_improbable_description_colours_nothing_next_to_a_probable_one():
    gray = np.full((140, 140, 3), 128, dtype=np.uint8)
    everywhere = np.random.default_rng(0).random((GRID, GRID)).astype(np.float32)
    probs = [0.99, 0.002]
    picture = combined_overlay(gray, [hot_map(3, 3), everywhere], ["likely", "unlikely"], probs,
                               threshold=0.3, alpha=1.0, long_side=None)
    panel = np.asarray(picture)[:140]
    colors = [e.rgb for e in legend_entries(["likely", "unlikely"], probs)]
    pixels = {tuple(p) for p in panel.reshape(-1, 3)}
    assert colors[0] in pixels and colors[1] not in pixels


@pytest.mark.parametrize("width,height", [(640, 480), (300, 200), (200, 300), (100, 100)])
def test_output_types_and_sizes(width, height):
    rgb = photo(width, height)
    shown_w, shown_h = display_size((width, height))
    assert max(shown_w, shown_h) == 448 and abs(shown_w / shown_h - width / height) < 0.01
    single = individual_overlay(Image.fromarray(rgb), hot_map(), "green mold - 62.3%")
    assert isinstance(single, Image.Image) and single.mode == "RGB"
    assert single.width == 2 * shown_w + PANEL_GAP and single.height > shown_h  # the title strip below
    combined = combined_overlay(rgb, [hot_map(), np.random.default_rng(0).random((224, 224))], ["a", "b"],
                                [0.7, 0.3])
    assert isinstance(combined, Image.Image) and combined.mode == "RGB"
    assert combined.width == shown_w and combined.height > shown_h
    unscaled = individual_overlay(rgb, hot_map(), "t", long_side=None)
    assert unscaled.width == 2 * width + PANEL_GAP and unscaled.height > height


def test_normalize_map_keeps_nan_and_flattens_constant_maps():
    values = np.array([[np.nan, 2.0], [4.0, 6.0]])
    norm = normalize_map(values)
    assert np.isnan(norm[0, 0]) and norm[1, 1] == 1.0 and norm[0, 1] == 0.0 and norm[1, 0] == 0.5
    assert not normalize_map(np.full((3, 3), 7.0)).any()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError):
        individual_overlay(photo(50, 50), np.zeros((2, 7, 7)), "x")
    with pytest.raises(ValueError):
        combined_overlay(photo(50, 50), [hot_map()], ["a", "b"], [0.5, 0.5])


def test_long_text_is_cut_in_the_middle_so_the_percentage_stays():
    from utils.plot import _fit_text, _font
    font = _font(14)
    short = _fit_text("a very long description of a deep bruise near the stem (30.0%)", font, 200)
    assert "…" in short and short.endswith("(30.0%)") and font.getlength(short) <= 200
    assert _fit_text("fresh (2.0%)", font, 200) == "fresh (2.0%)"


def test_a_narrow_legend_wraps_its_entries_whole():
    """Under a tall photo's narrow panel, a legend entry wraps onto more lines instead of losing its middle."""
    from utils.plot import LEGEND_LINES, _font, _legend_rows
    font = _font(22)
    entries = legend_entries(["a brown bruise", "white fuzzy mold"], [0.436, 0.2])
    rows = _legend_rows(entries, 200, font)
    assert [" ".join(lines) for row in rows for _, lines, _ in row] == ["a brown bruise (43.6%)",
                                                                       "white fuzzy mold (20.0%)"]
    assert all(1 < len(lines) <= LEGEND_LINES and max(map(font.getlength, lines)) <= 200
               for row in rows for _, lines, _ in row)
    tall = combined_overlay(photo(120, 500), [hot_map()] * 2, ["a brown bruise", "white fuzzy mold"], [0.436, 0.2])
    wide = combined_overlay(photo(500, 120), [hot_map()] * 2, ["a brown bruise", "white fuzzy mold"], [0.436, 0.2])
    assert tall.height - 448 > 2 * (wide.height - round(448 * 120 / 500))  # the wrapped lines got their room


def test_small_probabilities_keep_their_digits():
    assert [percent_text(p) for p in (0.623, 0.005, 0.00043, 0.0)] == ["62.3%", "0.5%", "0.043%", "0.0%"]


@pytest.mark.parametrize("title", ["green mold - 62.3%", "caption: " + "a pear with a very long caption " * 4])
def test_titles_and_colour_bar_labels_sit_below_the_pictures_in_text_that_scales(title):
    """The text strip holds dark text (title, "low", "high") at a size that grows with the picture, and the
    strip's top rows over the right end (where an app puts its image buttons) stay clear of the picture."""
    from utils.plot import title_font_size

    rgb = photo(448, 336)
    picture = np.asarray(individual_overlay(rgb, hot_map(), title, long_side=None))
    strip = picture[336:]
    dark = strip.sum(axis=2) < 150
    rows = np.flatnonzero(dark.any(axis=1))
    assert title_font_size(picture.shape[1]) >= picture.shape[1] / 25
    assert rows.size and rows.max() - rows.min() >= 0.6 * title_font_size(picture.shape[1])  # text, not a hairline
    assert np.array_equal(picture[:336, :448], rgb)  # nothing drawn over the photo; bitwise: pixels copied
