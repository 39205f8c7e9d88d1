"""One whole Inspect (caption of 30 tokens + top-5 maps + caption map + overlays + verdict) per LM precision, at
real sizes: randomly initialised CLIP ViT-B/32 with OPT-125M or SmolLM2-135M built from configs (no download),
on a 640x480 photo; then the demo bundle's own, on one of its held-out world images.

Every figure is also printed as a ratio to one plain image encode (CLIP ViT-B/32, 224x224) timed in the same
rounds, since the cores may be shared; the load average is printed with them. Modes run round-robin, so load
from other jobs hits each alike. Asserts nothing.

A random LM's logits are near-ties everywhere and it writes nothing like the knowledge base's sentences: the worst
case for every draft (phrase, bf16, int8), whose tokens the fp32 check then corrects one by one. The demo bundle's
rows say what a trained LM gets.

    python -m bench.bench_inspect --runs 3 --lms OPT-125M --bundle checkpoints/demo
"""
import argparse
import copy
import os
import statistics
import time

LM_SIZES = ("OPT-125M", "SmolLM2-135M")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="timed rounds, after one warm-up (median reported)")
    parser.add_argument("--lms", nargs="*", default=list(LM_SIZES), choices=LM_SIZES, help="random-init LM sizes")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--bundle", default="checkpoints/demo", help="a trained bundle to time too ('' = none)")
    parser.add_argument("--world", default="checkpoints/demo-inspect-world",
                        help="held-out world (seed 7) whose one image the bundle inspects (generated when missing)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    return parser.parse_args(argv)


def random_clip():
    """Random-init CLIP ViT-B/32 whose word tokenizer knows the fruit knowledge base's sentences."""
    import torch
    from transformers import CLIPConfig

    from models.clip import CLIPW, make_word_tokenizer
    from utils.knowledge import load_knowledge

    torch.manual_seed(0)
    knowledge = load_knowledge("fruit")
    return CLIPW.from_config(CLIPConfig(), make_word_tokenizer(knowledge.sentences() + knowledge.kind_sentences()),
                             device="cpu")


def random_inspector(clip, lm_size):
    """An Inspector over `clip` and a random-init LM of the given size, with the fruit knowledge base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from models.clip import make_word_tokenizer
    from models.config import CaptionerConfig
    from models.inspector import Inspector
    from models.vlm import ClipCaptioner

    torch.manual_seed(0)
    lm = OPTForCausalLM(OPTConfig()) if lm_size == "OPT-125M" else LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True))
    words = make_word_tokenizer([f"w{i}" for i in range(lm.config.vocab_size)])
    captioner = ClipCaptioner(clip, lm, words, CaptionerConfig(lm=lm_size)).eval()
    return Inspector(clip, "fruit", captioner, f"random {lm_size}")


def photo():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))


def time_modes(modes, image, encode, runs):
    """{mode: median ms of one Inspect}, and the median ms of the plain encode timed before each. `modes` maps
    a name to (inspector, GenerationOptions, caption maps on)."""
    times, encodes = {mode: [] for mode in modes}, []
    for run in range(runs + 1):  # the first round warms up
        for mode, (inspector, generation, caption_map) in modes.items():
            start = time.perf_counter()
            encode()
            encoded = time.perf_counter()
            inspector.inspect(image, generation=generation, k=5, caption_map=caption_map)
            if run:
                encodes.append((encoded - start) * 1000)
                times[mode].append((time.perf_counter() - encoded) * 1000)
    return {mode: statistics.median(ms) for mode, ms in times.items()}, statistics.median(encodes)


def report(title, medians, encode_ms):
    lines = [f"{title}; plain encode {encode_ms:.0f} ms = 1.00x; load average {os.getloadavg()[0]:.1f}"]
    first = next(iter(medians.values()))
    for mode, ms in medians.items():
        lines.append(f"  {mode:<42} whole Inspect {ms:7.0f} ms  {ms / encode_ms:6.2f}x encode  {ms / first:5.2f}x "
                     "the first row")
    return "\n".join(lines)


def modes_of(base, precisions, generation):
    """The app's default (fp32, phrase draft, caption maps) first; then without caption maps, token by token,
    and each reduced precision's draft."""
    from dataclasses import replace

    token_by_token = replace(generation, phrase_draft=False)
    modes = {"fp32, phrase draft, caption maps (default)": (base, generation, True),
             "fp32, phrase draft, no caption maps": (base, generation, False),
             "fp32 token by token, caption maps": (base, token_by_token, True)}
    for precision in precisions:
        if precision != "fp32":
            modes[f"{precision} draft, fp32 check, caption maps"] = (_at_precision(base, precision), generation, True)
    return modes


def run(args):
    import torch

    from models.config import GenerationOptions
    from models.inspector import Inspector

    if args.threads:
        torch.set_num_threads(args.threads)
    pixels, clip = torch.randn(1, 3, 224, 224), random_clip()
    encode = lambda: clip.encode_images(pixels)  # noqa: E731  the unit of every ratio
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, median of "
          f"{args.runs}, k=5, caption maps on; unit: one plain CLIP ViT-B/32 encode of a 224x224 image")
    for lm_size in args.lms:
        fixed = GenerationOptions(min_new_tokens=30, max_new_tokens=30)  # a random LM would stop anywhere
        modes = modes_of(random_inspector(clip, lm_size), args.precisions, fixed)
        print(report(f"random CLIP ViT-B/32 + {lm_size}, 640x480 photo, 30 tokens", *time_modes(
            modes, photo(), encode, args.runs)), flush=True)
    if args.bundle:
        from demo.world import load_truth, write_world

        world = write_world(args.world, 1, seed=7, width=128, height=128, progress=True)
        image = os.path.join(world, load_truth(world)["path"].iloc[0])
        modes = modes_of(Inspector.load(args.bundle, device="cpu"), args.precisions, GenerationOptions())
        print(report(f"bundle {args.bundle}, world seed 7 image 0, default decoding (stops at its own end)",
                     *time_modes(modes, image, encode, args.runs)))


def _at_precision(inspector, precision):
    reduced = copy.copy(inspector)
    reduced.captioner = copy.deepcopy(inspector.captioner).set_precision(precision)
    return reduced


def main(argv=None):
    args = parse_args(argv)  # before any heavy import: --help answers at once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run(args)


if __name__ == "__main__":
    main()
