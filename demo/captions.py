"""Caption bench on a held-out synthetic world: do captions repeat, invent defects, name the primary defect?

    python -m demo.captions                                  # checkpoints/demo, world seed 7, 400 images
    python -m demo.captions --bundle OTHER --decodings old,default,constrained --n 600

Rows: the auto-labeler's captions for these images (what a captioner is taught: the knowledge base's summary
of CLIP's top 3 and CLIP's kind), then the captioner under each decoding: "old" (no repeat ban: the decoding
before issue 15), "default" (GenerationOptions()), "constrained" (knowledge-base sentences only), "beam"
(4 beams with the defaults), "ngram3" (no repeated 3-token runs instead of pairs). Columns (utils.caption_words.py does the matching):
  repeated     captions with a repeated phrase (a word pair that occurs twice, not both fillers)
  absent       captions naming a defect the item does not have
  primary      defect items whose caption names their primary defect (the largest)
  healthy      healthy items called fresh with no defect named
  kind         captions naming the item's fruit kind
The last row is chance: a caption naming one defect drawn at random, and one kind drawn at random.
"""
import argparse
import os
import time
from pathlib import Path

DECODINGS = ("old", "default", "constrained", "beam", "ngram3")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="checkpoints/demo",
                        help="captioner bundle (default: %(default)s, the offline demo)")
    parser.add_argument("--world", default="checkpoints/demo-captions-world",
                        help="held-out world, generated when missing (default: %(default)s)")
    parser.add_argument("--n", type=int, default=400, help="held-out images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="held-out world seed; the demo trains on 0 (default: 7)")
    parser.add_argument("--decodings", default="old,default,constrained",
                        help=f"comma-separated, of {', '.join(DECODINGS)} (default: %(default)s)")
    parser.add_argument("--examples", type=int, default=3, help="captions to print per decoding that repeat or "
                                                                 "name an absent defect (default: %(default)s)")
    args = parser.parse_args(argv)
    args.decodings = [d.strip() for d in args.decodings.split(",") if d.strip()]
    unknown = sorted(set(args.decodings) - set(DECODINGS))
    if unknown:
        parser.error(f"--decodings: unknown {unknown} (known: {', '.join(DECODINGS)})")
    return args


def decoding(name):
    from models.config import GenerationOptions

    return {"old": GenerationOptions(no_repeat_ngram_size=0), "default": GenerationOptions(),
            "constrained": GenerationOptions(constrained=True), "beam": GenerationOptions(num_beams=4),
            "ngram3": GenerationOptions(no_repeat_ngram_size=3)}[name]


def scores(captions, truth, knowledge):
    """The bench's columns for one list of captions (one per world item)."""
    import numpy as np

    from utils.caption_words import named_defects, named_kinds, repeated_phrase, says_healthy

    defects = [[d for d in row.split(";") if d] for row in truth["defects"]]
    named = [set(named_defects(c, knowledge)) for c in captions]
    sick = [i for i, d in enumerate(defects) if d]
    healthy = [i for i, d in enumerate(defects) if not d]
    return {
        "repeated": np.mean([repeated_phrase(c) is not None for c in captions]),
        "absent": np.mean([bool(n - set(d)) for n, d in zip(named, defects)]),
        "primary": np.mean([truth["primary"].iloc[i] in named[i] for i in sick]) if sick else np.nan,
        "healthy": np.mean([says_healthy(captions[i], knowledge) for i in healthy]) if healthy else np.nan,
        "kind": np.mean([f in named_kinds(c, knowledge) for c, f in zip(captions, truth["fruit"])])
        if knowledge.kinds else np.nan,
    }


def chance(truth, knowledge):
    """A caption naming one defect and one kind drawn uniformly at random."""
    import numpy as np

    n_defects = sum(not p.healthy for p in knowledge.prompts)
    defects = [[d for d in row.split(";") if d] for row in truth["defects"]]
    return {"repeated": 0.0, "absent": np.mean([1 - len(d) / n_defects for d in defects]),
            "primary": 1 / n_defects, "healthy": 0.0,
            "kind": 1 / len(knowledge.kinds) if knowledge.kinds else np.nan}


def teacher_captions(clip, embeddings, knowledge, top_k=3):
    """What train/label.py writes for these images (no class prior): the summary of CLIP's top-k, with
    CLIP's likeliest kind."""
    import torch

    from models.kinds import likeliest_kinds
    from utils.summarizer import summarize_top

    with torch.no_grad():
        probs = clip.logits(embeddings, knowledge.sentences()).softmax(-1)
    return [summarize_top(row, knowledge, top_k, kind=kind)
            for row, kind in zip(probs.tolist(), likeliest_kinds(clip, embeddings, knowledge))]


def bad_examples(captions, truth, knowledge, count):
    from utils.caption_words import named_defects, repeated_phrase

    out = []
    for caption, defects in zip(captions, truth["defects"]):
        absent = set(named_defects(caption, knowledge)) - set(defects.split(";"))
        if repeated_phrase(caption) or absent:
            out.append(f"    {caption!r} (true: {defects or 'healthy'})")
    return out[:count]


def run(args):
    import pandas as pd

    from demo.world import load_truth, write_world
    from models.vlm import ClipCaptioner
    from utils.knowledge import load_knowledge

    captioner = ClipCaptioner.from_pretrained(args.bundle)
    knowledge = load_knowledge(captioner.config.knowledge)
    world = write_world(args.world, args.n, seed=args.seed, width=128, height=128, progress=True)
    truth = load_truth(world)
    clip = captioner.clip
    embeddings = clip.encode_images([Path(world) / p for p in truth["path"]])
    rows, examples = {"auto-labels (teacher)": scores(teacher_captions(clip, embeddings, knowledge), truth,
                                                       knowledge)}, []
    for name in args.decodings:
        start = time.perf_counter()
        captions = captioner.caption_embeddings(embeddings, decoding(name), progress=True, desc=name)
        rows[f"captioner: {name}"] = {**scores(captions, truth, knowledge),
                                      "s/caption": (time.perf_counter() - start) / len(captions)}
        examples += [f"  {name}:"] + bad_examples(captions, truth, knowledge, args.examples)
    rows["chance"] = chance(truth, knowledge)
    table = pd.DataFrame(rows).T
    sick = sum(bool(d) for d in truth["defects"])
    return (f"\nheld-out world {world} (seed {args.seed}, {len(truth)} images, {sick} with defects), bundle "
            f"{args.bundle}\n" + table.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")
            + "\nrepeating or inventing captions:\n" + "\n".join(examples))


def main(argv=None):
    args = parse_args(argv)  # before any heavy import: --help answers at once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    print(run(args))
    print(f"({time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
