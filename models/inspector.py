"""One image in; caption, top-k knowledge-base matches, their maps and overlays, and a verdict out (the app and
predict.py)."""
import dataclasses
import functools
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from models.clip import CLIPW
from models.config import GenerationOptions, InspectOptions
from models.explain import get_method
from models.kinds import kind_probabilities
from models.phrases import CaptionTarget
from models.verdict import Calibration, Verdict, judge, load_calibration
from models.views import explain_photo
from models.vlm import ClipCaptioner
from utils.caption_words import vocabulary
from utils.images import DEFAULT_MAX_PIXELS, load_image
from utils.knowledge import Kind, Prompt, load_knowledge
from utils.plot import combined_overlay, fit_for_display, individual_overlay, title_for
from utils.summarizer import summarize


@dataclass
class Inspection:
    caption: str  # from the captioner, or the knowledge-base summarizer in zero-shot mode
    top_k: list[tuple[Prompt, float]]  # best first; probabilities over the whole knowledge base
    maps: np.ndarray  # [k, h, w] in [0, 1] over `region` of the photo (CLIP's crop grid in the center view)
    caption_map: np.ndarray | None  # [h, w]; None in zero-shot mode or when not asked for
    combined: Image.Image
    overlays: list[Image.Image]  # one per top-k prompt, titled "text - 62.3%"
    caption_overlay: Image.Image | None
    probabilities: np.ndarray = None  # [n prompts] over the whole knowledge base, in file order
    verdict: Verdict = None  # pass / fail / review with the reasons
    kind: tuple[Kind, float] | None = None  # CLIP's likeliest product kind and its probability (None: no kinds)
    generation: GenerationOptions | None = None  # as the caption was written: a drawn seed is filled in
    view: str = "center"  # how the photo was looked at: center, letterbox or tiles
    tiles: int = 1  # tiles inspected (tiles view)
    region: tuple = None  # (left, top, right, bottom) shares of the photo the maps cover; None: CLIP's center crop
    phrases: list = dataclasses.field(default_factory=list)  # the caption's content phrases (models/phrases.Phrase)
    phrase_maps: np.ndarray | None = None  # [n phrases, h, w], same region
    phrase_overlays: list = dataclasses.field(default_factory=list)  # one per phrase, titled "phrase: green mold"


class Inspector:
    """Holds the models (read-only once loaded); every call to `inspect` is independent."""

    def __init__(self, clip, knowledge, captioner=None, source="", max_pixels=DEFAULT_MAX_PIXELS, calibration=None,
                 statistics=None):
        self.clip, self.knowledge, self.captioner = clip, load_knowledge(knowledge), captioner
        self.source, self.max_pixels = source, max_pixels
        self.sentences = self.knowledge.sentences()
        # the verdict's thresholds and the calibration photos' feature statistics (models/verdict.py)
        self.calibration, self.statistics = calibration or Calibration(), statistics

    @classmethod
    def load(cls, checkpoint=None, clip=None, lm=None, knowledge=None, device=None, lm_precision="fp32",
             max_pixels=DEFAULT_MAX_PIXELS):
        """A bundle directory (optionally with another LM or knowledge base), or a CLIP alone (zero-shot)."""
        if checkpoint is None:
            if clip is None:
                raise ValueError("give a trained bundle (checkpoint) or a CLIP for zero-shot mode")
            return cls(CLIPW.from_pretrained(clip, device), knowledge or "fruit", None, f"zero-shot {clip}",
                       max_pixels)
        captioner = ClipCaptioner.from_pretrained(checkpoint, device, lm_precision, lm=lm)
        inspector = cls(captioner.clip, knowledge or captioner.config.knowledge, captioner, str(checkpoint), max_pixels)
        inspector.calibration, inspector.statistics = load_calibration(checkpoint, inspector.knowledge)
        return inspector

    @property
    def caption_maps(self):
        """Whether caption maps can be drawn: any captioner (its fp32 LM passes the gradients at every precision)."""
        return self.captioner is not None

    def info(self):
        lm = self.captioner.config.lm if self.captioner else "none (zero-shot: knowledge-base summary)"
        return (f"CLIP {self.clip.name} | LM {lm} | bundle {self.source or '-'} | "
                f"knowledge {self.knowledge.name} ({len(self.sentences)} prompts) | device {self.clip.device} | "
                f"verdicts {'calibrated' if self.calibration.calibrated else 'not calibrated (default thresholds)'}")

    def inspect(self, image, options=None, generation=None, **overrides):
        """One photo -> Inspection. `options` an InspectOptions (keyword overrides change single settings),
        `generation` a GenerationOptions for the caption."""
        options = replace(options or InspectOptions(), **overrides)
        get_method(options.method)  # an unknown method fails before any work
        picture = load_image(image, max_pixels=self.max_pixels)
        generation = None if self.captioner is None else (generation or GenerationOptions()).with_seed()
        target = None if self.captioner is None else CaptionTarget(
            self.captioner, self.knowledge, generation, explain=options.caption_map and self.caption_maps)
        seen = explain_photo(self.clip, picture, self.sentences, [p.healthy for p in self.knowledge.prompts],
                             options.k, options.method, options.view, options.tile_side, extra=target)
        found = seen.explanation
        top_k = [(self.knowledge.prompts[self.sentences.index(s)], p) for s, p in zip(found.prompts, found.probs)]
        kind = self.kind_of(found.embedding)
        caption = summarize(top_k, self.knowledge, kind=kind and kind[0]) if target is None else target.caption
        region = None if seen.view == "center" else seen.region
        draw = _Drawing(fit_for_display(picture), options, region)
        labels = [prompt.text for prompt, _ in top_k]
        overlays = [draw.one(heatmap, title_for(label, prob)) for heatmap, label, (_, prob) in zip(found.maps, labels,
                                                                                                 top_k)]
        combined = combined_overlay(draw.display, list(found.maps), labels, found.probs, threshold=options.threshold,
                                    alpha=options.alpha, alpha_by_prob=options.alpha_by_prob, region=region)
        extra = seen.extra_maps
        caption_map, phrase_maps = (None, None) if extra is None else (extra[0], extra[1:])
        phrases = target.phrases if extra is not None else []
        probabilities, verdict = self.assess(picture, found.embedding, caption, seen.probabilities, generation)
        return Inspection(
            caption, top_k, found.maps, caption_map, combined, overlays,
            None if caption_map is None else draw.one(caption_map, f"caption: {caption}"), probabilities, verdict,
            kind, generation, seen.view, seen.tiles, region, phrases, phrase_maps,
            [draw.one(m, f"{p.role}: {p.text}") for p, m in zip(phrases, [] if phrase_maps is None else phrase_maps)])

    def record(self, found, options=None, generation=None):
        """What the operator was shown, as plain data: the app's details, a review's row, scripts."""
        verdict = found.verdict
        settings = dataclasses.asdict(options or InspectOptions())
        generation = generation or found.generation  # the drawn seed of a sampled caption, when it had one
        if generation is not None:
            settings["generation"] = dataclasses.asdict(generation)
        return {"caption": found.caption, "verdict": verdict.decision, "verdict_reasons": verdict.reasons,
                "caption_check": verdict.caption_check, "healthy_mass": round(verdict.healthy_mass, 6),
                "top_defect": verdict.top_defect, "top_defect_prob": round(verdict.top_defect_prob, 6),
                "distance": verdict.distance, "calibrated": verdict.calibrated,
                "kind": found.kind and found.kind[0].id, "view": found.view, "tiles": found.tiles,
                "phrases": [phrase.as_dict() for phrase in found.phrases],
                "top_k": [{"id": p.id, "text": p.text, "prob": round(float(prob), 6)} for p, prob in found.top_k],
                "bundle": self.source, "knowledge": self.knowledge.name, "settings": settings}

    def known_words(self, generation=None):
        """The words a caption may use without the caption check's notice: its captioner's training captions',
        the knowledge base's own (descriptions, kinds: constrained decoding and CLIP's kind write them) and the
        prefix text's; None (no check) for a bundle that does not list its training words or without a captioner."""
        if self._trained_words is None:
            return None
        return self._trained_words | vocabulary([generation.prefix_text if generation else ""])

    @functools.cached_property
    def _trained_words(self):
        """The prefix-free part of known_words, once per Inspector."""
        if self.captioner is None or self.captioner.caption_words is None:
            return None
        kb = self.knowledge
        given = [p.text for p in kb.prompts] + [k.noun for k in kb.kinds] + [kb.domain, kb.healthy_word]
        return self.captioner.caption_words | vocabulary(given)

    def assess(self, picture, embedding, caption, probabilities=None, generation=None):
        """(probabilities over the whole knowledge base, Verdict) for a loaded picture and its CLIP embedding
        (or the probabilities already known, e.g. aggregated over tiles); `generation` the caption's options."""
        if probabilities is None:
            with torch.no_grad():
                probabilities = self.clip.probabilities(embedding, self.sentences)[0].float().cpu().numpy()
        features = None
        if self.statistics is not None:  # one more forward, for the "far from the training photos" check
            features = self.clip.layer_features(self.clip.preprocess(picture), self.calibration.inputs.feature_layer)
        return probabilities, judge(picture, features, probabilities, caption, self.knowledge, self.calibration,
                                    self.statistics, self.known_words(generation))

    def kind_of(self, embedding):
        """(Kind, probability) CLIP ranks first among the knowledge base's kinds, or None without kinds."""
        probs = kind_probabilities(self.clip, embedding, self.knowledge)
        if probs is None:
            return None
        probs = probs[0]
        best = int(probs.argmax())
        return self.knowledge.kinds[best], float(probs[best])


class _Drawing:
    """The overlays of one inspection: one display-sized copy of the photo, its settings and the maps' region."""

    def __init__(self, display, options, region):
        self.display, self.options, self.region = display, options, region

    def one(self, heatmap, title):
        return individual_overlay(self.display, heatmap, title, alpha=self.options.alpha,
                                  threshold=self.options.threshold, region=self.region)
