"""Ranked knowledge-base prompts -> one plain sentence, e.g. "A fruit with green mold and a brown bruise"."""
from __future__ import annotations

import math

from utils.knowledge import KnowledgeBase, Prompt

_SEVERITY_ORDER = {"severe": 0, "moderate": 1, "mild": 2}
_DANGLING = {"a", "an", "the", "and", "or", "with", "of", "that", "may", "have"}
_PUNCTUATION = " ,;:.!?"
# Spelling says vowel but sound says consonant ("a unicorn"), and the reverse ("an hour").
_A_BEFORE = ("uni", "use", "usu", "uti", "ure", "eu", "ewe", "one", "once")
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")


def summarize(top_k, knowledge: KnowledgeBase, *, max_defects: int = 3, min_share: float = 0.1,
              hedge_share: float = 0.4, healthy_word: str | None = None) -> str:
    """One sentence for [(prompt, probability), ...] in any order.

    Healthy when the top prompt is healthy or healthy mass >= defect mass; otherwise up to `max_defects`
    defects by probability, dropping those under `min_share` of the total (the top one always stays).
    "may have" replaces "with" when healthy prompts still hold >= `hedge_share` of the mass.
    A prompt may be a Prompt, or a string naming one by id, text or templated sentence. `healthy_word`
    (default: the knowledge base's, "fresh" unless it says otherwise) names a good item.
    """
    weights = _merge(top_k, knowledge)
    total = sum(weights.values())
    domain = knowledge.domain
    if total <= 0:
        return _sentence(f"a {domain}")
    position = {id: i for i, id in enumerate(knowledge.ids())}
    # Ties go to defects (an inspector would rather look twice), then to the more severe, then file order.
    ranked = sorted(weights, key=lambda p: (-weights[p], p.healthy, _SEVERITY_ORDER.get(p.severity, 3),
                                            position.get(p.id, len(position)), p.id))
    healthy_mass = sum(weights[p] for p in ranked if p.healthy)
    if ranked[0].healthy or healthy_mass >= total - healthy_mass:
        best = next(p for p in ranked if p.healthy)
        return _sentence(f"a {healthy_word or knowledge.healthy_word} {domain} with {best.text}")
    defects = [p for p in ranked if not p.healthy]
    kept = defects[:1] + [p for p in defects[1:] if weights[p] >= min_share * total]
    verb = "that may have" if healthy_mass >= hedge_share * total else "with"
    return _sentence(f"a {domain} {verb} {_join(_phrases(kept)[:max(1, max_defects)])}")


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


def _join(phrases: list[str]) -> str:
    return " and ".join(phrases) if len(phrases) <= 2 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _sentence(text: str) -> str:
    """Tidy whatever the prompt texts produced: no doubled or dangling words, right a/an, one full stop."""
    words = []
    for word in text.split():
        if not words or word.lower() != words[-1].lower():
            words.append(word)
    while len(words) > 1 and words[-1].strip(_PUNCTUATION).lower() in _DANGLING | {""}:
        words.pop()
    for i, word in enumerate(words[:-1]):
        if word.lower() in ("a", "an"):
            article = _article(words[i + 1]) or word.lower()
            words[i] = article.capitalize() if word[0].isupper() else article
    sentence = " ".join(words).rstrip(_PUNCTUATION)
    return sentence[:1].upper() + sentence[1:] + "."


def _article(word: str) -> str | None:
    """ "a" or "an" for the next word, or None when it does not start with a letter (keep as written)."""
    word = word.lower().lstrip("\"'(")
    if not word[:1].isalpha():
        return None
    if word.startswith(_AN_BEFORE):
        return "an"
    return "an" if word[0] in "aeiou" and not word.startswith(_A_BEFORE) else "a"
