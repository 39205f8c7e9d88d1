"""The n-gram ban of decoding, blind to case: transformers' NoRepeatNGramLogitsProcessor compares token ids, so
"soft brown rot, soft Brown rot" passes it (" brown" and " Brown" are different tokens); this one compares
tokens by their lower-cased text."""
import math

import torch
from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor


def caseless_classes(texts):
    """[V] for each token (given by its text) the first token id with the same lower-cased text."""
    first = {}
    return torch.tensor([first.setdefault(text.lower(), i) for i, text in enumerate(texts)], dtype=torch.long)


class CaselessNoRepeatNGram(LogitsProcessor):
    """No run of `size` tokens twice, tokens of the same lower-cased text counting as one (`classes`: as from
    caseless_classes)."""

    def __init__(self, size, classes):
        self.ban, self.classes = NoRepeatNGramLogitsProcessor(size), classes

    def __call__(self, input_ids, scores):
        size, known = scores.shape[-1], len(self.classes)  # the LM's rows and the tokenizer's tokens may differ
        classes = torch.cat([self.classes[:size], torch.arange(min(known, size), size)]).to(scores.device)
        banned = torch.isinf(self.ban(classes[input_ids], torch.zeros_like(scores)))  # banned representatives
        return scores.masked_fill(banned[:, classes], -math.inf)
