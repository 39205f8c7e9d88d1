"""The caption explained phrase by phrase: which words carry content, and the score a phrase map explains.

A content phrase is what the caption says about the item: a defect ("green mold"), linked to the knowledge-base
prompt it names (utils/caption_words.py's matcher), a healthy phrase ("fresh", "smooth unblemished skin"), or
the product kind ("apple"). Its score is the log-likelihood of its own words given the image, so its map
answers "where did the captioner see this", not "where did it see 'A fruit with'".
"""
import re
from dataclasses import dataclass

import torch

from models.explain import token_log_probs, vector_jacobians, word_log_probs, word_spans
from utils.caption_words import healthy_words, key_words, named_kinds, named_prompts


@dataclass
class Phrase:
    text: str  # the caption's own words, e.g. "green mold"
    words: list  # indices of the caption's whitespace-separated words it covers
    role: str  # "defect", "healthy", "kind" (or "caption": all of it)
    prompt: str | None = None  # id of the knowledge-base prompt (or kind) it names

    def as_dict(self):
        return {"text": self.text, "role": self.role, "prompt": self.prompt, "words": list(self.words)}


_PUNCTUATION = ".,;:!?"
_JOINERS = {"and", "with", "of", "in", "on", "a", "an", "the"}  # a description's words may span one


def _letters(word):
    return set(re.findall(r"[a-z]+", word.lower()))


def _plain(word):
    return re.sub(r"[^a-z]", "", word.lower())


def _span(caption_words, indices, role, prompt):
    return Phrase(" ".join(caption_words[i] for i in indices).strip(_PUNCTUATION), indices, role, prompt)


def _verbatim(caption_words, text, role, prompt):
    """The description's own words (its article aside) where the caption says them in a row, as a knowledge-base
    summary does ("a cut in the skin"); None when it does not."""
    wanted = [_plain(word) for word in text.split()]
    wanted = wanted[1:] if wanted[0] in ("a", "an", "the") and len(wanted) > 1 else wanted
    said = [_plain(word) for word in caption_words]
    for start in range(len(said) - len(wanted) + 1):
        if said[start:start + len(wanted)] == wanted:
            return _span(caption_words, list(range(start, start + len(wanted))), role, prompt)
    return None


def _runs(caption_words, wanted):
    """Runs of consecutive caption words that each say one of the `wanted` words; punctuation ends a run."""
    runs, run = [], []
    for index, word in enumerate(caption_words):
        says = bool(_letters(word) & wanted)
        if says:
            run.append(index)
        if run and (not says or word[-1] in _PUNCTUATION):
            runs, run = runs + [run], []
    return runs + [run] if run else runs


def _phrase(caption_words, wanted, role, prompt):
    """The caption's words for one description: the run of them that says the most `wanted` words, joined over
    one little word ("and") to a neighbouring run that says others. So a word two phrases share ("mold" in
    "blue mold, black mold") belongs to the phrase it stands in."""
    def said(indices):
        return set().union(*(_letters(caption_words[i]) & wanted for i in indices))

    runs = _runs(caption_words, wanted)
    if not runs:
        return None
    at = max(range(len(runs)), key=lambda r: len(said(runs[r])))
    best = runs[at]
    for other in runs[at + 1:at + 2] + runs[max(at - 1, 0):at]:  # the next run, then the one before
        first, last = sorted([best, other])
        gap = list(range(first[-1] + 1, last[0]))
        if (len(gap) == 1 and _letters(caption_words[gap[0]]) <= _JOINERS and said(other) - said(best)
                and caption_words[first[-1]][-1] not in _PUNCTUATION):
            best = first + gap + last
    return _span(caption_words, best, role, prompt)


def caption_phrases(caption, knowledge):
    """The caption's content phrases in reading order: each named defect and healthy prompt, leftover healthy
    words ("fresh"), and the product kind."""
    caption_words = [caption[start:end] for start, end in word_spans(caption)]
    found = []
    by_id = {p.id: p for p in knowledge.prompts}
    for healthy, role in ((False, "defect"), (True, "healthy")):
        for prompt_id in named_prompts(caption, knowledge, healthy=healthy):
            text = by_id[prompt_id].text
            found.append(_verbatim(caption_words, text, role, prompt_id)
                         or _phrase(caption_words, key_words(text, knowledge.domain), role, prompt_id))
    covered = {i for phrase in found if phrase for i in phrase.words}
    good = healthy_words(knowledge)
    for index, word in enumerate(caption_words):
        if index not in covered and _letters(word) & good:
            found.append(Phrase(word.strip(_PUNCTUATION), [index], "healthy"))
    nouns = {kind.id: kind.noun for kind in knowledge.kinds}
    for kind_id in named_kinds(caption, knowledge):
        found.append(_phrase(caption_words, {nouns[kind_id], nouns[kind_id] + "s"}, "kind", kind_id))
    return sorted((phrase for phrase in found if phrase), key=lambda phrase: phrase.words[0])


def token_words(captioner, caption):
    """The caption word (whitespace-separated) each caption token belongs to: the first word ending at or after
    the token's end, so a token of only spaces goes to the next word."""
    ends = [end for _, end in word_spans(caption)]
    offsets = captioner.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    return [next((i for i, end in enumerate(ends) if end >= token_end), len(ends) - 1) for _, token_end in offsets]


def phrase_scores(captioner, features, caption, phrases):
    """[n] log-likelihood of each phrase's words (the sum over its tokens) given the image embedding [1, D]."""
    per_word = word_log_probs(captioner, features, caption)
    membership = torch.zeros(len(phrases), len(per_word), dtype=per_word.dtype, device=per_word.device)
    for row, phrase in enumerate(phrases):
        membership[row, phrase.words] = 1.0
    return membership @ per_word


def _membership(captioner, caption, phrases):
    """[1 + n phrases, n_tokens + 1]: which of the caption's tokens (then EOS) each score sums: row 0 all of them
    (the caption map's target), row i the tokens of phrase i's words."""
    owners = token_words(captioner, caption)
    rows = torch.zeros(1 + len(phrases), len(owners) + 1)
    rows[0] = 1.0
    for i, phrase in enumerate(phrases):
        rows[1 + i, :len(owners)] = torch.tensor([float(word in phrase.words) for word in owners])
    return rows


def caption_jacobian(captioner, features, caption, phrases):
    """(scores [1 + n], their gradient w.r.t. the embedding [1 + n, D]): the log-likelihood of all the caption's
    tokens and EOS, then of each phrase's tokens. One LM pass and one backward vmapped over the scores (measured
    ~25% cheaper than one pass over a copy of the embedding per score, at OPT-125M and SmolLM2-135M sizes)."""
    leaf = features.detach().clone().requires_grad_()
    scores = _membership(captioner, caption, phrases).to(leaf) @ token_log_probs(captioner, leaf, caption)
    return scores.detach(), vector_jacobians(scores, [leaf])[0][:, 0]


class CaptionTarget:
    """Extra scores for an explanation pass: writes the caption from the pass's embedding, then scores all the
    caption's tokens (row 0: the caption map) and each content phrase's (rows 1..n), so their maps come from the
    same CLIP forward and batched backward as the prompt maps. Afterwards it holds the caption and its phrases."""

    def __init__(self, captioner, knowledge, generation, explain=True):
        self.captioner, self.knowledge, self.generation, self.explain = captioner, knowledge, generation, explain
        self.caption, self.phrases = "", []

    def __call__(self, features):
        self.caption = self.captioner.generate(embeddings=features.detach(), options=self.generation)[0]
        if not (self.explain and self.caption):
            return features.new_zeros(0)
        self.phrases = caption_phrases(self.caption, self.knowledge)
        scores, jacobian = caption_jacobian(self.captioner, features, self.caption, self.phrases)
        # the scores' values, with exactly their gradient: the backward into CLIP never runs through the LM again
        return scores + jacobian @ (features[0] - features[0].detach()).to(jacobian)
