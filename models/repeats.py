"""The n-gram ban of decoding, by words: transformers' NoRepeatNGramLogitsProcessor compares token ids, so
"soft brown rot, soft Brown rot" passes it (" brown" and " Brown" are different tokens), and so does "dark spots,
dark spot"; this one compares tokens by their text, lower-cased and without a plural "s"."""
import math

import torch
from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor

from utils.caption_words import singular


def word_classes(texts):
    """[V] for each token (given by its text) the first token id of the same word: case and plural aside."""
    first = {}
    return torch.tensor([first.setdefault(singular(text), i) for i, text in enumerate(texts)], dtype=torch.long)


class WordNoRepeatNGram(LogitsProcessor):
    """No run of `size` tokens twice, tokens of the same word counting as one (`classes`: as from word_classes)."""

    def __init__(self, size, classes):
        self.ban, self.classes = NoRepeatNGramLogitsProcessor(size), classes

    def __call__(self, input_ids, scores):
        size, known = scores.shape[-1], len(self.classes)  # the LM's rows and the tokenizer's tokens may differ
        classes = torch.cat([self.classes[:size], torch.arange(min(known, size), size)]).to(scores.device)
        banned = torch.isinf(self.ban(classes[input_ids], torch.zeros_like(scores)))  # banned representatives
        return scores.masked_fill(banned[:, classes], -math.inf)
