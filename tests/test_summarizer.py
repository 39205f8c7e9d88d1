import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.knowledge import KnowledgeBase, load_knowledge
from utils.summarizer import summarize

FRUIT = load_knowledge()
# Vowel domain, and texts with wrong articles, stray connectives and end punctuation on purpose.
ORANGE = KnowledgeBase.from_dict({
    "domain": "orange", "template": "a photo of an {domain} with {prompt}",
    "prompts": {
        "healthy": [{"id": "firm", "text": "even orange peel", "healthy": True},
                    {"id": "glossy", "text": "a oily glossy peel", "healthy": True}],
        "mold": [{"id": "olive_mold", "text": "olive mold", "severity": "severe"},
                 {"id": "ink", "text": "ink-black spots"}],
        "patch": [{"id": "oily", "text": "a oily patch", "severity": "mild"}],
        "crack": [{"id": "split", "text": "with an split rind."}],
        "ulcer": [{"id": "ulcer", "text": "and a ugly ulcer", "severity": "moderate"},
                  {"id": "ulcer_again", "text": "an ugly ulcer"}],
        "rot": [{"id": "rot", "text": "rot"}]}})
VOWELS = "aeiou"


def ask(kb, **probabilities):
    return [(kb.prompts[kb.index(id)], p) for id, p in probabilities.items()]


@pytest.mark.parametrize("probabilities,expected", [
    (dict(fresh=0.7, green_mold=0.2, bruise=0.1), "A fresh fruit with smooth unblemished skin."),
    (dict(ripe=0.5, fresh=0.2, rot=0.3), "A fresh fruit with ripe even colour."),
    (dict(green_mold=0.5, bruise=0.3, fresh=0.1), "A fruit with green mold and a brown bruise."),
    (dict(green_mold=0.4, dark_spots=0.25, cut=0.2, fresh=0.05), "A fruit with green mold, dark spots and a cut in the skin."),
    (dict(rot=0.9), "A fruit with soft brown rot."),
])
def test_examples(probabilities, expected):
    assert summarize(ask(FRUIT, **probabilities), FRUIT) == expected


def test_healthy_wins_by_top_prompt_or_by_mass():
    assert summarize(ask(FRUIT, fresh=0.3, rot=0.25, cut=0.25, scar=0.2), FRUIT).startswith("A fresh fruit")
    assert summarize(ask(FRUIT, rot=0.4, fresh=0.3, ripe=0.3), FRUIT) == "A fresh fruit with smooth unblemished skin."
    assert summarize(ask(FRUIT, rot=0.55, fresh=0.45), FRUIT) == "A fruit that may have soft brown rot."
    assert summarize(ask(FRUIT, rot=0.55, fresh=0.45), FRUIT, hedge_share=1) == "A fruit with soft brown rot."


def test_vowel_domain_gets_an():
    assert summarize(ask(ORANGE, olive_mold=0.6, oily=0.3), ORANGE) == "An orange with olive mold and an oily patch."
    assert summarize(ask(ORANGE, firm=0.9), ORANGE) == "A fresh orange with even orange peel."
    assert summarize(ask(ORANGE, firm=0.9), ORANGE, healthy_word="") == "An orange with even orange peel."


def test_texts_are_tidied_and_deduplicated():
    assert summarize(ask(ORANGE, split=0.9), ORANGE) == "An orange with a split rind."
    assert summarize(ask(ORANGE, ulcer=0.5, ulcer_again=0.4), ORANGE) == "An orange with an ugly ulcer."
    kb = KnowledgeBase.from_dict({"domain": "umbrella", "template": "{prompt}", "prompts": {
        "ok": [{"id": "ok", "text": "an uniform canopy", "healthy": True}], "bad": [{"id": "tear", "text": "a hour-long tear"}]}})
    assert summarize(ask(kb, ok=1), kb) == "A fresh umbrella with a uniform canopy."
    assert summarize(ask(kb, tear=1), kb) == "An umbrella with an hour-long tear."


def test_repeated_entries_are_merged_and_order_does_not_matter():
    pairs = ask(FRUIT, bruise=0.35, green_mold=0.3, cut=0.05) + ask(FRUIT, green_mold=0.3)
    expected = "A fruit with green mold and a brown bruise."
    assert summarize(pairs, FRUIT) == expected
    assert summarize(pairs[::-1], FRUIT) == expected


def test_limits_on_defects():
    five = ask(FRUIT, rot=0.22, cut=0.2, bruise=0.2, scar=0.19, wrinkles=0.19)
    assert summarize(five, FRUIT) == "A fruit with soft brown rot, a brown bruise and a cut in the skin."
    assert summarize(five, FRUIT, max_defects=1) == "A fruit with soft brown rot."
    assert summarize(ask(FRUIT, rot=0.9, cut=0.05), FRUIT) == "A fruit with soft brown rot."
    assert summarize(ask(FRUIT, rot=0.9, cut=0.05), FRUIT, min_share=0.01) == "A fruit with soft brown rot and a cut in the skin."
    # Shares are of the mass given; the top defect stays even when every share is under min_share.
    near_uniform = [(prompt, 0.09 if prompt.id == "rot" else 0.08) for prompt in FRUIT.prompts]
    assert summarize(near_uniform, FRUIT) == "A fruit with soft brown rot."


def test_strings_zero_and_empty_inputs():
    assert summarize([("cut", 0.7), ("a photo of a fruit with green mold", 0.2), ("smooth unblemished skin", 0.1)],
                     FRUIT) == "A fruit with a cut in the skin and green mold."
    with pytest.raises(KeyError, match="banana"):
        summarize([("banana", 1.0)], FRUIT)
    assert summarize([], FRUIT) == "A fruit."
    assert summarize(ask(ORANGE, rot=0.0, firm=float("nan")), ORANGE) == "An orange."


def assert_well_formed(sentence, kb, max_defects=3):
    assert sentence and sentence == sentence.strip() and "  " not in sentence
    assert sentence[0].isupper() and sentence[1:] == sentence[1:].lower()
    assert sentence.endswith(".") and sentence.count(".") == 1
    assert " ," not in sentence and ",," not in sentence
    words = sentence[:-1].lower().replace(",", "").split()
    assert kb.domain in words
    for word, following in zip(words, words[1:]):
        assert word != following, sentence
        if word == "a":
            assert following[0] not in VOWELS, sentence
        if word == "an":
            assert following[0] in VOWELS, sentence
    assert words[-1] not in {"a", "an", "and", "with", "or", "have"}, sentence
    if not sentence.startswith("A fresh"):
        assert sentence.count(",") + sentence.count(" and ") + 1 <= max_defects, sentence


def probabilities_for(kb):
    n = len(kb.prompts)
    return st.tuples(st.lists(st.floats(0, 1), min_size=n, max_size=n), st.permutations(range(n)),
                     st.integers(1, n), st.integers(1, 4))


@pytest.mark.parametrize("kb", [FRUIT, ORANGE], ids=["fruit", "orange"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_always_one_well_formed_sentence(kb, data):
    probabilities, order, k, max_defects = data.draw(probabilities_for(kb))
    pairs = [(kb.prompts[i], probabilities[i]) for i in order[:k]]
    sentence = summarize(pairs, kb, max_defects=max_defects)
    assert_well_formed(sentence, kb, max_defects)
    assert summarize(pairs[::-1], kb, max_defects=max_defects) == sentence
    healthy = sum(p for prompt, p in pairs if prompt.healthy)
    defect = sum(p for prompt, p in pairs if not prompt.healthy)
    top_healthy = max([p for prompt, p in pairs if prompt.healthy], default=0)
    top_defect = max([p for prompt, p in pairs if not prompt.healthy], default=0)
    if healthy + defect > 0:  # ties between the top healthy and top defect prompt go to the defect
        assert sentence.startswith("A fresh") == (healthy >= defect or top_healthy > top_defect)


@pytest.mark.parametrize("kind,expected", [
    ("apple", "An apple with green mold and a brown bruise."),
    ("pear", "A pear with green mold and a brown bruise."),
    (None, "A fruit with green mold and a brown bruise."),
])
def test_a_known_kind_names_the_product(kind, expected):
    probabilities = ask(FRUIT, green_mold=0.5, bruise=0.3, fresh=0.1)
    assert summarize(probabilities, FRUIT, kind=kind) == expected
    assert summarize(probabilities, FRUIT, kind=FRUIT.kind(kind) if kind else None) == expected


def test_a_fresh_item_of_a_known_kind():
    assert summarize(ask(FRUIT, fresh=0.8, rot=0.2), FRUIT, kind="orange") == "A fresh orange with smooth unblemished skin."
    assert summarize(ask(FRUIT, fresh=0.42, rot=0.45, cut=0.13), FRUIT, kind="apple") == \
        "An apple that may have soft brown rot and a cut in the skin."
    with pytest.raises(KeyError, match="no kind 'plum'"):
        summarize(ask(FRUIT, fresh=1.0), FRUIT, kind="plum")
