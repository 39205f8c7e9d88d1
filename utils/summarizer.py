"""Ranked knowledge-base prompts -> one plain sentence, e.g. "An apple with green mold and a brown bruise"."""
from __future__ import annotations

import math

from utils.knowledge import HEALTHY_WORD, Kind, KnowledgeBase, Prompt, indefinite_article

MIN_SHARE = 0.1  # a second or third defect is named when it holds this share of the ranked prompts' mass
_SEVERITY_ORDER = {"severe": 0, "moderate": 1, "mild": 2}
_DANGLING = {"a", "an", "the", "and", "or", "with", "of", "that", "may", "have"}
_PUNCTUATION = " ,;:.!?"


def summarize(top_k, knowledge: KnowledgeBase, *, kind: Kind | str | None = None, max_defects: int = 3,
              min_share: float = MIN_SHARE, hedge_share: float = 0.4, healthy_word: str | None = None) -> str:
    """One sentence for [(prompt, probability), ...] in any order.

    Healthy when the top prompt is healthy or healthy mass >= defect mass; otherwise up to `max_defects`
    defects by probability, dropping those under `min_share` of the total (the top one always stays).
    "may have" replaces "with" when healthy prompts still hold >= `hedge_share` of the mass.
    A prompt may be a Prompt, or a string naming one by id, text or templated sentence. `kind` (a Kind or
    a kind id of the knowledge base) names the product ("An apple with ..."); without one the domain noun.
    `healthy_word` (default: the knowledge base's, "fresh" unless it says otherwise) names a good item.
    """
    weights = _merge(top_k, knowledge)
    total = sum(weights.values())
    noun = noun_for(kind, knowledge)
    if total <= 0:
        return _sentence(f"a {noun}")
    position = {id: i for i, id in enumerate(knowledge.ids())}
    # Ties go to defects (an inspector would rather look twice), then to the more severe, then file order.
    ranked = sorted(weights, key=lambda p: (-weights[p], p.healthy, _SEVERITY_ORDER.get(p.severity, 3),
                                            position.get(p.id, len(position)), p.id))
    healthy_mass = sum(weights[p] for p in ranked if p.healthy)
    if ranked[0].healthy or healthy_mass >= total - healthy_mass:
        best = next(p for p in ranked if p.healthy)
        return healthy_sentence(noun, best, knowledge.healthy_word if healthy_word is None else healthy_word)
    defects = [p for p in ranked if not p.healthy]
    kept = defects[:1] + [p for p in defects[1:] if weights[p] >= min_share * total]
    return defect_sentence(noun, kept, hedged=healthy_mass >= hedge_share * total, max_defects=max_defects)


def summarize_top(probabilities, knowledge: KnowledgeBase, top_k: int, *, kind: Kind | str | None = None,
                  min_share: float = MIN_SHARE) -> str:
    """The auto-label caption of one image (train/label.py): the summary of its `top_k` likeliest prompts.
    `probabilities`: one per knowledge-base prompt, in the knowledge base's order."""
    ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:top_k]
    return summarize([(knowledge.prompts[i], float(probabilities[i])) for i in ranked], knowledge, kind=kind,
                     min_share=min_share)


def noun_for(kind, knowledge: KnowledgeBase) -> str:
    """The noun a caption names the product by: the kind's (a Kind or a kind id), else the domain's."""
    if kind is None:
        return knowledge.domain
    return kind.noun if isinstance(kind, Kind) else knowledge.kind(kind).noun


def healthy_sentence(noun: str, prompt: Prompt, healthy_word: str = HEALTHY_WORD) -> str:
    """ "A fresh apple with smooth unblemished skin." """
    return _sentence(f"{opening(noun, 'healthy', healthy_word)} {' '.join(phrase_texts([prompt]))}")


def defect_sentence(noun: str, prompts, hedged: bool = False, max_defects: int | None = None) -> str:
    """ "An apple with green mold and a brown bruise." ("that may have" when hedged); the first
    `max_defects` phrases, repeats dropped."""
    phrases = phrase_texts(prompts)[:None if max_defects is None else max(1, max_defects)]
    return _sentence(f"{opening(noun, 'hedged' if hedged else 'defect')} {join_phrases(phrases)}")


MODES = ("healthy", "defect", "hedged")  # the sentence openings below


def opening(noun: str, mode: str, healthy_word: str = HEALTHY_WORD) -> str:
    """The words before the phrases: "A fresh apple with" (healthy), "An apple with" (defect),
    "An apple that may have" (hedged)."""
    words = {"healthy": f"a {healthy_word} {noun} with", "defect": f"a {noun} with",
             "hedged": f"a {noun} that may have"}[mode]
    text = " ".join(_fix_articles(words.split()))
    return text[:1].upper() + text[1:]


def phrase_texts(prompts) -> list[str]:
    """Prompt texts as a sentence writes them: no leading connectives or end punctuation, right a/an;
    duplicates (ignoring an article) dropped."""
    return [" ".join(_fix_articles(phrase.split())) for phrase in _phrases(prompts)]


def join_phrases(phrases: list[str]) -> str:
    """ "a, b and c" """
    return " and ".join(phrases) if len(phrases) <= 2 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _merge(top_k, knowledge: KnowledgeBase) -> dict[Prompt, float]:
    """Sum probabilities per prompt id (repeats happen when callers concatenate lists)."""
    by_id, weights = {}, {}
    for prompt, probability in top_k:
        prompt = _resolve(prompt, knowledge)
        prompt = by_id.setdefault(prompt.id, prompt)
        p = float(probability)
        weights[prompt] = weights.get(prompt, 0.0) + (p if math.isfinite(p) and p > 0 else 0.0)
    return weights


def _resolve(prompt, knowledge: KnowledgeBase) -> Prompt:
    if isinstance(prompt, Prompt):
        return prompt
    for names in (knowledge.ids(), knowledge.sentences(), [p.text for p in knowledge.prompts]):
        if prompt in names:
            return knowledge.prompts[names.index(prompt)]
    raise KeyError(f"{prompt!r} is not a prompt of knowledge base {knowledge.name!r}")


def _phrases(prompts) -> list[str]:
    """Prompt texts without leading connectives or end punctuation; duplicates (ignoring an article) dropped."""
    phrases, seen = [], set()
    for prompt in prompts:
        words = prompt.text.split()
        while words and words[0].lower() in ("with", "and"):  # the sentence supplies its own connectives
            words.pop(0)
        text = " ".join(words).strip(_PUNCTUATION)
        key = text.lower().removeprefix("a ").removeprefix("an ").removeprefix("the ")
        if text and key not in seen:
            seen.add(key)
            phrases.append(text)
    return phrases


def _sentence(text: str) -> str:
    """Tidy whatever the prompt texts produced: no doubled or dangling words, right a/an, one full stop."""
    words = []
    for word in text.split():
        if not words or word.lower() != words[-1].lower():
            words.append(word)
    while len(words) > 1 and words[-1].strip(_PUNCTUATION).lower() in _DANGLING | {""}:
        words.pop()
    sentence = " ".join(_fix_articles(words)).rstrip(_PUNCTUATION)
    return sentence[:1].upper() + sentence[1:] + "."


def _fix_articles(words: list[str]) -> list[str]:
    """ "a" or "an", whichever the next word needs, keeping the capital."""
    words = list(words)
    for i, word in enumerate(words[:-1]):
        if word.lower() in ("a", "an"):
            article = indefinite_article(words[i + 1]) or word.lower()
            words[i] = article.capitalize() if word[0].isupper() else article
    return words

