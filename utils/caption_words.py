"""Which knowledge-base descriptions a caption names: the one matcher the app, the caption check and the
demo bench share.

A caption names a prompt when it holds all of the prompt's words apart from fillers ("a", "with", "skin",
the domain noun), in any order and with any product noun around them: "An apple with green mold and a
brown bruise" names green_mold and bruise. Matching words, not whole phrases, keeps it robust to how a
captioner phrases things; a negation ("no mold") is not understood.
"""
import re

HEALTHY_WORDS = frozenset({"fresh", "healthy", "unblemished", "ripe"})
FILLER = frozenset({"a", "an", "the", "with", "in", "of", "and", "skin", "fruit", "photo"})


def singular(word):
    """`word` lower-cased, a plural "s" dropped ("Spots" -> "spot"; "glass", "has" stay): the form in which a
    repeat is recognized ("dark spots ... dark spot" repeats)."""
    word = word.lower()
    return word[:-1] if len(word.strip()) > 3 and word.endswith("s") and not word.endswith("ss") else word


def words(text):
    return set(re.findall(r"[a-z]+", str(text).lower()))


def key_words(text, domain=""):
    """The words of a prompt that must appear for a caption to name it."""
    return words(text) - FILLER - words(domain)


def named_prompts(caption, knowledge, healthy=False):
    """Ids of the defect prompts (or, with healthy=True, the healthy ones) the caption names, in file order."""
    said = words(caption)
    return [p.id for p in knowledge.prompts
            if p.healthy == healthy and key_words(p.text, knowledge.domain) and
            key_words(p.text, knowledge.domain) <= said]


def named_defects(caption, knowledge):
    return named_prompts(caption, knowledge)


def healthy_words(knowledge):
    """Words that call an item good: the usual ones and the knowledge base's own ("functional" for solar cells)."""
    return HEALTHY_WORDS | {knowledge.healthy_word.lower()}


def says_healthy(caption, knowledge):
    """The caption calls the item good: a healthy word ("fresh") or a healthy prompt's words."""
    return bool(healthy_words(knowledge) & words(caption)) or bool(named_prompts(caption, knowledge, healthy=True))


def named_kinds(caption, knowledge):
    """Ids of the product kinds whose noun (or its plural) the caption holds, in file order."""
    said = words(caption)
    return [k.id for k in knowledge.kinds if words(k.noun) <= said or words(k.noun + "s") <= said]


def vocabulary(texts):
    """The words of `texts`, lower-cased and singular: what a captioner trained on those captions has seen."""
    return {singular(word) for text in texts for word in words(text)}


def unknown_words(caption, known):
    """The caption's words (in order, each once) that `known` (a vocabulary) lacks."""
    said = dict.fromkeys(re.findall(r"[a-z]+", str(caption).lower()))
    return [word for word in said if singular(word) not in known]


def repeated_phrase(caption):
    """The first word pair that occurs twice ("a cut" in "a cut in the skin and a cut in the skin"; singular and
    plural alike), unless both words are fillers ("and a"); None when nothing repeats. A looping caption is what
    it catches."""
    said = [singular(word) for word in re.findall(r"[a-z]+", str(caption).lower())]
    seen = set()
    for pair in zip(said, said[1:]):
        if pair in seen and not set(pair) <= FILLER:
            return " ".join(pair)
        seen.add(pair)
    return None
