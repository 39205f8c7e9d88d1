"""Decoding that does what it says: no repeated phrases by default, knowledge-base sentences when constrained,
min new tokens honoured, the prefix text shown, the seed a sampled caption used reported."""
import itertools
import random

import pytest
import torch

from conftest import CAPTIONS, PROMPTS, make_tiny_clip, tiny_lm
from models.clip import make_word_tokenizer
from models.config import CaptionerConfig, GenerationOptions
from models.constrained import CaptionGrammar
from models.inspector import Inspector
from models.kinds import name_kind
from models.vlm import ClipCaptioner
from utils.caption_words import repeated_phrase
from utils.knowledge import indefinite_article, load_knowledge
from utils.summarizer import defect_sentence, healthy_sentence

FRUIT = load_knowledge("fruit")
REPEATING = "a fruit with a cut in the skin and a cut in the skin and a cut in the skin."


def vocabulary():
    """Every word the tests' captions and the fruit knowledge base's sentences use."""
    texts = CAPTIONS + PROMPTS + [REPEATING, "a pear", "an apple that may have", "fresh ,"]
    return texts + [p.text for p in FRUIT.prompts] + [k.noun for k in FRUIT.kinds]


def captioner_trained_on(captions, steps=250):
    """A tiny captioner (LM fine-tuned too) taught `captions` for as many random image embeddings."""
    tokenizer = make_word_tokenizer(vocabulary())
    captioner = ClipCaptioner(make_tiny_clip(), tiny_lm("opt", len(tokenizer)), tokenizer,
                              CaptionerConfig(clip="tiny", lm="tiny-opt", prefix_length=4, lm_mode="full"))
    torch.manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(len(captions), captioner.clip.embed_dim), dim=-1)
    optimizer = torch.optim.AdamW([p for p in captioner.parameters() if p.requires_grad], lr=3e-3)
    captioner.train()
    for _ in range(steps):
        loss = captioner(embeddings, captions).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return captioner.eval(), embeddings


@pytest.fixture(scope="module")
def repeater():
    return captioner_trained_on([REPEATING] * 2 + CAPTIONS[:2])


def test_a_captioner_trained_to_repeat_does_not_repeat_by_default(repeater):
    captioner, embeddings = repeater
    unbanned = captioner.generate(embeddings=embeddings[:1], no_repeat_ngram_size=0, max_new_tokens=24)[0]
    assert repeated_phrase(unbanned), unbanned  # it learned to repeat: the test below could fail
    for options in (GenerationOptions(), GenerationOptions(num_beams=3),
                    GenerationOptions(temperature=0.7, seed=3)):
        caption = captioner.generate(embeddings=embeddings[:1], options=options)[0]
        assert caption and repeated_phrase(caption) is None, (options, caption)


def test_constrained_captions_are_knowledge_base_sentences(repeater):
    captioner, embeddings = repeater
    grammar = CaptionGrammar(FRUIT, captioner.tokenizer)
    for options in (GenerationOptions(constrained=True), GenerationOptions(constrained=True, num_beams=3),
                    GenerationOptions(constrained=True, temperature=1.0, seed=0)):
        for caption in captioner.generate(embeddings=embeddings, options=options, max_new_tokens=40):
            tokens = captioner.tokenizer(caption, add_special_tokens=False).input_ids
            assert grammar.accepts(tuple(tokens) + (captioner.tokenizer.eos_token_id,)), caption
            assert repeated_phrase(caption) is None


def test_the_grammar_is_exactly_the_summarizers_sentences():
    tokenizer = make_word_tokenizer(vocabulary())
    grammar = CaptionGrammar(FRUIT, tokenizer, max_defects=3)
    nouns = [FRUIT.domain] + [k.noun for k in FRUIT.kinds]
    defects = [p for p in FRUIT.prompts if not p.healthy]
    written = [healthy_sentence(noun, p) for noun in nouns for p in FRUIT.prompts if p.healthy]
    written += [defect_sentence(noun, combo, hedged) for noun in nouns for hedged in (False, True)
                for n in (1, 2, 3) for combo in itertools.permutations(defects, n)]
    four = [defect_sentence(noun, combo) for noun in nouns for combo in itertools.permutations(defects, 4)]
    wrong = ["A fruit with a cut in the skin and a cut in the skin.", "A fruit with green mold, blue mold.",
             "A fresh fruit with green mold.", "A fruit with green mold", "A fruit."]
    random.seed(0)
    cases = [(s, True) for s in random.sample(written, 400)] + [(s, False) for s in random.sample(four, 50) + wrong]
    eos = (tokenizer.eos_token_id,)
    for sentence, allowed in cases:
        assert grammar.accepts(tuple(tokenizer(sentence, add_special_tokens=False).input_ids) + eos) == allowed, \
            sentence


def test_a_prefix_starts_the_caption_and_is_shown(repeater):
    captioner, embeddings = repeater
    caption = captioner.generate(embeddings=embeddings[:1], prefix_text="a pear", max_new_tokens=6)[0]
    assert caption.startswith("a pear")
    constrained = captioner.generate(embeddings=embeddings[:1], prefix_text="An apple", constrained=True,
                                     max_new_tokens=30)[0]
    tokens = captioner.tokenizer(constrained, add_special_tokens=False).input_ids + [captioner.tokenizer.eos_token_id]
    assert constrained.lower().startswith("an apple ") and CaptionGrammar(FRUIT, captioner.tokenizer).accepts(tokens)
    with pytest.raises(ValueError, match="no caption the knowledge base allows begins with 'the pear'"):
        captioner.generate(embeddings=embeddings[:1], prefix_text="the pear", constrained=True)


def test_min_new_tokens_is_honoured(repeater):
    captioner, embeddings = repeater
    natural = captioner.generate(embeddings=embeddings[2:3], max_new_tokens=40)[0]
    longer = captioner.generate(embeddings=embeddings[2:3], min_new_tokens=12, max_new_tokens=40)[0]
    count = len(captioner.tokenizer(natural, add_special_tokens=False).input_ids)
    assert count < 12 <= len(captioner.tokenizer(longer, add_special_tokens=False).input_ids)


def test_the_seed_a_sampled_caption_used_is_reported_and_gives_it_again(repeater):
    captioner, _ = repeater
    inspector = Inspector(captioner.clip, FRUIT, captioner)
    photo = torch.rand(3, 40, 40).mul(255).byte().permute(1, 2, 0).numpy()
    sampled = GenerationOptions(temperature=1.5, max_new_tokens=8)
    first = inspector.inspect(photo, k=2, caption_map=False, generation=sampled)
    assert isinstance(first.generation.seed, int)
    again = inspector.inspect(photo, k=2, caption_map=False, generation=first.generation)
    assert again.caption == first.caption and again.generation.seed == first.generation.seed
    greedy = inspector.inspect(photo, k=2, caption_map=False, generation=GenerationOptions(max_new_tokens=4))
    assert greedy.generation.seed is None  # nothing drawn when nothing is sampled
    draws = {GenerationOptions(temperature=1.0).with_seed().seed for _ in range(5)}
    assert len(draws) > 1  # a fresh seed each time


def test_the_product_kind_comes_from_clip(repeater):
    captioner, _ = repeater
    inspection = Inspector(captioner.clip, FRUIT, captioner).inspect(
        torch.rand(3, 40, 40).mul(255).byte().permute(1, 2, 0).numpy(), k=2, caption_map=False,
        generation=GenerationOptions(max_new_tokens=4))
    kind, probability = inspection.kind
    assert kind in FRUIT.kinds and 1 / len(FRUIT.kinds) <= probability <= 1


def test_the_caption_names_the_kind_clip_sees(repeater):
    captioner, embeddings = repeater
    row = embeddings[3:4]  # taught "an apple with green mold and a bruise."
    kind = FRUIT.kinds[int(captioner.clip.logits(row, FRUIT.kind_sentences()).argmax())]
    assert kind.noun != "apple"  # CLIP sees another kind here, so the test below could fail
    own = captioner.generate(embeddings=row, clip_kind=False)[0]
    assert own == CAPTIONS[1]
    named = f"{indefinite_article(kind.noun)} {kind.noun} with green mold and a bruise."
    assert captioner.generate(embeddings=row)[0] == named
    assert captioner.generate(embeddings=row, prefix_text="an apple")[0].startswith("an apple")  # the user's words


def test_an_lm_whose_tokenizer_the_grammar_does_not_fit_still_captions(monkeypatch):
    def does_not_fit(*args, **kwargs):
        raise ValueError("constrained decoding: this tokenizer splits ... differently")

    monkeypatch.setattr(CaptionGrammar, "__init__", does_not_fit)  # as for OPT's tokenizer and the fruit sentences
    captioner, embeddings = captioner_trained_on(CAPTIONS[:1], steps=1)
    assert len(captioner.generate(embeddings=embeddings, max_new_tokens=3)) == 1  # no phrase draft, kinds named


def test_a_summary_opening_of_another_kind_becomes_clips():
    pear, apple = FRUIT.kind("pear"), FRUIT.kind("apple")
    assert name_kind("A lemon with soft brown rot.", FRUIT, pear) == "A pear with soft brown rot."
    assert name_kind("a pear with a cut.", FRUIT, apple) == "an apple with a cut."  # article and case fitted
    assert name_kind("A fresh lemon with ripe even colour.", FRUIT, apple) == "A fresh apple with ripe even colour."
    assert name_kind("An orange that may have blue mold.", FRUIT, pear) == "A pear that may have blue mold."
    assert name_kind("A pear with rot, like a lemon.", FRUIT, pear) == "A pear with rot, like a lemon."
    for free in ("A man holding an orange.", "An orange umbrella with stripes.", "Lemon with rot."):
        assert name_kind(free, FRUIT, apple) == free  # not the summarizer's opening: left as written


def test_the_ngram_ban_compares_words_case_and_plural_aside():
    from models.repeats import WordNoRepeatNGram, word_classes

    texts = [" soft", " brown", " Brown", " rot", ","]  # "soft brown rot, soft Brown ..." must not pass
    ban = WordNoRepeatNGram(2, word_classes(texts))
    for said in ([0, 1, 3, 4, 0], [0, 2, 3, 4, 0]):
        scores = ban(torch.tensor([said]), torch.zeros(1, len(texts) + 2))  # the LM has 2 rows beyond the tokens
        assert torch.isinf(scores[0]).tolist() == [False, True, True, False, False, False, False]
    assert not torch.isinf(ban(torch.tensor([[0, 1, 3]]), torch.zeros(1, 5))).any()
    narrower = ban(torch.tensor([[0, 1, 0]]), torch.zeros(1, 3))  # an LM with fewer rows than the tokenizer
    assert torch.isinf(narrower[0]).tolist() == [False, True, True]
    texts = [" dark", " spots", " spot", " Spot", ",", " glass", " glas"]  # "dark spots, dark spot" must not pass
    ban = WordNoRepeatNGram(2, word_classes(texts))
    scores = ban(torch.tensor([[0, 1, 4, 0]]), torch.zeros(1, len(texts)))
    assert torch.isinf(scores[0]).tolist() == [False, True, True, True, False, False, False]
    assert word_classes(texts)[5] != word_classes(texts)[6]  # "glass" is no plural
