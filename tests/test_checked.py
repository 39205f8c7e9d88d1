"""Reduced precision that keeps fp32's captions: a bf16 / int8 draft, checked token by token by the fp32 LM."""
import argparse
import copy

import pytest
import torch
from torch import nn

from conftest import make_tiny_captioner
from models.checked import GreedyRule, ModelDraft, PhraseDraft, checked_greedy
from models.config import GenerationOptions, add_inference_arguments
from models.explain import Explainer


def _noisy_copy(lm, scale=0.5):
    """A draft that often disagrees with the LM, so the check has something to correct."""
    draft = copy.deepcopy(lm)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in draft.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return draft


@pytest.mark.parametrize("lm_kind, options", [("opt", {}), ("gpt2", {"min_new_tokens": 8, "no_repeat_ngram_size": 0}),
                                             ("llama", {"prefix_text": "a photo of a fruit with"})])
def test_checked_captions_are_the_fp32_lms_whatever_the_draft(lm_kind, options):
    captioner = make_tiny_captioner(lm_kind)  # untrained: near-ties everywhere, the hardest case for a draft
    embeddings = torch.randn(3, captioner.clip.embed_dim, generator=torch.Generator().manual_seed(0))
    reference = captioner.generate(embeddings=embeddings, max_new_tokens=12, **options)
    checked = copy.deepcopy(captioner)
    checked.draft_lm = _noisy_copy(checked.lm)
    assert checked.generate(embeddings=embeddings, max_new_tokens=12, **options) == reference
    for precision in ("bf16", "int8"):
        assert checked.set_precision(precision).generate(embeddings=embeddings, max_new_tokens=12,
                                                         **options) == reference


def test_the_check_corrects_a_wrong_draft_in_few_passes():
    captioner = make_tiny_captioner("opt")
    options = GenerationOptions(max_new_tokens=12, no_repeat_ngram_size=0, min_new_tokens=12)
    prompt = captioner._prompt_embeddings(torch.randn(1, captioner.clip.embed_dim))
    rule = captioner._greedy_rule(options)
    own, passes = checked_greedy(captioner.lm, ModelDraft(captioner.lm), prompt, rule, 12)
    assert passes == 1 and len(own) == 12  # a draft that is the LM itself: every token kept in one pass
    wrong, passes = checked_greedy(captioner.lm, ModelDraft(_noisy_copy(captioner.lm, 2.0)), prompt, rule, 12)
    assert wrong == own and 1 < passes <= 12  # each pass keeps at least the checking LM's own next token


def test_phrase_draft_looks_up_the_likeliest_continuation_and_follows_its_hint_first():
    rule = GreedyRule([], stops=[9])
    draft = PhraseDraft([[1, 2, 3, 9], [1, 2, 4, 9], [1, 2, 4, 9], [5, 2, 3, 9]])
    assert draft.propose([], rule, 10, 10) == [1, 2, 4, 9]  # 4 followed "1 2" twice, 3 once
    assert draft.propose([6, 2], rule, 10, 10) == [6, 2, 3, 9]  # "6 2" unseen: after "2" alone, 3 and 4 tie
    assert draft.propose([7], rule, 10, 10) == [7]  # an unseen context proposes nothing
    assert draft.propose([], rule, 2, 10) == [1, 2]  # no longer than asked
    assert draft.hinted([1, 2, 3, 9]).propose([], rule, 10, 10) == [1, 2, 3, 9]
    assert draft.hinted([1, 2, 3, 9]).propose([5, 2], rule, 10, 10) == [5, 2, 3, 9]  # the hint first, at any order


@pytest.mark.parametrize("lm_kind", ["opt", "llama"])
def test_phrase_drafted_captions_are_the_lms_own_in_fewer_passes(lm_kind):
    captioner = make_tiny_captioner(lm_kind)
    options = GenerationOptions(max_new_tokens=12, min_new_tokens=6, no_repeat_ngram_size=0)
    embedding = torch.randn(1, captioner.clip.embed_dim, generator=torch.Generator().manual_seed(1))
    prompt, rule = captioner._prompt_embeddings(embedding), captioner._greedy_rule(options)
    own, _ = checked_greedy(captioner.lm, ModelDraft(captioner.lm), prompt, rule, 12)  # the LM's greedy tokens
    unrelated = PhraseDraft([[5, 6, 7, 8], [own[0], 3, 3]])  # right once at most: still the LM's caption
    tokens, passes = checked_greedy(captioner.lm, unrelated, prompt, rule, 12)
    assert tokens == own and passes >= len(own) - 1
    tokens, passes = checked_greedy(captioner.lm, unrelated.hinted(own), prompt, rule, 12)
    assert tokens == own and passes == 1  # a hint that is the caption: one pass
    assert captioner._phrase_draft is not None  # the fruit knowledge base's sentences, in the tiny tokenizer
    for seed in range(3):
        embedding = torch.randn(1, captioner.clip.embed_dim, generator=torch.Generator().manual_seed(seed))
        assert (captioner.generate(embeddings=embedding, max_new_tokens=12) ==
                captioner.generate(embeddings=embedding, max_new_tokens=12, phrase_draft=False))


def test_the_phrase_drafts_hint_summarizes_as_many_prompts_as_the_training_labels():
    from utils.summarizer import summarize_top

    captioner = make_tiny_captioner("opt")
    knowledge = captioner._grammar.knowledge
    defects = [p.text for p in knowledge.prompts if not p.healthy][:2]  # an image that looks like both
    embedding = torch.nn.functional.normalize(captioner.clip.encode_texts(defects).sum(0, keepdim=True), dim=-1)
    probs = captioner.clip.probabilities(embedding, knowledge.sentences())[0].tolist()
    kinds = captioner.clip.logits(embedding, knowledge.kind_sentences())[0] if knowledge.kinds else None
    kind = None if kinds is None else knowledge.kinds[int(kinds.argmax())]
    hints = []
    for top_k in (1, 4):
        captioner.config.label_top_k = top_k
        hints.append(captioner._auto_label(embedding))
        summary = summarize_top(probs, knowledge, top_k, kind=kind)
        assert hints[-1] == captioner.tokenizer(summary, add_special_tokens=False).input_ids + [
            captioner.tokenizer.eos_token_id]
    assert hints[0] != hints[1]  # its top 4 name both defects, its top 1 one
    captioner.config.label_min_share = 1.0  # labels that name the top defect alone, whatever the others hold
    summary = summarize_top(probs, knowledge, 4, kind=kind, min_share=1.0)
    hint = captioner._auto_label(embedding)
    assert hint == captioner.tokenizer(summary, add_special_tokens=False).input_ids + [captioner.tokenizer.eos_token_id]
    assert hint != hints[1]


def test_reduced_precisions_add_a_draft_and_keep_the_fp32_lm():
    captioner = make_tiny_captioner("llama")
    linears = [name for name, module in captioner.lm.named_modules() if isinstance(module, nn.Linear)]
    int8 = copy.deepcopy(captioner).set_precision("int8")
    quantized = {name for name, module in int8.draft_lm.named_modules()
                 if type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")}
    assert quantized == set(linears)  # every Linear, the LM head included; embeddings and norms stay float
    assert all(p.dtype == torch.float32 and p.requires_grad == q.requires_grad
               for p, q in zip(int8.lm.parameters(), captioner.lm.parameters()))
    bf16 = copy.deepcopy(captioner).set_precision("bf16")
    assert {p.dtype for p in bf16.draft_lm.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in bf16.draft_lm.parameters())
    assert bf16.set_precision("fp32").draft_lm is None
    with pytest.raises(ValueError, match="fp16"):
        captioner.set_precision("fp16")


def test_caption_maps_at_every_precision_are_the_fp32_ones():
    captioner = make_tiny_captioner("opt")
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = Explainer(captioner.clip).caption_map(captioner, pixels, "a pear with dark spots.")
    assert reference.abs().sum() > 0
    for precision in ("bf16", "int8"):
        reduced = copy.deepcopy(captioner).set_precision(precision)
        maps = Explainer(reduced.clip).caption_map(reduced, pixels, "a pear with dark spots.")
        torch.testing.assert_close(maps, reference, rtol=1e-5, atol=1e-6)  # the same fp32 LM's gradient


def test_precision_help_says_what_each_costs_and_gives():
    text = add_inference_arguments(argparse.ArgumentParser()).format_help()
    help_text = " ".join(text[text.index("--lm-precision"):].split())
    for words in ("fp32", "bf16", "int8", "fp32's greedy captions", "memory", "precision_bench"):
        assert words in help_text, words
