import pytest

from utils.caption_words import named_defects, named_kinds, repeated_phrase, says_healthy, unknown_words, vocabulary
from utils.knowledge import load_knowledge

FRUIT = load_knowledge("fruit")


@pytest.mark.parametrize("caption,repeat", [
    ("A fruit with a cut in the skin and a cut in the skin.", "a cut"),
    ("A fruit with white fuzzy mold, a brown bruise and white fuzzy mold.", "white fuzzy"),
    ("An apple with green mold and white fuzzy mold.", None),  # "mold" twice, as two different molds
    ("A lemon with dark spots, dark mold and dark spot.", "dark spot"),  # singular and plural alike
    ("A pear with green mold, a brown bruise and a cut in the skin.", None),  # "and a" is no phrase
])
def test_repeated_phrases(caption, repeat):
    assert repeated_phrase(caption) == repeat


def test_named_defects_need_every_key_word_in_any_order():
    assert named_defects("An apple with White Fuzzy Mold and a cut in the skin.", FRUIT) == ["white_mold", "cut"]
    assert named_defects("Mold, white and fuzzy, on a pear", FRUIT) == ["white_mold"]
    assert named_defects("A fruit with fuzzy mold.", FRUIT) == []  # "white" missing: no prompt named
    assert named_defects("A fresh pear with smooth unblemished skin.", FRUIT) == []


def test_kinds_and_healthy():
    assert named_kinds("Two bananas and an apple with dark spots.", FRUIT) == ["apple", "banana"]
    assert named_kinds("A fruit with rot.", FRUIT) == []
    assert says_healthy("A fresh pear with smooth unblemished skin.", FRUIT)
    assert not says_healthy("A pear with dark spots.", FRUIT)


def test_words_a_captioner_never_saw_in_training():
    known = vocabulary(["A lemon with dark spots.", "An apple with black mold and a cut in the skin."])
    assert "spot" in known and "spots" not in known  # kept singular
    assert unknown_words("A Lemon with dark spot, dark mold and dark shroud.", known) == ["shroud"]
    assert unknown_words("An apple with black molds.", known) == []
