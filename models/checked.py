"""Reduced precision that keeps fp32's captions: a bf16 or int8 copy of the LM drafts the greedy caption and
the fp32 LM checks it, reading the drafted tokens in one cached pass and keeping them up to the first one it
would not have chosen, where its own choice goes in (speculative decoding with greedy acceptance, Leviathan
et al. 2023). The caption is the fp32 LM's greedy caption token for token; only reading several tokens in one
pass instead of one by one can move a logit in the last float bits.

Needed because the demo bundle's captions often hinge on a near-tie between two tokens: measured on held-out
demo images, plain bf16 kept 92% of fp32's greedy captions and every int8 scheme tried 75-89%
(demo/precision_bench.py). transformers' assisted generation does the same but not from inputs_embeds.
"""
import torch


class GreedyRule:
    """The greedy choice under the caption's rules: `processors` are transformers logits processors (n-gram
    ban, EOS held off before min_new_tokens, the knowledge-base grammar), as generate() would apply them to
    the caption's tokens; a caption ends at a token of `stops` (EOS and line breaks)."""

    def __init__(self, processors, stops):
        self.processors, self.stops = processors, set(stops)

    def __call__(self, tokens, logits):
        """The token after caption `tokens` (a list of ids) given the LM's next-token `logits` [V]."""
        ids = torch.tensor([tokens], dtype=torch.long, device=logits.device)
        scores = logits[None].float()
        for processor in self.processors:
            scores = processor(ids, scores)
        return int(scores[0].argmax())

    def finished(self, tokens, max_new_tokens):
        return len(tokens) >= max_new_tokens or (bool(tokens) and tokens[-1] in self.stops)


class _Reader:
    """One LM reading one caption as it grows, with a KV cache it can take back: `logits[i]` are its
    next-token logits after the caption's first i tokens."""

    def __init__(self, lm, prompt):
        self.lm = lm
        output = lm(inputs_embeds=prompt.to(lm.get_input_embeddings().weight.dtype), use_cache=True,
                    logits_to_keep=1)
        self.cache, self.logits = output.past_key_values, [output.logits[0, -1]]

    def read(self, tokens):
        """Read the tokens of `tokens` not read yet, all in one pass (one read of the weights for them all)."""
        new = tokens[len(self.logits) - 1:]
        if new:
            ids = torch.tensor([new], dtype=torch.long, device=self.logits[0].device)
            output = self.lm(input_ids=ids, past_key_values=self.cache, use_cache=True)
            self.logits += list(output.logits[0])

    def forget(self, keep):
        """Forget what was read after the caption's first `keep` tokens."""
        extra = len(self.logits) - 1 - keep
        if extra > 0:
            self.cache.crop(-extra)
            del self.logits[keep + 1:]


def _propose(reader, tokens, rule, length, max_new_tokens):
    """`tokens` continued greedily by the draft up to `length` tokens or the caption's end."""
    proposal = list(tokens)
    while len(proposal) < length and not rule.finished(proposal, max_new_tokens):
        reader.read(proposal)
        proposal.append(rule(proposal, reader.logits[len(proposal)]))
    return proposal


def _first_disagreement(check, proposal, start, rule):
    """(position, the checking LM's own token there) where it first disagrees with the proposal, or (None, None)."""
    for i in range(start, len(proposal)):
        choice = rule(proposal[:i], check.logits[i])
        if choice != proposal[i]:
            return i, choice
    return None, None


@torch.no_grad()
def checked_greedy(lm, draft, prompt, rule, max_new_tokens, lookahead=None):
    """One caption's greedy token ids, those of `lm` (fp32), mostly written by `draft`: the draft proposes up
    to `lookahead` tokens (default: the rest of the caption), `lm` reads them in one pass. `prompt` is the
    [1, P, D] prompt embeddings. Returns (token ids, passes of `lm` over the caption)."""
    check, guess = _Reader(lm, prompt), _Reader(draft, prompt)
    tokens, passes = [], 0
    while not rule.finished(tokens, max_new_tokens):
        proposal = _propose(guess, tokens, rule, len(tokens) + (lookahead or max_new_tokens), max_new_tokens)
        check.read(proposal)
        passes += 1
        wrong, choice = _first_disagreement(check, proposal, len(tokens), rule)
        if wrong is not None:
            tokens = proposal[:wrong] + [choice]
            check.forget(wrong)
            guess.forget(wrong)
        elif rule.finished(proposal, max_new_tokens):
            tokens = proposal
        else:  # all kept, and the fp32 LM's next token comes with them
            tokens = proposal + [rule(proposal, check.logits[len(proposal)])]
    return tokens, passes
