"""Tiny randomly initialised models built from configs: every test runs offline on CPU in seconds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(1)  # tiny models: thread start-up costs more than it gains, worse on a shared machine
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM  # noqa: E402,E501

from models.clip import CLIPW, make_word_tokenizer, tiny_clip_config  # noqa: E402
from models.config import CaptionerConfig  # noqa: E402
from models.vlm import ClipCaptioner  # noqa: E402

CAPTIONS = [
    "a fresh apple with smooth skin.",
    "an apple with green mold and a bruise.",
    "a pear with dark spots.",
    "a lemon with a cut in the skin and white mold.",
]
PROMPTS = ["smooth skin", "green mold", "a bruise", "dark spots", "a cut in the skin", "white mold"]


def smooth_photo(seed, size=(64, 48)):
    """A smooth random picture (compresses like a photo, unlike pure noise)."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def word_tokenizer():
    return make_word_tokenizer(CAPTIONS + PROMPTS + ["a photo of a fruit with", "condition :"])


def tiny_lm(kind, vocab_size, dim=32):
    torch.manual_seed(0)
    special = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3, vocab_size=vocab_size)
    if kind == "opt":
        return OPTForCausalLM(OPTConfig(hidden_size=dim, word_embed_proj_dim=dim, ffn_dim=2 * dim, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64, **special))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=dim, n_layer=2, n_head=2, n_positions=64, **special))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
                                            num_attention_heads=2, num_key_value_heads=1,
                                            max_position_embeddings=64, **special))
    raise ValueError(kind)


def make_tiny_clip():
    torch.manual_seed(0)
    tokenizer = word_tokenizer()
    return CLIPW.from_config(tiny_clip_config(vocab_size=len(tokenizer)), tokenizer, device="cpu")


def make_tiny_captioner(lm_kind="opt", **config):
    tokenizer = word_tokenizer()
    clip = make_tiny_clip()
    config.setdefault("prefix_length", 4)
    config.setdefault("mapper_layers", 2)
    config.setdefault("mapper_heads", 2)
    config.setdefault("clip_length", 2)
    captioner = ClipCaptioner(clip, tiny_lm(lm_kind, len(tokenizer)), tokenizer,
                              CaptionerConfig(clip="tiny-clip", lm=f"tiny-{lm_kind}", **config))
    return captioner.eval()


@pytest.fixture
def tiny_clip():
    return make_tiny_clip()


@pytest.fixture
def tiny_captioner():
    return make_tiny_captioner()
