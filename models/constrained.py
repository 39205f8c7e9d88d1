"""Constrained decoding: a caption can only be a sentence the knowledge base's summarizer could write.

    "An apple with green mold, dark spots and a brown bruise."
     opening       phrase     join  phrase join  phrase   end

Defect phrases come from the knowledge base, each at most once and at most `max_defects` of them, so a
caption can neither repeat a phrase nor invent one; the model still chooses which, in which order, and the
product kind. The grammar is kept as token pieces (openings, phrases, joins) rather than every sentence, so
a large knowledge base costs no more than its prompts. transformers applies it through
`prefix_allowed_tokens_fn` (greedy, beam search and sampling alike).
"""
from dataclasses import dataclass, field

from utils.knowledge import load_knowledge
from utils.summarizer import HEALTHY_WORD, MODES, join_phrases, opening, phrase_texts


@dataclass
class _Node:
    children: dict = field(default_factory=dict)  # token id -> _Node
    label: object = None  # set where a piece ends
    labels: set = field(default_factory=set)  # every label at or below this node


@dataclass(frozen=True)
class _State:
    slot: str  # which pieces come next: open, healthy, defect, join, stop, end
    count: int = 0  # defect phrases written
    used: frozenset = frozenset()
    last: bool = False  # the next phrase is the last one (after " and")
    listing: bool = False  # after ", ": the list must go on


class CaptionGrammar:
    """The summarizer's sentences as token pieces for one tokenizer; `allowed_tokens_fn` plugs into generate."""

    def __init__(self, knowledge, tokenizer, max_defects=3, healthy_word=HEALTHY_WORD):
        self.knowledge, self.tokenizer = load_knowledge(knowledge), tokenizer
        self.max_defects, self.eos = max(1, max_defects), tokenizer.eos_token_id
        self.nouns = [self.knowledge.domain] + [kind.noun for kind in self.knowledge.kinds]
        self.healthy = phrase_texts([p for p in self.knowledge.prompts if p.healthy])
        self.defects = phrase_texts([p for p in self.knowledge.prompts if not p.healthy])
        self.openings = {opening(noun, mode, healthy_word): mode for noun in self.nouns for mode in MODES}
        self.tries = {
            "open": _trie({self._encode(text): mode for text, mode in self.openings.items()}),
            "healthy": _trie({self._encode(" " + text): i for i, text in enumerate(self.healthy)}),
            "defect": _trie({self._encode(" " + text): i for i, text in enumerate(self.defects)}),
            "join": _trie({self._encode(","): ",", self._encode(" and"): "and", self._encode("."): "."}),
            "stop": _trie({self._encode("."): "."}),
            "end": _trie({(self.eos,): "eos"}),
        }
        self._check_pieces()

    def _encode(self, text):
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _check_pieces(self):
        """The pieces must tokenize as the whole sentences do (the captioner learned whole sentences);
        true for byte-level BPE tokenizers such as GPT-2's, OPT's and SmolLM2's."""
        samples = [f"{text} {self.healthy[0]}." for text, mode in self.openings.items() if mode == "healthy"]
        samples += [f"{text} {join_phrases(self.defects[:self.max_defects])}." for text, mode in
                    self.openings.items() if mode != "healthy"]
        for sentence in samples:
            if not self.accepts(self._encode(sentence) + (self.eos,)):
                raise ValueError(f"constrained decoding: this tokenizer splits {sentence!r} differently from its "
                                 "parts; turn constrained decoding off for this LM")

    def example_sentences(self):
        """Token ids (EOS last) of sentences covering every piece and every way pieces follow each other: each
        opening with each phrase of its kind, and each defect phrase listed before the next ones."""
        texts = [f"{text} {phrase}." for text, mode in self.openings.items()
                 for phrase in (self.healthy if mode == "healthy" else self.defects)]
        start = opening(self.knowledge.domain, "defect")
        for i in range(len(self.defects)):
            following = [self.defects[(i + j) % len(self.defects)] for j in range(self.max_defects)]
            texts += [f"{start} {join_phrases(following[:count])}." for count in range(2, len(following) + 1)]
        return [self._encode(text) + (self.eos,) for text in texts]

    def accepts(self, token_ids):
        """Whether these tokens are a whole sentence of the grammar, EOS included."""
        return any(state.slot == "done" for state, _ in self._walk(token_ids, self._start()))

    def allowed_tokens_fn(self, prefix_text=""):
        """prefix_allowed_tokens_fn for generate; `prefix_text` is what the LM already read after the image
        (the caption's first words). Raises ValueError when no sentence of the grammar begins with it."""
        start = self._walk(self._encode(prefix_text), self._start()) if prefix_text else self._start()
        if not start:
            raise ValueError(f"constrained decoding: no caption the knowledge base allows begins with "
                             f"{prefix_text!r} (they begin like {next(iter(self.openings))!r}); change the "
                             "prefix text or turn constrained decoding off")
        cache = {}

        def allowed(batch_id, generated):
            key = tuple(generated.tolist())
            if key not in cache:
                cache[key] = self._next_tokens(self._walk(key, start)) or [self.eos]  # done: only EOS (padding)
            return cache[key]
        return allowed

    def _start(self):
        return [(_State("open"), self.tries["open"])]

    def _walk(self, token_ids, configs):
        """Every (state, trie node) the tokens can lead to from `configs` (several while pieces share a start)."""
        for token in token_ids:
            moved = []
            for state, node in configs:
                child = node.children.get(token)
                if child is not None and child.labels & self._labels(state):
                    moved += self._close(state, child)
            configs = moved
        return configs

    def _close(self, state, node):
        """The node itself, and where a piece ends there, the start of the next piece too."""
        configs = [(state, node)]
        if node.label is not None and node.label in self._labels(state):
            following = self._after(state, node.label)
            configs.append((following, self.tries.get(following.slot, _Node())))
        return configs

    def _next_tokens(self, configs):
        return sorted({token for state, node in configs for token, child in node.children.items()
                       if child.labels & self._labels(state)})

    def _labels(self, state):
        """Which piece labels may end in this state."""
        if state.slot == "defect":
            return set(range(len(self.defects))) - state.used
        if state.slot == "join":
            more = state.count < self.max_defects
            return ({"and"} if more else set()) | ({","} if state.count + 1 < self.max_defects else set()) | \
                (set() if state.listing else {"."})
        return {"open": set(MODES), "healthy": set(range(len(self.healthy))), "stop": {"."},
                "end": {"eos"}}.get(state.slot, set())

    def _after(self, state, label):
        """The state once a piece with this label is written."""
        if state.slot == "open":
            return _State("healthy" if label == "healthy" else "defect")
        if state.slot == "healthy" or (state.slot == "defect" and state.last):
            return _State("stop")
        if state.slot == "defect":
            return _State("join", state.count + 1, state.used | {label}, listing=state.listing)
        if state.slot == "join" and label != ".":
            return _State("defect", state.count, state.used, last=label == "and", listing=label == ",")
        return _State({"join": "end", "stop": "end"}.get(state.slot, "done"))


def _trie(pieces):
    """{token tuple: label} -> the root _Node, each node knowing the labels below it."""
    root = _Node()
    for tokens, label in pieces.items():
        node = root
        node.labels.add(label)
        for token in tokens:
            node = node.children.setdefault(token, _Node())
            node.labels.add(label)
        node.label = label
    return root
