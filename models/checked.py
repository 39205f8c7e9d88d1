"""Greedy captions written several tokens per LM pass: a draft proposes the caption's next tokens and the fp32
LM checks them, reading them in one cached pass and keeping them up to the first one it would not have chosen,
where its own choice goes in (speculative decoding with greedy acceptance, Leviathan et al. 2023). The caption is
the fp32 LM's greedy caption token for token; only reading several tokens in one pass instead of one by one can
move a logit in the last float bits.

Two drafts:
- PhraseDraft looks the next tokens up in the sentences the knowledge base's summarizer writes (prompt lookup
  decoding, Saxena 2023, over those sentences), led by the one sentence the auto-labels would give this photo:
  free to run, and right most of the time because the captioner learned exactly such sentences, so one photo's
  caption takes a few LM passes instead of one per token.
- ModelDraft, a bf16 or int8 copy of the LM (--lm-precision): needed because the demo bundle's captions often
  hinge on a near-tie between two tokens: measured on held-out demo images, plain bf16 kept 92% of fp32's greedy
  captions and every int8 scheme tried 75-89% (demo/precision_bench.py).
transformers' assisted and prompt-lookup generation do the same, but not from inputs_embeds nor from a corpus.
"""
import copy
from collections import Counter, defaultdict

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

    def __init__(self, lm, prompt, tokens=()):
        """Reads the prompt embeddings [1, P, D] and the caption's first `tokens` in one pass."""
        self.lm = lm
        embed = lm.get_input_embeddings()
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=prompt.device)
        inputs = torch.cat([prompt.to(embed.weight.dtype), embed(ids)], dim=1)
        output = lm(inputs_embeds=inputs, use_cache=True, logits_to_keep=len(tokens) + 1)
        self.cache, self.logits = output.past_key_values, list(output.logits[0])

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


class ModelDraft:
    """A reduced-precision copy of the LM as the draft: it writes greedily under the same rule."""

    def __init__(self, lm):
        self.lm = lm

    def start(self, prompt):
        return _ModelGuess(_Reader(self.lm, prompt))


class _ModelGuess:
    def __init__(self, reader):
        self.reader = reader

    def propose(self, tokens, rule, length, max_new_tokens):
        """`tokens` continued greedily by the draft up to `length` tokens or the caption's end."""
        proposal = list(tokens)
        while len(proposal) < length and not rule.finished(proposal, max_new_tokens):
            self.reader.read(proposal)
            proposal.append(rule(proposal, self.reader.logits[len(proposal)]))
        return proposal

    def forget(self, keep):
        self.reader.forget(keep)


class PhraseDraft:
    """Next tokens looked up in example sentences (token id lists, each ending in EOS): after the longest run of
    the caption's last tokens (up to `order`) seen in them, the token that most often followed it there."""
    START = -1  # stands before every sentence, so a caption's first tokens have a context too

    def __init__(self, sentences, order=3):
        self.order = order
        counts = defaultdict(Counter)
        for sentence in sentences:
            padded = [self.START] * order + list(sentence)
            for end in range(order, len(padded)):
                for n in range(1, order + 1):
                    counts[tuple(padded[end - n:end])][padded[end]] += 1
        self.next = {context: counter.most_common(1)[0][0] for context, counter in counts.items()}
        self.hint = {}

    def hinted(self, sentence):
        """This draft led by one expected sentence (token ids): where a context is in it, its tokens come first."""
        led = copy.copy(self)
        led.hint = PhraseDraft([sentence], self.order).next
        return led

    def start(self, prompt):
        return self  # nothing to read: the lookup keeps no state between proposals

    def propose(self, tokens, rule, length, max_new_tokens):
        """`tokens` continued by lookup up to `length` tokens, the caption's end, or an unseen context."""
        proposal = list(tokens)
        while len(proposal) < length and not rule.finished(proposal, max_new_tokens):
            following = self._lookup([self.START] * self.order + proposal)
            if following is None:
                break
            proposal.append(following)
        return proposal

    def _lookup(self, padded):
        for n in range(self.order, 0, -1):
            for table in (self.hint, self.next):
                following = table.get(tuple(padded[-n:]))
                if following is not None:
                    return following
        return None

    def forget(self, keep):
        pass


def _first_disagreement(check, proposal, start, rule):
    """(position, the checking LM's own token there) where it first disagrees with the proposal, or (None, None)."""
    for i in range(start, len(proposal)):
        choice = rule(proposal[:i], check.logits[i])
        if choice != proposal[i]:
            return i, choice
    return None, None


@torch.no_grad()
def checked_greedy(lm, draft, prompt, rule, max_new_tokens, lookahead=None):
    """One caption's greedy token ids, those of `lm` (fp32), mostly written by `draft` (a ModelDraft or
    PhraseDraft): the draft proposes up to `lookahead` tokens (default: the rest of the caption), `lm` reads
    them in one pass. `prompt` is the [1, P, D] prompt embeddings. Returns (token ids, passes of `lm`)."""
    guess, check = draft.start(prompt), None
    tokens, passes = [], 0
    while not rule.finished(tokens, max_new_tokens):
        proposal = guess.propose(tokens, rule, len(tokens) + (lookahead or max_new_tokens), max_new_tokens)
        if check is None:  # the prompt and the first proposal in one pass
            check = _Reader(lm, prompt, proposal)
        else:
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
