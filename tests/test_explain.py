from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

from conftest import PROMPTS, make_tiny_captioner
from models.explain import (METHODS, Explainer, Explanation, clip_es_scores, gradcam_maps,
                            legrad_maps, normalize_maps, token_log_probs, tokens_to_grid, word_log_probs)
from models.lm import quantize_int8
from models.views import explain_photo

GRID, PATCH = 4, 4
RED_PATCH, GREEN_PATCH = (1, 2), (3, 0)  # (row, column) on the 4 x 4 grid


def detector_clip():
    """A real transformers CLIP, hand-wired so the right answer is known: the image embedding measures how
    much red and how much green the patches hold (mean-pooled by uniform attention in the last block).
    An image red in one patch and green in another must light up exactly that patch for each prompt."""
    config = CLIPConfig(
        text_config=dict(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=8, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(image_size=GRID * PATCH, patch_size=PATCH, hidden_size=12, intermediate_size=12,
                           num_hidden_layers=2, num_attention_heads=1),
        projection_dim=3,
    )
    model = CLIPModel(config).eval().requires_grad_(False)
    vision = model.vision_model
    for name, p in vision.named_parameters():
        p.zero_()
        if "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
    # channels come in (+x, -x) pairs so every token has zero channel mean and LayerNorms keep the layout
    patch = vision.embeddings.patch_embedding.weight
    patch[0, 0], patch[1, 0] = 1 / PATCH ** 2, -1 / PATCH ** 2  # red
    patch[2, 1], patch[3, 1] = 1 / PATCH ** 2, -1 / PATCH ** 2  # green
    vision.embeddings.position_embedding.weight[1:, 4:6] = torch.tensor([1.0, -1.0])  # every patch token
    vision.embeddings.class_embedding[6:8] = torch.tensor([1.0, -1.0])
    last = vision.encoder.layers[1].self_attn  # first block: identity; last: uniform attention, values = colours
    last.v_proj.weight[0, 0] = last.v_proj.weight[1, 2] = 1.0
    last.out_proj.weight[8:12, :2] = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    model.visual_projection.weight.zero_()
    model.visual_projection.weight[0, 8] = model.visual_projection.weight[1, 10] = 1.0
    model.visual_projection.weight[2, 6] = 1.0
    return model


RED, GREEN = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])
TEXTS = torch.cat([RED, GREEN])


def colour_image():
    image = torch.zeros(1, 3, GRID * PATCH, GRID * PATCH)
    for channel, (row, col) in ((0, RED_PATCH), (1, GREEN_PATCH)):
        image[0, channel, row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH] = 1.0
    return image


def peak(map_):
    return divmod(int(map_.argmax()), map_.shape[-1])


@pytest.mark.parametrize("method", ["gradcam", "relevancy", "legrad"])
@pytest.mark.parametrize("target", ["logit", "contrastive", "clip_es"])
def test_maps_peak_on_the_patch_that_drives_each_prompt(method, target):
    maps = Explainer(detector_clip()).prompt_maps(colour_image(), TEXTS, method, target=target)
    assert maps.shape == (2, GRID, GRID)
    assert peak(maps[0]) == RED_PATCH and peak(maps[1]) == GREEN_PATCH
    assert maps[0][GREEN_PATCH] < 0.5 and maps[1][RED_PATCH] < 0.5


def test_gradcam_on_the_toy_is_the_red_patch_alone():
    maps = Explainer(detector_clip()).prompt_maps(colour_image(), RED)
    expected = torch.zeros(GRID, GRID)
    expected[RED_PATCH] = 1.0
    assert torch.allclose(maps[0], expected, atol=1e-4)


def test_channel_weights_average_over_tokens_not_channels():
    # gradients that sum to zero over channels for every token (what a LayerNorm hands back)
    acts = torch.randn(17, 8)
    grads = torch.randn(1, 17, 8)
    grads = grads - grads.mean(dim=-1, keepdim=True)
    maps = gradcam_maps(acts, grads)
    assert maps.max() == 1.0  # averaging per token over channels would give exactly zero here
    weights = grads[0, 1:].mean(dim=0)
    expected = normalize_maps(tokens_to_grid(torch.relu(acts @ weights))[None])
    assert torch.allclose(maps, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "relevancy", "legrad"])
@pytest.mark.parametrize("target", ["logit", "contrastive", "clip_es"])
def test_one_batched_pass_equals_one_prompt_at_a_time(tiny_clip, method, target):
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 32, 32)
    explain = partial(Explainer(tiny_clip).prompt_maps, method=method)
    batched = explain(pixels, PROMPTS, target=target, indices=[0, 3, 5])
    separate = explain(pixels, PROMPTS, target=target, indices=[0, 3, 5], separate_passes=True)
    single = torch.cat([explain(pixels, PROMPTS, target=target, indices=[i]) for i in (0, 3, 5)])
    assert batched.shape == (3, 4, 4)
    assert torch.allclose(batched, separate, atol=1e-5) and torch.allclose(batched, single, atol=1e-5)
    assert batched.amax(dim=(1, 2)).eq(1).all()  # not blank


@pytest.mark.parametrize("method", list(METHODS))
def test_batched_pass_runs_the_vision_model_once(tiny_clip, method):
    calls = []
    tiny_clip.model.vision_model.register_forward_hook(lambda *args: calls.append(1))
    Explainer(tiny_clip).prompt_maps(torch.randn(1, 3, 32, 32), PROMPTS, method, indices=[0, 1, 2, 3, 4])
    assert len(calls) == 1


def test_legrad_on_the_toy_is_the_red_patch_alone():
    # the first block adds nothing (zero weights): only the last layer's attention gradient is non-zero
    maps = Explainer(detector_clip()).prompt_maps(colour_image(), RED, "legrad")
    expected = torch.zeros(GRID, GRID)
    expected[RED_PATCH] = 1.0
    torch.testing.assert_close(maps[0], expected, atol=1e-4, rtol=0)


def test_legrad_averages_each_layers_positive_attention_gradient():
    # layer 1: token 2 gets +1 from one head and -1 (dropped) from the other; layer 2: token 3 gets +4
    grads = [torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5)]
    grads[0][0, 0, :, 2], grads[0][0, 1, :, 2] = 1.0, -1.0
    grads[1][0, :, :, 3] = 4.0
    # per token (CLS dropped): token 2 (0.5 + 0) / 2 = 0.25, token 3 (0 + 4) / 2 = 2
    expected = normalize_maps(torch.tensor([[[0.0, 0.25], [2.0, 0.0]]]))
    torch.testing.assert_close(legrad_maps(grads), expected, atol=1e-6, rtol=0)


def test_clip_es_scores_are_each_prompts_share_against_its_rivals():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    scores = clip_es_scores(logits, [2, 3])
    # prompts 0 and 1 compete with 2 and 3; prompt 2 with 3 only; prompt 3 with 2 only
    expected = torch.stack([logits[[0, 2, 3]].softmax(0)[0], logits[[1, 2, 3]].softmax(0)[0],
                            logits[[2, 3]].softmax(0)[0], logits[[3, 2]].softmax(0)[0]])
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(clip_es_scores(logits, range(4)), logits.softmax(0), atol=1e-6, rtol=0)


def test_clip_es_target_differs_from_logit_and_contrastive(tiny_clip):
    torch.manual_seed(3)
    pixels = torch.randn(1, 3, 32, 32)
    explain = partial(Explainer(tiny_clip).prompt_maps, pixels, PROMPTS, "relevancy", indices=[0, 1])
    es = explain(target="clip_es", competitors=[2, 3])
    assert (es - explain()).abs().max() > 1e-2 and (es - explain(target="contrastive")).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["gradcam", "relevancy"])
def test_contrastive_differs_from_logit(tiny_clip, method):
    torch.manual_seed(2)
    pixels = torch.randn(1, 3, 32, 32)
    explain = partial(Explainer(tiny_clip).prompt_maps, method=method)
    logit, contrastive = explain(pixels, PROMPTS), explain(pixels, PROMPTS, target="contrastive")
    assert (logit - contrastive).abs().max() > 1e-2


def test_block_choice(tiny_clip):
    pixels = torch.randn(1, 3, 32, 32)
    first = Explainer(tiny_clip, block=0).prompt_maps(pixels, PROMPTS)
    default = Explainer(tiny_clip).prompt_maps(pixels, PROMPTS)
    torch.testing.assert_close(first, default)  # two layers: block 0 is the second-to-last
    # the last block's patch outputs never reach the pooled CLS token: no gradient, a blank (not NaN) map
    assert Explainer(tiny_clip, block=-1).prompt_maps(pixels, PROMPTS).eq(0).all()
    with pytest.raises(ValueError):
        Explainer(tiny_clip, block=5)


@pytest.mark.parametrize("method", ["relevancy", "legrad"])
def test_attention_methods_leave_the_attention_implementation_alone(tiny_clip, method):
    before = tiny_clip.model.vision_model.config._attn_implementation
    Explainer(tiny_clip).prompt_maps(torch.randn(1, 3, 32, 32), PROMPTS, method)
    assert tiny_clip.model.vision_model.config._attn_implementation == before


def test_works_inside_no_grad_and_inference_mode(tiny_clip):
    pixels = torch.randn(1, 3, 32, 32)
    expected = Explainer(tiny_clip).prompt_maps(pixels, PROMPTS)
    with torch.no_grad():
        assert torch.allclose(Explainer(tiny_clip).prompt_maps(pixels, PROMPTS), expected)
    with torch.inference_mode():
        assert torch.allclose(Explainer(tiny_clip).prompt_maps(pixels, PROMPTS), expected)
    assert not any(p.requires_grad for p in tiny_clip.model.parameters())


def test_tokens_to_grid_drops_cls_and_keeps_patch_order():
    values = torch.arange(17.0)[None]
    grid = tokens_to_grid(values)
    assert grid.shape == (1, 4, 4) and grid[0, 0, 0] == 1 and grid[0, 1, 0] == 5 and grid[0, 3, 3] == 16
    with pytest.raises(ValueError):
        tokens_to_grid(torch.zeros(1, 16))


def test_normalize_guards_flat_maps():
    maps = normalize_maps(torch.stack([torch.zeros(3, 3), torch.full((3, 3), 2.0), torch.arange(9.0).view(3, 3)]))
    assert torch.isfinite(maps).all()
    assert maps[0].eq(0).all() and maps[1].eq(0).all()
    assert maps[2].min() == 0 and maps[2].max() == 1


def _center(clip, image, k=3, method="relevancy"):
    """The center view of one photo: CLIP's own crop, as explanations were before tiles."""
    return explain_photo(clip, image, PROMPTS, [False] * len(PROMPTS), k=k, method=method, view="center").explanation


def test_the_center_view_returns_top_k_with_maps(tiny_clip):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    for method in ("gradcam", "gradcam_contrastive", "relevancy"):
        result = _center(tiny_clip, image, method=method)
        assert isinstance(result, Explanation) and result.method == method
        expected = [prompt for prompt, _ in tiny_clip.top_k(image, PROMPTS, 3)]
        assert result.prompts == expected
        assert np.allclose(result.probs, [p for _, p in tiny_clip.top_k(image, PROMPTS, 3)], atol=1e-5)
        assert result.maps.shape == (3, 4, 4) and result.maps.dtype == np.float32
        assert result.crop_box == (10, 0, 50, 40) and result.image_size == (60, 40)
        assert result.combined.shape == (4, 4) and result.combined.max() == pytest.approx(1.0)
    with torch.inference_mode():  # the app may call it from inside inference mode
        again = _center(tiny_clip, image)
    assert np.allclose(again.maps, result.maps, atol=1e-6)
    with pytest.raises(ValueError):
        _center(tiny_clip, image, method="saliency")


class LinearCaptioner:
    """Stands in for ClipCaptioner: the caption's log-likelihood is a known function of the embedding."""

    def __init__(self, clip, direction):
        self.clip, self.direction = clip, direction

    def caption_log_likelihood(self, embeddings, captions):
        return self.clip.logit_scale.exp() * embeddings @ self.direction[0]

    def modules(self):
        return []

    def eval(self):
        return self


def test_caption_map_follows_the_caption_likelihood_gradient():
    clip = detector_clip()
    captioner = LinearCaptioner(clip, GREEN)
    caption_map = Explainer(clip).caption_map(captioner, colour_image(), "a green patch")
    assert torch.allclose(caption_map, Explainer(clip).prompt_maps(colour_image(), GREEN), atol=1e-6)
    assert peak(caption_map[0]) == GREEN_PATCH


@pytest.mark.parametrize("lm_kind", ["opt", "gpt2", "llama"])
def test_caption_maps_through_a_real_captioner(lm_kind):
    captioner = make_tiny_captioner(lm_kind, prefix_text="condition :")
    caption = "an apple with green mold and a bruise."
    pixels = torch.randn(1, 3, 32, 32)
    explainer = Explainer(captioner.clip)
    whole = explainer.caption_map(captioner, pixels, caption)
    words = explainer.caption_map(captioner, pixels, caption, per_word=True)
    assert whole.shape == (1, 4, 4) and words.shape == (len(caption.split()), 4, 4)
    assert torch.isfinite(words).all() and whole.max() == 1
    features = captioner.clip.image_features(pixels)
    # a word's map is the map of that word's log-probability alone
    one_word = explainer.explain(pixels, lambda f: word_log_probs(captioner, f, caption)[3:4])
    assert torch.allclose(words[3:4], one_word, atol=1e-5)
    tokens = token_log_probs(captioner, features, caption)
    assert torch.allclose(tokens.sum(), captioner.caption_log_likelihood(features, [caption])[0], atol=1e-4)
    assert torch.allclose(word_log_probs(captioner, features, caption).sum(), tokens[:-1].sum(), atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch's int8 API
def test_caption_map_refuses_an_int8_lm_instead_of_drawing_blank_maps():
    captioner = make_tiny_captioner("opt")
    captioner.lm = quantize_int8(captioner.lm)
    with pytest.raises(ValueError, match="int8"):
        Explainer(captioner.clip).caption_map(captioner, torch.randn(1, 3, 32, 32), "a pear.")


def test_words_own_their_tokens():
    captioner = make_tiny_captioner("opt")
    features = captioner.clip.image_features(torch.randn(1, 3, 32, 32))
    tokens = token_log_probs(captioner, features, "a pear with dark spots.")
    words = word_log_probs(captioner, features, "a pear with dark spots.")
    assert len(tokens) == 7 and len(words) == 5  # "spots." is two word-level tokens; EOS belongs to no word
    assert torch.allclose(words[-1], tokens[4] + tokens[5])
