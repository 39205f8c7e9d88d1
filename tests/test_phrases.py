import numpy as np
import pytest
import torch

from conftest import make_tiny_captioner, smooth_photo
from models.config import GenerationOptions
from models.explain import Explainer
from models.inspector import Inspector
from models.phrases import caption_jacobian, caption_phrases, phrase_scores, token_words
from utils.knowledge import load_knowledge


def test_content_phrases_link_defects_to_their_prompts_and_find_the_kind():
    phrases = caption_phrases("An apple with green mold and a brown bruise.", load_knowledge("fruit"))
    assert [(p.text, p.role, p.prompt) for p in phrases] == [
        ("apple", "kind", "apple"), ("green mold", "defect", "green_mold"), ("brown bruise", "defect", "bruise")]
    assert phrases[1].words == [3, 4]


def test_a_word_two_phrases_share_belongs_to_the_phrase_it_stands_in():
    """ "mold" ends three phrases here, and "brown" two: each phrase is its own run of words, not every word of
    the caption its description shares; a description's two parts join over "and"."""
    knowledge = load_knowledge("fruit")
    phrases = caption_phrases("A pear with green mold, blue mold and white fuzzy mold.", knowledge)
    assert [(p.text, p.words) for p in phrases if p.role == "defect"] == [
        ("green mold", [3, 4]), ("blue mold", [5, 6]), ("white fuzzy mold", [8, 9, 10])]
    phrases = caption_phrases("An apple with a brown bruise and soft brown rot.", knowledge)
    assert [(p.text, p.prompt) for p in phrases if p.role == "defect"] == [("brown bruise", "bruise"),
                                                                          ("soft brown rot", "rot")]
    phrases = caption_phrases("A functional solar cell with even bright luminescence and no defect.",
                              load_knowledge("solar_cell"))
    assert [p.text for p in phrases] == ["functional", "even bright luminescence and no defect"]  # over "and"
    phrases = caption_phrases("A tomato with a cut in the skin and a healed scar.", knowledge)
    assert [p.text for p in phrases if p.role == "defect"] == ["cut in the skin", "healed scar"]  # as written


def test_healthy_words_and_prompts_are_phrases():
    phrases = caption_phrases("A fresh pear with smooth unblemished skin.", load_knowledge("fruit"))
    assert [(p.text, p.role) for p in phrases] == [("fresh", "healthy"), ("pear", "kind"),
                                                   ("smooth unblemished skin", "healthy")]
    assert caption_phrases("", load_knowledge("fruit")) == []


def test_every_token_belongs_to_a_word():
    captioner = make_tiny_captioner("opt")
    caption = "an apple with green mold and a bruise."
    owners = token_words(captioner, caption)
    assert owners == sorted(owners) and owners[0] == 0 and owners[-1] == len(caption.split()) - 1


@pytest.mark.parametrize("lm_kind", ["opt", "gpt2"])
def test_caption_jacobian_matches_autograd_row_by_row(lm_kind):
    captioner = make_tiny_captioner(lm_kind)
    caption = "an apple with green mold and a bruise."
    phrases = caption_phrases(caption, load_knowledge("fruit"))
    features = torch.nn.functional.normalize(torch.randn(1, captioner.clip.embed_dim, generator=torch.Generator()
                                                         .manual_seed(0)), dim=-1)
    scores, jacobian = caption_jacobian(captioner, features, caption, phrases)
    leaf = features.clone().requires_grad_()
    whole = captioner.caption_log_likelihood(leaf, [caption])
    expected = torch.cat([whole, phrase_scores(captioner, leaf, caption, phrases)])
    torch.testing.assert_close(scores, expected.detach(), rtol=1e-5, atol=1e-5)
    for row, score in enumerate(expected):
        grad = torch.autograd.grad(score, leaf, retain_graph=True)[0][0]
        torch.testing.assert_close(jacobian[row], grad, rtol=1e-4, atol=1e-6)


def count_vision_forwards(clip):
    calls = []
    handle = clip.model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("method", ["gradcam", "relevancy"])
def test_phrase_maps_come_from_the_prompt_maps_pass_and_equal_a_pass_of_their_own(method):
    captioner = make_tiny_captioner("opt")
    inspector = Inspector(captioner.clip, "fruit", captioner)
    generation = GenerationOptions(prefix_text="an apple with green mold and", max_new_tokens=4)
    calls, handle = count_vision_forwards(captioner.clip)
    try:
        found = inspector.inspect(smooth_photo(1, (48, 48)), k=2, method=method, generation=generation)
    finally:
        handle.remove()
    assert len(calls) == 1  # one CLIP forward for prompts, caption, caption map and phrase maps
    assert [p.prompt for p in found.phrases][:2] == ["apple", "green_mold"]
    assert found.phrase_maps.shape == (len(found.phrases), 4, 4) and len(found.phrase_overlays) == len(found.phrases)
    pixels = captioner.clip.preprocess(smooth_photo(1, (48, 48)))
    alone = Explainer(captioner.clip).explain(
        pixels, lambda f: phrase_scores(captioner, f, found.caption, found.phrases), method)
    np.testing.assert_allclose(found.phrase_maps, alone.numpy(), atol=1e-4)
    whole = Explainer(captioner.clip).caption_map(captioner, pixels, found.caption, method=method)[0]
    np.testing.assert_allclose(found.caption_map, whole.numpy(), atol=1e-4)
    assert [p["prompt"] for p in inspector.record(found)["phrases"]][:2] == ["apple", "green_mold"]
