"""What a caption says in a knowledge base's terms: the defects and the product kind it names, and whether it
repeats itself. Plain word matching, no model: the same test for every caption, whoever wrote it."""
from __future__ import annotations

import re

from utils.knowledge import KnowledgeBase
from utils.summarizer import phrase_texts

# Words that carry no content on their own: a word pair made only of these ("and a") may recur.
FILLER = {"a", "an", "the", "and", "with", "of", "in", "on", "that", "may", "have", "has", "is"}
HEALTHY_WORDS = {"fresh", "healthy", "unblemished"}


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _phrase_words(text: str) -> list[str]:
    """A prompt's phrase as the words a caption must contain, leading article dropped ("cut in the skin")."""
    found = words(text)
    return found[1:] if found[:1] in (["a"], ["an"], ["the"]) else found


def named_defects(caption: str, knowledge: KnowledgeBase) -> list[str]:
    """Ids of the defect prompts whose whole phrase appears in the caption, in knowledge-base order."""
    said = words(caption)
    defects = [p for p in knowledge.prompts if not p.healthy]
    return [p.id for p, text in zip(defects, phrase_texts(defects)) if _contains(said, _phrase_words(text))]


def named_kinds(caption: str, knowledge: KnowledgeBase) -> list[str]:
    """Ids of the product kinds whose noun (or its plural) appears in the caption."""
    said = words(caption)
    return [k.id for k in knowledge.kinds
            if _contains(said, words(k.noun)) or _contains(said, words(k.noun + "s"))]


def repeated_phrase(caption: str) -> str | None:
    """The first word pair that occurs twice ("cut in" in "a cut in the skin and a cut in the skin"), unless
    both words are fillers; None when nothing repeats."""
    said = words(caption)
    seen = set()
    for pair in zip(said, said[1:]):
        if pair in seen and not set(pair) <= FILLER:
            return " ".join(pair)
        seen.add(pair)
    return None


def says_healthy(caption: str, knowledge: KnowledgeBase) -> bool:
    """Calls the item fresh or healthy and names no defect."""
    return bool(HEALTHY_WORDS & set(words(caption))) and not named_defects(caption, knowledge)
