"""One image in; caption, top-k knowledge-base matches, their maps and overlays out (the app and predict.py)."""
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.clip import CLIPW
from models.explain import METHODS, Explainer, explain_image
from models.vlm import ClipCaptioner
from utils.images import DEFAULT_MAX_PIXELS, load_image
from utils.knowledge import Prompt, load_knowledge
from utils.plot import combined_overlay, fit_for_display, individual_overlay, title_for
from utils.summarizer import summarize


@dataclass
class Inspection:
    caption: str  # from the captioner, or the knowledge-base summarizer in zero-shot mode
    top_k: list[tuple[Prompt, float]]  # best first; probabilities over the whole knowledge base
    maps: np.ndarray  # [k, g, g] in [0, 1] on CLIP's crop grid
    caption_map: np.ndarray | None  # [g, g]; None in zero-shot mode or when not asked for
    combined: Image.Image
    overlays: list[Image.Image]  # one per top-k prompt, titled "text - 62.3%"
    caption_overlay: Image.Image | None


class Inspector:
    """Holds the models (read-only once loaded); every call to `inspect` is independent."""

    def __init__(self, clip, knowledge, captioner=None, source="", max_pixels=DEFAULT_MAX_PIXELS):
        self.clip, self.knowledge, self.captioner = clip, load_knowledge(knowledge), captioner
        self.source, self.max_pixels = source, max_pixels
        self.sentences = self.knowledge.sentences()

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
        return cls(captioner.clip, knowledge or captioner.config.knowledge, captioner, str(checkpoint), max_pixels)

    def info(self):
        lm = self.captioner.config.lm if self.captioner else "none (zero-shot: knowledge-base summary)"
        return (f"CLIP {self.clip.name} | LM {lm} | bundle {self.source or '-'} | "
                f"knowledge {self.knowledge.name} ({len(self.sentences)} prompts) | device {self.clip.device}")

    def inspect(self, image, *, k=5, method="gradcam", threshold=0.5, alpha=0.5, alpha_by_prob=False,
                with_caption_map=True, generation=None):
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}': choose one of {METHODS}")
        picture = load_image(image, max_pixels=self.max_pixels)
        found = explain_image(self.clip, picture, self.sentences, k=k, method=method)
        top_k = [(self.knowledge.prompts[self.sentences.index(s)], p) for s, p in zip(found.prompts, found.probs)]
        caption, caption_map = self._caption(picture, found.embedding, top_k, with_caption_map, generation or {})
        display = fit_for_display(picture)
        labels = [prompt.text for prompt, _ in top_k]
        overlays = [
            individual_overlay(display, heatmap, title_for(label, prob), alpha=alpha, threshold=threshold)
            for heatmap, label, (_, prob) in zip(found.maps, labels, top_k)
        ]
        combined = combined_overlay(display, list(found.maps), labels, found.probs, threshold=threshold,
                                    alpha=alpha, alpha_by_prob=alpha_by_prob)
        caption_overlay = None if caption_map is None else individual_overlay(
            display, caption_map, f"caption: {caption}", alpha=alpha, threshold=threshold)
        return Inspection(caption, top_k, found.maps, caption_map, combined, overlays, caption_overlay)

    def _caption(self, picture, embedding, top_k, with_caption_map, generation):
        if self.captioner is None:
            return summarize(top_k, self.knowledge), None
        caption = self.captioner.generate(embeddings=embedding, **generation)[0]  # the explain pass's embedding
        if not (with_caption_map and caption) or self.captioner.lm_precision == "int8":
            return caption, None
        heatmap = Explainer(self.clip).caption_map(self.captioner, self.clip.preprocess(picture), caption)[0]
        return caption, heatmap.cpu().numpy()
