"""Does a map point at what matters? Deletion/insertion AUC, pointing game, energy inside a mask, and the
same numbers for random maps as the baseline every explanation has to beat.

Maps live on CLIP's patch grid [g, g]; masks come in ORIGINAL image pixels and are brought onto the grid
of the center crop CLIP saw (utils.images.center_crop_box).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from models.explain import Explainer
from utils.images import center_crop_box
from utils.metrics import auroc

BASELINES = ("blur", "mean", "zero")


def mask_to_grid(mask, grid):
    """Mask (H, W) in original pixels (bool/0-1/0-255; array, tensor or PIL) -> [g, g] float: the fraction
    of each patch of CLIP's center crop that lies inside the mask."""
    mask = torch.as_tensor(np.array(mask)).float()
    if mask.ndim == 3:  # an RGB(A) mask picture: any channel set counts
        mask = mask.amax(dim=-1)
    mask = (mask > 0).float()
    left, top, right, bottom = center_crop_box(mask.shape[1], mask.shape[0])
    crop = mask[top:bottom, left:right]
    return F.adaptive_avg_pool2d(crop[None, None], grid)[0, 0]


def _grid_mask(mask, saliency):
    return mask_to_grid(mask, saliency.shape[-1]).to(saliency.device)


def _as_map(saliency):
    return (saliency if torch.is_tensor(saliency) else torch.as_tensor(np.array(saliency))).detach().float().cpu()


def pointing_game(saliency, mask, tolerance=0):
    """Is the map's maximum on a patch that touches the mask? `tolerance` (in patches) also accepts a
    maximum that many patches away. A flat map points nowhere: False."""
    saliency = _as_map(saliency)
    if saliency.max() - saliency.min() <= 0:
        return False
    inside = _grid_mask(mask, saliency) > 0
    if tolerance:
        size = 2 * tolerance + 1
        inside = F.max_pool2d(inside[None, None].float(), size, stride=1, padding=tolerance)[0, 0] > 0
    return bool(inside.flatten()[saliency.flatten().argmax()])


def crop_mask(mask):
    """Mask (H, W) in original pixels -> bool [S, S] tensor: the part of it in CLIP's center crop."""
    mask = torch.as_tensor(np.array(mask))
    mask = (mask.amax(dim=-1) if mask.ndim == 3 else mask) > 0
    left, top, right, bottom = center_crop_box(mask.shape[1], mask.shape[0])
    return mask[top:bottom, left:right]


def upsample_map(saliency, side):
    """[g, g] map -> [side, side], bilinear (the smooth map an overlay shows, not blocks)."""
    return F.interpolate(_as_map(saliency)[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0]


def dilate(mask, radius):
    """Bool [H, W] mask grown by a disk of `radius` pixels."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius ** 2).float()
    return F.conv2d(mask[None, None].float(), disk[None, None], padding=radius)[0, 0] > 0


def strict_pointing(saliency, mask):
    """Is the peak PIXEL of the smoothly upsampled map inside the mask dilated by half a patch? (The lenient
    pointing_game accepts a peak patch that merely touches the mask.) A flat map points nowhere: False."""
    saliency = _as_map(saliency)
    if saliency.max() - saliency.min() <= 0:
        return False
    crop = crop_mask(mask)
    side = crop.shape[0]
    inside = dilate(crop, max(1, round(side / saliency.shape[-1] / 2)))
    return bool(inside.flatten()[upsample_map(saliency, side).flatten().argmax()])


def pixel_auroc(saliency, mask):
    """AUROC of the upsampled map's pixels for the mask's pixels (the anomaly-detection field's pixel
    metric; ties count half); NaN when the crop holds no mask pixel or only mask pixels."""
    crop = crop_mask(mask)
    return auroc(crop.flatten().numpy(), upsample_map(saliency, crop.shape[0]).flatten().numpy())


def energy_in_mask(saliency, mask):
    """Share of the map's total mass that falls inside the mask (0 for an empty map)."""
    saliency = _as_map(saliency).clamp(min=0)
    total = saliency.sum()
    if total <= 0:
        return 0.0
    return float((saliency * _grid_mask(mask, saliency)).sum() / total)


def baseline_image(pixel_values, kind="blur"):
    """What a removed patch becomes: a strong blur of the image, its per-channel mean, or zero (the
    dataset mean colour, since CLIP's pixels are normalized)."""
    if kind == "zero":
        return torch.zeros_like(pixel_values)
    if kind == "mean":
        return pixel_values.mean(dim=(-2, -1), keepdim=True).expand_as(pixel_values)
    if kind == "blur":
        return gaussian_blur(pixel_values, sigma=pixel_values.shape[-1] / 14)  # ~half a ViT-B/32 patch
    raise ValueError(f"unknown baseline '{kind}': choose one of {BASELINES}")


def gaussian_blur(images, sigma):
    """Separable Gaussian blur of [B, C, H, W] with edge replication (no torchvision here)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def perturbation_curve(saliency, score_fn, pixel_values, mode="deletion", baseline="blur", steps=None,
                       batch_size=16):
    """Scores as patches are removed (deletion) or revealed (insertion) in the map's order, most salient
    first. Returns (fraction of patches changed [n+1], scores [n+1]) as numpy arrays.

    score_fn: pixel_values [B, 3, S, S] -> [B] (e.g. `prompt_probability`); steps: number of points after
    the start (default: one patch at a time); all perturbed images are scored in batches.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"unknown mode '{mode}': choose deletion or insertion")
    saliency = _as_map(saliency)
    pixel_values = pixel_values if pixel_values.ndim == 4 else pixel_values[None]
    grid, size = saliency.shape[-1], pixel_values.shape[-1]
    if size % grid:
        raise ValueError(f"image side {size} is not a multiple of the {grid}x{grid} grid")
    patches = grid * grid
    steps = patches if steps is None else min(steps, patches)
    counts = torch.linspace(0, patches, steps + 1).round().long()
    order = torch.argsort(saliency.flatten().cpu(), descending=True, stable=True)
    rank = torch.empty(patches, dtype=torch.long)
    rank[order] = torch.arange(patches)
    changed = (rank[None, :] < counts[:, None]).float().view(-1, 1, grid, grid)  # [n+1, 1, g, g]
    changed = changed.repeat_interleave(size // grid, -2).repeat_interleave(size // grid, -1)
    changed = changed.to(pixel_values.device)
    base = baseline_image(pixel_values, baseline)
    start, end = (pixel_values, base) if mode == "deletion" else (base, pixel_values)
    scores = []
    with torch.no_grad():
        for chunk in changed.split(batch_size):
            scores.append(score_fn(start * (1 - chunk) + end * chunk).float().cpu())
    return (counts.float() / patches).numpy(), torch.cat(scores).numpy()


def area_under(fractions, scores):
    """Trapezoid area under a curve sampled on [0, 1]."""
    return float(np.sum((scores[1:] + scores[:-1]) / 2 * np.diff(fractions)))


def deletion_auc(saliency, score_fn, pixel_values, **options):
    """Area under the score as the most salient patches are removed first: LOWER is more faithful."""
    return area_under(*perturbation_curve(saliency, score_fn, pixel_values, "deletion", **options))


def insertion_auc(saliency, score_fn, pixel_values, **options):
    """Area under the score as the most salient patches are revealed first: HIGHER is more faithful."""
    return area_under(*perturbation_curve(saliency, score_fn, pixel_values, "insertion", **options))


def prompt_probability(clip, texts, index):
    """score_fn for the curves: pixel_values [B, 3, S, S] -> [B] probability of prompt `index` among
    `texts` (prompts or [P, D] features); `clip` is a CLIPW or a transformers CLIPModel."""
    explainer = Explainer(clip)
    text_features = explainer.text_features(texts)

    def score(pixel_values):
        with torch.no_grad():
            features = explainer.image_features(pixel_values.to(text_features.device))
            return (explainer.logit_scale * features @ text_features.T).softmax(dim=-1)[:, index]
    return score


def random_maps(count, grid, seed=0):
    """[count, g, g] uniform random maps from a fixed seed (reproducible baselines)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, grid, grid, generator=generator)


def random_baseline(metric, grid, *args, count=20, seed=0, **kwargs):
    """Mean of metric(random_map, *args, **kwargs) over `count` random maps: the score of no explanation.
    E.g. random_baseline(pointing_game, 7, mask) or random_baseline(deletion_auc, 7, score_fn, pixels)."""
    return float(np.mean([float(metric(m, *args, **kwargs)) for m in random_maps(count, grid, seed)]))
