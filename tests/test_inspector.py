import numpy as np
import pytest
import torch
from PIL import Image

from conftest import PROMPTS, make_tiny_captioner
from models.clip import CLIPW, make_word_tokenizer, tiny_clip_config
from models.config import GenerationOptions
from models.inspector import Inspector
from models.views import explain_photo
from utils.images import ImageLoadError
from utils.knowledge import load_knowledge


@pytest.fixture(scope="module")
def fruit_clip():
    knowledge = load_knowledge("fruit")
    tokenizer = make_word_tokenizer(knowledge.sentences() + knowledge.kind_sentences())
    return CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu")


def photo(width=96, height=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_zero_shot_caption_comes_from_the_knowledge_base(fruit_clip):
    inspection = Inspector(fruit_clip, "fruit").inspect(photo(), k=3, view="center")
    noun = inspection.kind[0].noun if inspection.kind else "fruit"  # the summary names the kind CLIP sees
    assert inspection.caption.endswith(".") and noun in inspection.caption.lower()
    assert [round(p, 6) for _, p in inspection.top_k] == sorted((round(p, 6) for _, p in inspection.top_k), reverse=True)
    assert inspection.maps.shape == (3, 4, 4) and inspection.caption_map is None
    assert len(inspection.overlays) == 3 and inspection.caption_overlay is None
    assert inspection.combined.size[0] > 0


def test_top_k_probabilities_match_clip(fruit_clip):
    inspector = Inspector(fruit_clip, "fruit")
    inspection = inspector.inspect(photo(seed=3), k=12, method="relevancy", view="center")
    probs = fruit_clip.probabilities(photo(seed=3), inspector.sentences)[0]
    assert np.isclose(sum(p for _, p in inspection.top_k), 1.0, atol=1e-5)
    assert np.isclose(inspection.top_k[0][1], probs.max().item(), atol=1e-5)


def test_captioner_mode_gives_caption_and_caption_map():
    captioner = make_tiny_captioner("opt")
    inspection = Inspector(captioner.clip, "fruit", captioner).inspect(
        photo(), k=2, view="center", generation=GenerationOptions(min_new_tokens=3, max_new_tokens=5))
    assert inspection.caption
    assert inspection.caption_map.shape == (4, 4) and inspection.caption_overlay is not None


def test_bad_image_raises_the_clear_error(fruit_clip):
    with pytest.raises(ImageLoadError):
        Inspector(fruit_clip, "fruit").inspect(b"not an image")
    with pytest.raises(ImageLoadError, match="over the limit"):
        Inspector(fruit_clip, "fruit", max_pixels=100).inspect(photo())


@pytest.mark.parametrize("method", ["gradcam", "relevancy"])
def test_caption_reuses_the_explain_pass_embedding_faithfully(method):
    captioner = make_tiny_captioner("opt")
    generation = GenerationOptions(min_new_tokens=3, max_new_tokens=6)
    inspection = Inspector(captioner.clip, "fruit", captioner).inspect(photo(seed=5), k=2, method=method,
                                                                        caption_map=False, generation=generation,
                                                                        view="center")
    encoded = captioner.clip.encode_images([photo(seed=5)])
    explained = explain_photo(captioner.clip, photo(seed=5), PROMPTS, [False] * len(PROMPTS), k=2, method=method,
                              view="center").explanation.embedding
    torch.testing.assert_close(explained, encoded)  # close, not bitwise: the explain pass runs with autograd
    assert inspection.caption == captioner.generate(embeddings=encoded, options=generation)[0]
