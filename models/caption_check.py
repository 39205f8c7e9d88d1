"""Does the caption agree with what CLIP sees? The generated caption's named descriptions against CLIP's
probabilities over the knowledge base.

The captioner writes from the image embedding through a mapper and a language model; CLIP's ranking of the
knowledge base is a second, independent reading of the same embedding. Where the two disagree, one of them
is wrong and an operator should look: the caption names a defect CLIP gives little probability, leaves out
the defect CLIP is sure of, or calls an item fresh that CLIP sees as defective. A caption using words that none
of the captioner's training captions used shows the language model writing off its training, as on a photo
unlike any it was trained for.
"""
from dataclasses import dataclass, field

import numpy as np

from utils.caption_words import named_prompts, says_healthy, unknown_words


@dataclass
class CaptionRules:
    """When a caption counts as contradicting the probabilities (stored with the bundle's calibration).

    Chosen on the demo's calibration world (seed 2, 600 images): a named defect under 10%, or an unnamed one
    at 30% or more, flagged 37% of the wrong captions for 6% of the right ones. Most wrong captions repeat
    CLIP's own mistake (the captioner learned from CLIP's labels), which no comparison with CLIP can see."""
    min_named_prob: float = 0.1  # a defect the caption names must have at least this probability
    missing_prob: float = 0.3  # a defect this likely must be named
    defect_mass: float = 0.5  # "fresh" is wrong when the defect prompts hold at least this much


@dataclass
class CaptionCheck:
    named: list  # ids of the defect prompts the caption names
    fresh: bool  # the caption calls the item good
    problems: list = field(default_factory=list)  # plain sentences, empty when the caption agrees

    @property
    def agrees(self):
        return not self.problems

    def summary(self):
        if self.agrees:
            return "agrees with the evidence"
        return "the caption disagrees with the evidence: " + "; ".join(self.problems)


def check_caption(caption, probabilities, knowledge, rules=None, known_words=None):
    """CaptionCheck of `caption` against `probabilities` (one per knowledge-base prompt, in file order) and, when
    given, `known_words` (the vocabulary of the captioner's training captions, utils.caption_words)."""
    rules = rules or CaptionRules()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    prompts = knowledge.prompts
    named = named_prompts(caption, knowledge)
    fresh = says_healthy(caption, knowledge)
    defect_rows = [i for i, p in enumerate(prompts) if not p.healthy]
    defect_mass = float(probabilities[defect_rows].sum())
    problems = []
    for i in (knowledge.index(id) for id in named):
        if probabilities[i] < rules.min_named_prob:
            problems.append(f"it names {prompts[i].text}, which CLIP gives {probabilities[i]:.1%}")
    missing = sorted((i for i in defect_rows if probabilities[i] >= rules.missing_prob and prompts[i].id not in named),
                     key=lambda i: -probabilities[i])
    for i in missing:
        problems.append(f"it leaves out {prompts[i].text}, which CLIP gives {probabilities[i]:.0%}")
    if fresh and named:
        problems.append(f"it calls the item {knowledge.healthy_word} and names a defect")
    elif fresh and defect_mass >= rules.defect_mass:
        problems.append(f"it calls the item {knowledge.healthy_word} but CLIP gives the defects {defect_mass:.0%}")
    if not fresh and not named:
        problems.append("it names nothing from the knowledge base")
    unknown = unknown_words(caption, known_words) if known_words is not None else []
    if unknown:
        said = ", ".join(f'"{word}"' for word in unknown)
        problems.append(f"it says {said}, which none of the captioner's training captions says")
    return CaptionCheck(named, fresh, problems)
