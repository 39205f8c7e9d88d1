import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from models.clip import CLIPW
from models.tiling import aggregate, most_defective, stitch, tile_boxes
from models.views import explain_photo
from test_explain import GRID, PATCH, TEXTS, detector_clip

SIDE = GRID * PATCH  # the detector CLIP's input: 16 px, a 4 x 4 grid of 4 px patches
HEALTHY = [False, True]  # TEXTS: red (a defect), green (healthy)


@pytest.mark.parametrize("width,height,side", [(3000, 200, 0), (200, 3000, 0), (640, 480, 0), (100, 100, 0),
                                               (1000, 700, 300), (81, 16, 0)])
def test_tiles_are_squares_that_cover_every_pixel_with_overlap(width, height, side):
    boxes = tile_boxes(width, height, side)
    covered = np.zeros((height, width), bool)
    for left, top, right, bottom in boxes:
        assert right - left == bottom - top and 0 <= left < right <= width and 0 <= top < bottom <= height
        covered[top:bottom, left:right] = True
    assert covered.all()
    lefts = sorted({box[0] for box in boxes})
    tile = boxes[0][2] - boxes[0][0]
    assert all(b - a <= 0.75 * tile + 1 for a, b in zip(lefts, lefts[1:]))  # neighbours share >= a quarter


def test_a_square_photo_is_one_tile():
    assert tile_boxes(224, 224) == [(0, 0, 224, 224)]


def test_aggregate_counts_a_defect_seen_in_any_tile():
    tile_probs = np.array([[0.05, 0.95], [0.8, 0.2], [0.1, 0.9]])  # [defect, healthy] per tile
    merged = aggregate(tile_probs, HEALTHY)
    np.testing.assert_allclose(merged, np.array([0.8, 0.2]) / 1.0, atol=1e-9)
    assert most_defective(tile_probs, HEALTHY) == 1
    np.testing.assert_allclose(aggregate([[0.3, 0.7]], HEALTHY), [0.3, 0.7], atol=1e-9)  # one tile: unchanged


def test_stitch_puts_each_tile_map_at_its_place_in_the_photo():
    boxes = tile_boxes(40, 16)  # 16 px tiles at x = 0, 12, 24
    maps = np.zeros((len(boxes), 1, 4, 4), np.float32)
    maps[2, 0, 1, 3] = 1.0  # last tile, row 1, column 3: photo x 24 + 12..16, y 4..8
    full = stitch(maps, boxes, (40, 16))
    scale = full.shape[2] / 40
    y, x = np.unravel_index(full[0].argmax(), full[0].shape)
    assert 36 <= x / scale < 40 and 4 <= y / scale < 8
    assert full.shape[1:] == (round(16 * scale), round(40 * scale)) and full.max() == pytest.approx(1.0)


def detector_clipw():
    """The hand-wired detector CLIP (tests/test_explain.py) behind CLIPW, pixels taken as they are (0..1)."""
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                      image_mean=[0, 0, 0], image_std=[1, 1, 1])
    return CLIPW(detector_clip(), None, processor, device="cpu")


def strip(items=6):
    """A 16 px high strip: a green (healthy) item in every 16 px block, except the last, which is red."""
    picture = np.zeros((SIDE, SIDE * items, 3), np.uint8)
    for item in range(items):
        channel = 0 if item == items - 1 else 1
        picture[6:10, item * SIDE + 6:item * SIDE + 10, channel] = 255
    return Image.fromarray(picture)


@pytest.mark.parametrize("method", ["gradcam", "relevancy"])
def test_a_strip_with_one_defective_item_at_the_end_is_judged_defective_there(method):
    clip, picture = detector_clipw(), strip()
    center = explain_photo(clip, picture, TEXTS, HEALTHY, k=2, method=method, view="center")
    assert center.explanation.prompts[0] is not None and center.probabilities[0] < 0.5  # the crop sees green only
    tiles = explain_photo(clip, picture, TEXTS, HEALTHY, k=2, method=method, view="tiles")
    assert tiles.view == "tiles" and tiles.tiles > 1 and tiles.probabilities[0] > 0.5
    assert tiles.explanation.probs[0] == pytest.approx(tiles.probabilities[0])
    red = tiles.explanation.maps[0]  # the top prompt: red
    scale = red.shape[1] / picture.size[0]
    y, x = np.unravel_index(red.argmax(), red.shape)
    assert 5 * SIDE + 5 <= x / scale <= 5 * SIDE + 11 and 5 <= y / scale <= 11


@pytest.mark.parametrize("method", ["gradcam", "relevancy"])
def test_a_square_photo_gives_the_same_result_in_both_views(method):
    clip = detector_clipw()
    picture = np.zeros((2 * SIDE, 2 * SIDE, 3), np.uint8)
    picture[4:12, 4:12, 0] = picture[20:28, 16:24, 1] = 255  # a red item and a green one
    views = [explain_photo(clip, Image.fromarray(picture), TEXTS, HEALTHY, k=2, method=method, view=view)
             for view in ("tiles", "center")]
    assert views[0].tiles == 1 and views[0].explanation.crop_box == views[1].explanation.crop_box
    np.testing.assert_allclose(views[0].probabilities, views[1].probabilities, atol=1e-6)
    np.testing.assert_allclose(views[0].explanation.maps, views[1].explanation.maps, atol=1e-6)


def test_letterbox_maps_cover_the_photo_only():
    clip, picture = detector_clipw(), strip(2)
    seen = explain_photo(clip, picture, TEXTS, HEALTHY, k=2, view="letterbox")
    assert seen.view == "letterbox" and seen.region == (0.0, 0.0, 1.0, 1.0)
    height, width = seen.explanation.maps.shape[1:]
    assert width == pytest.approx(2 * height, abs=1)
    with pytest.raises(ValueError, match="unknown view"):
        explain_photo(clip, picture, TEXTS, HEALTHY, view="zoom")
