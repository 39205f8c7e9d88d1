"""Per-image inference cost with randomly initialised models of the real sizes (no download needed).

Prints: CLIP ViT-B/32 image encode (batch 1 and 8), and 30-token caption generation at batch 1 and 8 for
OPT-125M and SmolLM2-135M sizes in fp32 / bf16 / int8, with and without the KV cache. Asserts nothing.
"""
import argparse
import copy
import statistics
import time

import torch
from transformers import CLIPConfig, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from models.clip import CLIPW, make_word_tokenizer, tiny_clip_config
from models.config import CaptionerConfig
from models.vlm import ClipCaptioner

LMS = {
    "OPT-125M": lambda: OPTForCausalLM(OPTConfig()),
    "SmolLM2-135M": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True)),
}


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def greedy_agreement(steps=300):
    """Overfit a tiny OPT captioner on 4 captions (as the tests do); do reduced precisions keep its captions?"""
    captions = ["a fresh apple with smooth skin.", "an apple with green mold and a bruise.",
                "a pear with dark spots.", "a lemon with a cut in the skin and white mold."]
    words = make_word_tokenizer(captions)
    clip = CLIPW.from_config(tiny_clip_config(vocab_size=len(words)), words, device="cpu")
    lm = OPTForCausalLM(OPTConfig(vocab_size=len(words), hidden_size=32, word_embed_proj_dim=32, ffn_dim=64,
                                  num_hidden_layers=2, num_attention_heads=2, pad_token_id=0, bos_token_id=2,
                                  eos_token_id=3))
    captioner = ClipCaptioner(clip, lm, words, CaptionerConfig(prefix_length=4, lm_mode="full"))
    embeddings = torch.nn.functional.normalize(torch.randn(4, clip.embed_dim), dim=-1)
    optimizer = torch.optim.AdamW([p for p in captioner.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        captioner(embeddings, captions).loss.backward()
        optimizer.step()
    captioner.eval()
    reference = captioner.generate(embeddings=embeddings, max_new_tokens=20)
    for precision in ("bf16", "int8"):
        same = copy.deepcopy(captioner).set_precision(precision).generate(embeddings=embeddings, max_new_tokens=20)
        print(f"overfit test model, {precision} greedy captions identical to fp32: {same == reference}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--tokens", type=int, default=30, help="new tokens per caption")
    parser.add_argument("--lms", nargs="+", default=list(LMS), choices=list(LMS), help="LM sizes to time")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; median of {args.repeats}")

    clip = CLIPW.from_config(CLIPConfig(), make_word_tokenizer(["a fruit"]), device="cpu")
    for batch in (1, 8):
        pixels = torch.randn(batch, 3, 224, 224)
        ms = median_ms(lambda: clip.encode_images(pixels), args.repeats)
        print(f"CLIP ViT-B/32 image encode, batch {batch}: {ms / batch:7.1f} ms/image")

    greedy_agreement()
    for name in args.lms:
        lm = LMS[name]()
        words = make_word_tokenizer([f"w{i}" for i in range(lm.config.vocab_size)])
        for precision in ("fp32", "bf16", "int8"):
            captioner = ClipCaptioner(clip, copy.deepcopy(lm), words, CaptionerConfig(lm=name)).eval()
            captioner.set_precision(precision)
            for batch, cache in ((1, True), (8, True), (1, False)):
                if not cache and precision != "fp32":
                    continue
                embeddings = torch.randn(batch, clip.embed_dim)
                ms = median_ms(lambda: captioner.generate(
                    embeddings=embeddings, min_new_tokens=args.tokens, max_new_tokens=args.tokens, use_cache=cache),
                    args.repeats)
                label = (f"{name} {precision} generate {args.tokens} tokens, batch {batch}"
                         + ("" if cache else ", no KV cache"))
                print(f"{label:<60} {ms / batch:7.1f} ms/image  ({ms / args.tokens / batch:5.1f} ms/token/image)")


if __name__ == "__main__":
    main()
