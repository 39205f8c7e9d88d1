"""What the demo's benches share: the held-out world they draw, and whether a caption is right for an item."""
from demo.world import HARD, WorldOptions, write_world
from utils.caption_words import healthy_words, named_defects, words


def held_out_world(directory, n, seed, size=128, hard=False):
    return write_world(directory, n, seed=seed, width=size, height=size, progress=True,
                       options=HARD if hard else WorldOptions())


def defects_of(truth):
    """Each item's true defect ids (labels.csv's ';'-joined column; [] for a healthy item)."""
    return [[d for d in row.split(";") if d] for row in truth["defects"]]


def caption_correct(caption, primary, knowledge, defects=None):
    """A defect item's caption names its primary defect (with `defects`, any of them); a healthy item's
    says fresh/healthy and names no defect."""
    named = named_defects(caption, knowledge)
    if primary == "healthy":
        return not named and bool(healthy_words(knowledge) & words(caption))
    return bool(set(named) & set(defects)) if defects else primary in named
