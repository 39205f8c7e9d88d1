"""How one photo is looked at: CLIP's center crop, the photo letterboxed into a square, or overlapping tiles
(models/tiling.py), each giving the top-k prompts with a map each, in the photo's own coordinates.

An `extra` target (models/phrases.py CaptionTarget) adds scores to the pass that the caption is written from,
so their maps share its forward and batched backward with the prompt maps.
"""
from dataclasses import dataclass, replace

import numpy as np
import torch

from models import tiling
from models.explain import Explainer, Explanation, get_method, prompt_scores
from utils.images import center_crop_box, load_image


@dataclass
class PhotoExplanation:
    explanation: Explanation  # maps [k, h, w] over explanation.crop_box of the photo; probabilities aggregated
    extra_maps: np.ndarray | None  # [n, h, w] maps of the extra target's scores, same box
    view: str  # "center", "letterbox" or "tiles"
    tiles: int = 1  # how many tiles were inspected (1 for the other views)
    probabilities: np.ndarray = None  # [P] over every prompt (aggregated over tiles)

    @property
    def region(self):
        """The box the maps cover, as shares of the photo's width and height (utils/plot.py's `region`)."""
        (left, top, right, bottom), (width, height) = self.explanation.crop_box, self.explanation.image_size
        return left / width, top / height, right / width, bottom / height


def _split(maps, k):
    maps = maps.cpu().numpy().astype(np.float32)
    return maps[:k], (maps[k:] if len(maps) > k else None)


class _Pass:
    """One explanation pass over one square picture: the top-k prompts (chosen in the pass, or given), then the
    extra target's scores appended."""

    def __init__(self, explainer, text_features, k, method, extra=None, indices=None):
        self.explainer, self.text_features, self.k, self.method = explainer, text_features, k, method
        self.extra, self.indices = extra, indices

    def __call__(self, features):
        logits = self.explainer.logit_scale * features[0] @ self.text_features.T
        self.probs = logits.detach().softmax(-1)
        if self.indices is None:
            self.indices = self.probs.topk(self.k).indices
        self.embedding = features.detach()
        scores = prompt_scores(features, self.text_features, self.explainer.logit_scale, self.method.target)
        scores = scores[self.indices]
        return scores if self.extra is None else torch.cat([scores, self.extra(features).to(scores.dtype)])

    def run(self, pixel_values):
        return self.explainer.explain(pixel_values, self, self.method)


def explain_photo(clip, picture, prompts, healthy, k=5, method="relevancy", view="tiles", tile_side=0, extra=None):
    """Top-k prompts of a loaded photo, a map each in the photo's coordinates, and the extra target's maps.
    `healthy` [P] marks the healthy prompts (tiles: a defect seen in any tile counts)."""
    with torch.inference_mode(False), torch.enable_grad():  # the caller may be under no_grad / inference_mode
        return _explain_photo(clip, picture, prompts, healthy, k, method, view, tile_side, extra)


@torch.no_grad()
def _encode_tiles(clip, pictures, prompts, tile_side=0):
    """Every loaded photo's square tiles, encoded together: (embeddings [T, D], probabilities [T, P], each
    photo's slice of the T tiles). A square photo is its own one tile, i.e. CLIP's own view of it."""
    tiles = [[picture.crop(box) for box in tiling.tile_boxes(*picture.size, tile_side)] for picture in pictures]
    embeddings = clip.encode_images([tile for photo in tiles for tile in photo])
    ends = np.cumsum([len(photo) for photo in tiles])
    slices = [slice(end - len(photo), end) for end, photo in zip(ends, tiles)]
    return embeddings, clip.probabilities(embeddings, list(prompts)), slices


def photo_probabilities(clip, pictures, prompts, healthy, tile_side=0):
    """[n, P] probabilities of loaded photos as the tiles view (the app's default) scores them, without maps:
    each photo's tiles, aggregated (models/tiling.py)."""
    _, probabilities, slices = _encode_tiles(clip, pictures, prompts, tile_side)
    probabilities = probabilities.float().cpu().numpy()
    return np.stack([tiling.aggregate(probabilities[part], healthy) for part in slices]).astype(np.float32)


def caption_tiles(clip, pictures, prompts, healthy, tile_side=0):
    """([n, D] embeddings, [n, P] probabilities) of each loaded photo's most defective tile, the one the tiles
    view writes the caption from."""
    embeddings, probabilities, slices = _encode_tiles(clip, pictures, prompts, tile_side)
    scores = probabilities.float().cpu().numpy()
    best = [part.start + tiling.most_defective(scores[part], healthy) for part in slices]
    return embeddings[best], probabilities[best]


def wide_photos(names, root, max_pixels, batch_size=32, progress=False):
    """(rows, loaded photos) in batches, for the wider or taller photos among a folder's `names`: the ones whose
    tiles view differs from CLIP's center square (a square photo is decoded no further than its header)."""
    from pathlib import Path

    from PIL import Image
    from tqdm.auto import tqdm

    def square(name):
        with Image.open(Path(root) / name) as image:  # a turn (EXIF) keeps a square square
            return image.width == image.height

    rows = [row for row, name in enumerate(names) if not square(name)]
    for start in tqdm(range(0, len(rows), batch_size), desc="tiles", unit="batch", disable=not progress):
        chunk = rows[start:start + batch_size]
        yield chunk, [load_image(Path(root) / names[row], max_pixels=max_pixels) for row in chunk]


def from_caption_tiles(encoded, root, clip, knowledge, max_pixels, progress=False):
    """A folder's encodings (utils/encoding.py Encoded, CLIP's center squares) with every wider or taller photo's
    replaced by its caption tile's (embedding, and probabilities when it has them), so a dataset learns from
    what the app will caption. Square photos keep theirs (their one tile)."""
    embeddings, probabilities = encoded.embeddings.clone(), encoded.probabilities.clone()
    for rows, pictures in wide_photos(encoded.names, root, max_pixels, progress=progress):
        tile_embeddings, tile_probs = caption_tiles(clip, pictures, knowledge.sentences(), knowledge.healthy_mask())
        embeddings[rows] = tile_embeddings.to(embeddings)
        if probabilities.shape[1]:
            probabilities[rows] = tile_probs.to(probabilities)
    return replace(encoded, embeddings=embeddings, probabilities=probabilities)


def _explain_photo(clip, picture, prompts, healthy, k, method, view, tile_side, extra):
    method, explainer = get_method(method), Explainer(clip)
    text_features = explainer.text_features(prompts)
    k = min(k, len(prompts))
    width, height = picture.size
    boxes = tiling.tile_boxes(width, height, tile_side) if view == "tiles" else []
    if len(boxes) > 1:
        return _tiles(clip, explainer, picture, boxes, text_features, prompts, healthy, k, method, extra)
    if view not in tiling.VIEWS:
        raise ValueError(f"unknown view '{view}': choose one of {', '.join(tiling.VIEWS)}")
    square, box = (tiling.letterbox(picture) if view == "letterbox" else (picture, center_crop_box(width, height)))
    one = _Pass(explainer, text_features, k, method, extra)
    maps, extra_maps = _split(one.run(clip.preprocess(square)), k)
    if view == "letterbox":  # the maps cropped to the photo inside the square cover the whole photo
        maps, extra_maps = (None if m is None else tiling.crop_letterbox(m, box, square.size[0])
                            for m in (maps, extra_maps))
        box = (0, 0, width, height)
    probs = one.probs.cpu().numpy()
    found = Explanation([prompts[i] for i in one.indices.tolist()], probs[one.indices.cpu().numpy()].tolist(), maps,
                        box, picture.size, method.name, one.embedding)
    return PhotoExplanation(found, extra_maps, "tiles" if view == "tiles" else view, 1, probs)


class _TileChoice:
    """From every tile's embedding: the top-k prompts of the aggregate, the most defective tile, and one _Pass per
    tile for those prompts, the extra target only on that tile (the caption is written from it)."""

    def __init__(self, explainer, text_features, healthy, k, method, extra):
        self.explainer, self.text_features, self.healthy = explainer, text_features, healthy
        self.k, self.method, self.extra = k, method, extra

    def __call__(self, embeddings):
        logits = self.explainer.logit_scale * torch.cat(embeddings) @ self.text_features.T
        self.tile_probs = logits.softmax(-1).float().cpu().numpy()
        self.merged = tiling.aggregate(self.tile_probs, self.healthy)
        self.indices = np.argsort(-self.merged, kind="stable")[:self.k]
        self.tile = tiling.most_defective(self.tile_probs, self.healthy)
        self.passes = [_Pass(self.explainer, self.text_features, self.k, self.method,
                             self.extra if index == self.tile else None, torch.as_tensor(self.indices))
                       for index in range(len(embeddings))]
        return self.passes


def _tiles(clip, explainer, picture, boxes, text_features, prompts, healthy, k, method, extra):
    """One recorded forward per tile, the choice made from all of them (_TileChoice), then each tile's backward."""
    choice = _TileChoice(explainer, text_features, healthy, k, method, extra)
    pixels = clip.preprocess([picture.crop(box) for box in boxes])
    tile_maps, extras = zip(*(_split(maps, k) for maps in explainer.explain_each(pixels, choice, method)))
    embedding, extra_maps = choice.passes[choice.tile].embedding, extras[choice.tile]
    tile_probs, merged, indices = choice.tile_probs, choice.merged, choice.indices
    weights = tile_probs[:, indices] / np.maximum(tile_probs[:, indices].max(axis=0), 1e-12)
    maps = tiling.stitch(np.stack(tile_maps), boxes, picture.size, weights)
    if extra_maps is not None:
        only_chosen = np.zeros((len(boxes), len(extra_maps)), np.float32)
        only_chosen[choice.tile] = 1.0
        stacked = np.zeros((len(boxes), *extra_maps.shape), np.float32)
        stacked[choice.tile] = extra_maps
        extra_maps = tiling.stitch(stacked, boxes, picture.size, only_chosen)
    found = Explanation([prompts[i] for i in indices], merged[indices].tolist(), maps,
                        (0, 0, *picture.size), picture.size, method.name, embedding)
    return PhotoExplanation(found, extra_maps, "tiles", len(boxes), merged.astype(np.float32))
