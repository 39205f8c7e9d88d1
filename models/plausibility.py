"""Is this a usable product photo at all? Checks that send an input to review before anyone trusts a caption.

CLIP ranks the knowledge base for any input, a 1x1 pixel or a screenshot included, and the captioner writes
a fluent sentence for it; neither says "I have never seen anything like this". These checks do: too few
pixels, a flat (blank) picture, no colour where the bundle was calibrated on colour photos (mold colours,
bruises cannot be judged), and image features far from those of the photos the bundle was calibrated on.

The distance is a Mahalanobis distance on CLIP's middle-block patch features (Lee et al. 2018 use inner
layers the same way), not on the final embedding: a CLIP trained on one domain maps everything into that
domain, and on the demo CLIP noise and graphics land as close to the fruit photos as fruit photos do
(cosine distance 0.03-0.08 against 0.03 typical), while their middle-block features lie 30-45 away against
at most 19 for held-out fruit photos.
"""
from dataclasses import dataclass

import numpy as np

THUMBNAIL = 128  # the pixel checks look at a small copy: cheap for any photo, and noise averages out


@dataclass
class InputRules:
    """What counts as a usable photo (stored with the bundle's calibration)."""
    min_side: int = 32  # pixels on the shorter side
    min_contrast: float = 4.0  # standard deviation of the grey levels (0-255) of a photo with anything in it
    # True: calibrated on colour photos, so a grayscale one cannot be judged; False: a grayscale domain (solar
    # cells); None: not calibrated, nothing known either way (no check)
    colour: bool | None = None
    grey_tolerance: float = 4.0  # mean spread between the colour channels (0-255) below which a photo is grey
    max_distance: float | None = None  # Mahalanobis distance of the photo's features; None = no check
    feature_layer: int | None = None  # the vision block whose patch features are compared (None: the middle)


def image_problems(picture, rules=None):
    """Plain sentences for what makes a PIL image unusable; empty when it looks like a photo."""
    rules = rules or InputRules()
    problems = []
    width, height = picture.size
    if min(width, height) < rules.min_side:
        problems.append(f"the image is only {width}x{height} pixels (at least {rules.min_side} on the shorter "
                        "side are needed to see a defect)")
    small = np.asarray(_thumbnail(picture), dtype=np.float32)
    if small.mean(axis=2).std() < rules.min_contrast:
        problems.append("the image is one flat colour: blank, or not a photo of an item")
    elif rules.colour and colour_spread(small) < rules.grey_tolerance:
        problems.append("the photo has no colour (grayscale) but this bundle was calibrated on colour photos: "
                        "colour-defined defects such as mold or bruises cannot be judged")
    return problems


def _thumbnail(picture):
    picture = picture.convert("RGB")
    if max(picture.size) > THUMBNAIL:
        picture = picture.copy()
        picture.thumbnail((THUMBNAIL, THUMBNAIL))
    return picture


def colour_spread(pixels):
    """Mean over pixels of (largest - smallest channel): 0 for a grayscale photo stored as RGB."""
    return float((pixels.max(axis=2) - pixels.min(axis=2)).mean())


def is_grayscale(picture, rules=None):
    rules = rules or InputRules()
    return colour_spread(np.asarray(_thumbnail(picture), dtype=np.float32)) < rules.grey_tolerance


def fit_statistics(features, shrinkage=0.01):
    """(mean, precision) of in-distribution features [n, d]; the covariance is shrunk toward its average
    variance, so a few hundred photos suffice for a few hundred dimensions."""
    features = np.asarray(features, dtype=np.float64)
    covariance = np.cov(features, rowvar=False)
    target = np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    return features.mean(axis=0), np.linalg.inv((1 - shrinkage) * covariance + shrinkage * target)


def feature_distance(features, mean, precision):
    """Mahalanobis distance of each feature row [n, d] to the photos the statistics were fitted on."""
    centred = np.asarray(features, dtype=np.float64).reshape(-1, len(mean)) - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, precision, centred))


def distance_problem(distance, rules, domain="product"):
    """A sentence when the photo's features lie farther from the training photos' than the calibrated limit."""
    if rules.max_distance is None or distance <= rules.max_distance:
        return None
    return (f"the photo is far from the {domain} photos this bundle was calibrated on (distance {distance:.1f}, "
            f"limit {rules.max_distance:.1f}): it may not be a {domain} photo")
