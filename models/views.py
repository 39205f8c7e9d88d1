"""How one photo is looked at: CLIP's center crop, the photo letterboxed into a square, or overlapping tiles
(models/tiling.py), each giving the top-k prompts with a map each, in the photo's own coordinates.

An `extra` target (models/phrases.py CaptionTarget) adds scores to the pass that the caption is written from,
so their maps share its forward and batched backward with the prompt maps.
"""
from dataclasses import dataclass

import numpy as np
import torch

from models import tiling
from models.explain import Explainer, Explanation, get_method, prompt_scores
from utils.images import center_crop_box


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


@dataclass(frozen=True)
class PhotoTiles:
    """A photo as the tiles view reads it, one row per photo (what utils/encoding.py encode_shards stores): every
    square tile encoded, then reduced to the embedding of the most defective tile (the one the app writes the
    caption from) with that tile's probabilities, or with `aggregate` the probabilities aggregated over the tiles,
    as the verdict reads them. A square photo is its own one tile, i.e. CLIP's own view of it."""
    healthy: tuple  # [P] bools: which prompts are healthy
    aggregate: bool = False
    tile_side: int = 0

    @property
    def key(self) -> str:
        """Everything the rows depend on besides the CLIP and the prompts (a resumed run's shards must match)."""
        healthy = "".join("1" if flag else "0" for flag in self.healthy)
        return f"tiles side={self.tile_side} aggregate={self.aggregate} healthy={healthy}"

    def crops(self, picture):
        """The photo's square tiles, row by row."""
        return [picture.crop(box) for box in tiling.tile_boxes(*picture.size, self.tile_side)]

    def reduce(self, embeddings, probabilities):
        """One photo's tiles ([t, D], [t, P]) -> its row ([D], [P])."""
        scores = probabilities.float().cpu().numpy()
        best = tiling.most_defective(scores, self.healthy)
        if not self.aggregate:
            return embeddings[best], probabilities[best]
        return embeddings[best], torch.from_numpy(tiling.aggregate(scores, self.healthy)).to(probabilities)

    def reduce_photos(self, embeddings, probabilities, counts):
        """Several photos' tiles ([T, D], [T, P], tiles per photo) -> their rows ([n, D], [n, P])."""
        rows = [self.reduce(*photo) for photo in zip(embeddings.split(counts), probabilities.split(counts))]
        return torch.stack([e for e, _ in rows]), torch.stack([p for _, p in rows])

    @torch.no_grad()
    def encode(self, clip, pictures, prompts):
        """Loaded photos -> ([n, D] embeddings, [n, P] probabilities over `prompts`), their tiles in one batch."""
        tiles = [self.crops(picture) for picture in pictures]
        embeddings = clip.encode_images([tile for photo in tiles for tile in photo])
        probabilities = clip.probabilities(embeddings, list(prompts))
        return self.reduce_photos(embeddings, probabilities, [len(photo) for photo in tiles])


def photo_reading(clip, picture, prompts, healthy, view="tiles", tile_side=0):
    """What a view reads of a loaded photo, without maps: ([1, D] the embedding the caption is written from,
    [P] the probabilities the verdict reads), as explain_photo would give them."""
    if view == "tiles":
        tiles = PhotoTiles(tuple(map(bool, healthy)), aggregate=True, tile_side=tile_side)
        embedding, probabilities = tiles.encode(clip, [picture], prompts)
    elif view in tiling.VIEWS:
        embedding = clip.encode_images([tiling.letterbox(picture)[0] if view == "letterbox" else picture])
        probabilities = clip.probabilities(embedding, list(prompts))
    else:
        raise ValueError(f"unknown view '{view}': choose one of {', '.join(tiling.VIEWS)}")
    return embedding, probabilities[0].float().cpu().numpy()


def photo_probabilities(clip, pictures, prompts, healthy):
    """[n, P] probabilities of loaded photos as the tiles view (the app's default) scores them, without maps."""
    tiles = PhotoTiles(tuple(map(bool, healthy)), aggregate=True)
    return tiles.encode(clip, pictures, prompts)[1].float().cpu().numpy()


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
