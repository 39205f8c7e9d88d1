import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROMPTS
from models.explain import Explainer
from models.faithfulness import (area_under, baseline_image, deletion_auc, energy_in_mask, gaussian_blur,
                                 insertion_auc, mask_to_grid, perturbation_curve, pixel_auroc, pointing_game,
                                 prompt_probability, random_baseline, random_maps, strict_pointing)
from test_explain import RED_PATCH, TEXTS, colour_image, detector_clip

GRID, PATCH = 4, 8
HOT = (1, 2)  # the one patch the toy score looks at


def one_hot(cell, grid=GRID):
    saliency = torch.zeros(grid, grid)
    saliency[cell] = 1.0
    return saliency


def hot_patch_score(pixel_values):
    """A model that only sees the mean brightness of patch HOT."""
    row, col = HOT
    return pixel_values[:, :, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH].mean(dim=(1, 2, 3))


def pixel_mask(cells, size=GRID * PATCH):
    mask = np.zeros((size, size), dtype=bool)
    for row, col in cells:
        mask[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = True
    return mask


def test_mask_to_grid_counts_patch_fractions():
    mask = pixel_mask([HOT])
    mask[0, :4] = True  # half a row of one patch: 4 of its 64 pixels
    grid = mask_to_grid(mask, GRID)
    assert grid[HOT] == 1 and grid[0, 0] == pytest.approx(4 / 64) and grid.sum() == pytest.approx(1 + 4 / 64)


def test_mask_to_grid_uses_the_center_crop_of_a_wide_photo():
    mask = np.zeros((32, 64), dtype=np.uint8)  # width 64, height 32: CLIP keeps columns 16..48
    mask[:, :16] = 255  # only outside the crop
    assert mask_to_grid(mask, GRID).sum() == 0
    mask[:8, 16:24] = 255  # the crop's top-left patch
    grid = mask_to_grid(Image.fromarray(mask), GRID)
    assert grid[0, 0] == 1 and grid.sum() == 1


def test_pointing_game_hits_misses_and_tolerance():
    mask = pixel_mask([HOT])
    assert pointing_game(one_hot(HOT), mask)
    assert not pointing_game(one_hot((3, 3)), mask)
    assert not pointing_game(one_hot((1, 3)), mask)
    assert pointing_game(one_hot((1, 3)), mask, tolerance=1)  # next to the mask
    assert not pointing_game(one_hot((3, 0)), mask, tolerance=1)
    assert not pointing_game(torch.zeros(GRID, GRID), mask)  # a blank map points nowhere


def test_strict_pointing_needs_the_peak_pixel_near_the_mask():
    saliency = one_hot((1, 1))  # upsampled, its peak pixels are (11, 11) and (12, 12), the patch's centre
    corner = np.zeros((GRID * PATCH,) * 2, dtype=bool)
    corner[8, 8] = True  # the patch's far corner: 4.2 px from the peak, half a patch is 4
    assert pointing_game(saliency, corner) and not strict_pointing(saliency, corner)
    near = np.zeros_like(corner)
    near[9, 9] = True  # 2.8 px away: inside the dilated mask
    assert strict_pointing(saliency, near)
    assert strict_pointing(saliency, pixel_mask([(1, 1)])) and not strict_pointing(saliency, pixel_mask([HOT]))
    assert not strict_pointing(torch.ones(GRID, GRID), pixel_mask([(1, 1)]))  # flat: points nowhere


def test_pixel_auroc_ranks_mask_pixels_above_the_rest():
    mask = pixel_mask([HOT])
    assert pixel_auroc(one_hot(HOT), mask) > 0.95
    assert pixel_auroc(1 - one_hot(HOT), mask) < 0.05
    assert pixel_auroc(torch.ones(GRID, GRID), mask) == 0.5  # all ties
    assert np.isnan(pixel_auroc(one_hot(HOT), np.zeros_like(mask)))


def test_energy_in_mask():
    mask = pixel_mask([HOT, (0, 0)])
    assert energy_in_mask(one_hot(HOT), mask) == pytest.approx(1.0)
    assert energy_in_mask(one_hot((3, 3)), mask) == 0.0
    assert energy_in_mask(torch.ones(GRID, GRID), mask) == pytest.approx(2 / 16)
    assert energy_in_mask(one_hot(HOT) + one_hot((3, 3)), mask) == pytest.approx(0.5)
    assert energy_in_mask(np.zeros((GRID, GRID)), mask) == 0.0


def test_deletion_and_insertion_on_a_known_score():
    image = torch.ones(1, 3, GRID * PATCH, GRID * PATCH)
    n = GRID * GRID
    good, worst = one_hot(HOT), 1 - one_hot(HOT)  # HOT first / HOT last
    # removing HOT first drops the score to 0 at the first step: area = half a step
    assert deletion_auc(good, hot_patch_score, image, baseline="zero") == pytest.approx(1 / (2 * n))
    assert deletion_auc(worst, hot_patch_score, image, baseline="zero") == pytest.approx(1 - 1 / (2 * n))
    assert insertion_auc(good, hot_patch_score, image, baseline="zero") == pytest.approx(1 - 1 / (2 * n))
    assert insertion_auc(worst, hot_patch_score, image, baseline="zero") == pytest.approx(1 / (2 * n))
    fractions, scores = perturbation_curve(good, hot_patch_score, image, "deletion", baseline="zero", steps=4)
    assert np.allclose(fractions, [0, 0.25, 0.5, 0.75, 1]) and np.allclose(scores, [1, 0, 0, 0, 0])


def test_random_baseline_sits_between_the_best_and_worst_map():
    image = torch.ones(1, 3, GRID * PATCH, GRID * PATCH)
    random_deletion = random_baseline(deletion_auc, GRID, hot_patch_score, image, baseline="zero", count=40)
    assert 0.3 < random_deletion < 0.7  # expected 0.5: HOT is removed at a uniformly random step
    hit_rate = random_baseline(pointing_game, GRID, pixel_mask([HOT]), count=400)
    assert 1 / 16 - 0.04 < hit_rate < 1 / 16 + 0.04
    assert torch.equal(random_maps(3, GRID, seed=1), random_maps(3, GRID, seed=1))  # bitwise: a seeded generator


def test_batches_do_not_change_the_curve():
    torch.manual_seed(0)
    image, saliency = torch.randn(1, 3, 32, 32), torch.rand(GRID, GRID)
    score = lambda x: x[:, 0].mean(dim=(1, 2))  # noqa: E731
    _, one = perturbation_curve(saliency, score, image, batch_size=1)
    _, many = perturbation_curve(saliency, score, image, batch_size=64)
    assert np.allclose(one, many, atol=1e-6) and len(one) == GRID * GRID + 1
    assert area_under(np.array([0, 0.5, 1.0]), np.array([1.0, 1.0, 0.0])) == pytest.approx(0.75)


def test_baselines():
    image = torch.randn(1, 3, 32, 32)
    assert baseline_image(image, "zero").eq(0).all()
    assert torch.allclose(baseline_image(image, "mean")[0, :, 5, 7], image.mean(dim=(2, 3))[0])
    blurred = baseline_image(image, "blur")
    assert blurred.shape == image.shape and blurred.std() < image.std() / 2
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)  # blur keeps a flat image (edges too)
    with pytest.raises(ValueError):
        baseline_image(image, "noise")


def test_explanations_of_the_toy_clip_beat_random_maps():
    clip = detector_clip()
    image = colour_image()
    saliency = Explainer(clip).prompt_maps(image, TEXTS)[0]  # the red prompt
    score = prompt_probability(clip, TEXTS, 0)
    red_mask = np.zeros((16, 16), dtype=bool)
    red_mask[RED_PATCH[0] * 4:RED_PATCH[0] * 4 + 4, RED_PATCH[1] * 4:RED_PATCH[1] * 4 + 4] = True
    assert pointing_game(saliency, red_mask) and energy_in_mask(saliency, red_mask) > 0.99
    deletion = deletion_auc(saliency, score, image, baseline="zero")
    insertion = insertion_auc(saliency, score, image, baseline="zero")
    assert deletion < random_baseline(deletion_auc, 4, score, image, baseline="zero", count=8)
    assert insertion > random_baseline(insertion_auc, 4, score, image, baseline="zero", count=8)


def test_prompt_probability_with_a_clipw(tiny_clip):
    pixels = torch.randn(3, 3, 32, 32)
    score = prompt_probability(tiny_clip, PROMPTS, 2)
    probs = tiny_clip.probabilities(pixels, PROMPTS)
    assert torch.allclose(score(pixels), probs[:, 2], atol=1e-5)
