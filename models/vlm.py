"""ClipCaptioner: frozen CLIP -> mapper -> prefix vectors -> causal LM writes the caption (ClipCap)."""
import dataclasses
import functools
import json
import math
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from models.clip import CLIPW
from models.config import PRECISIONS, CaptionerConfig, GenerationOptions
from models.checked import GreedyRule, ModelDraft, PhraseDraft, checked_greedy
from models.kinds import likeliest_kinds, name_kind
from models.lm import draft_lm, load_lm, set_trainable
from models.mapper import build_mapper
from models.verdict import BUNDLE_FILES
from utils.files import load_safetensors, read_json_strict, staged_directory

_GLOBAL_RNG_LOCK = threading.Lock()
WORDS_FILE = "caption_words.json"


@contextmanager
def _seeded_global_rng(seed, device):
    """transformers samples from torch's global RNG: one sampler at a time holds it, so concurrent requests
    never draw from each other's seeded stream, and it gets back the state it found."""
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


class ClipCaptioner(nn.Module):
    def __init__(self, clip, lm, tokenizer, config=None):
        super().__init__()
        config = dataclasses.replace(config or CaptionerConfig(), clip_dim=clip.embed_dim,
                                     lm_dim=lm.get_input_embeddings().embedding_dim)  # the caller's stays as it was
        self.clip, self.lm, self.tokenizer, self.config = clip, lm, tokenizer, config
        self.lm_precision, self.draft_lm = "fp32", None  # a reduced-precision copy drafts, the fp32 LM checks
        self.companions = {}  # name -> bytes: the bundle's calibration files, written again with the bundle
        self.caption_words = None  # the training captions' words (WORDS_FILE): the caption check's vocabulary
        self.mapper = build_mapper(
            config.mapper, config.clip_dim, config.lm_dim, config.prefix_length, config.mapper_hidden or None,
            config.clip_length, config.mapper_layers, config.mapper_heads,
        )
        set_trainable(lm, config.lm_mode, config.lm_frozen_layers)
        self.mapper.to(clip.device)
        self.lm.to(clip.device)

    @classmethod
    def build(cls, config, device=None):
        """A fresh captioner (untrained mapper) from a config: its CLIP and LM loaded by name."""
        lm, tokenizer = load_lm(config.lm)
        return cls(CLIPW.from_pretrained(config.clip, device), lm, tokenizer, config)

    @property
    def device(self):
        return self.clip.device

    def _embed(self, token_ids):
        return self.lm.get_input_embeddings()(token_ids.to(self.device))

    def _lm_dtype(self):
        return self.lm.get_input_embeddings().weight.dtype

    def prefix_embeddings(self, clip_embeddings):
        return self.mapper(clip_embeddings.to(self.device, torch.float32))

    def _prompt_embeddings(self, clip_embeddings, prefix_text=None):
        """[visual prefix][prefix text tokens]: the same length for every item, so batches need no padding."""
        prefix = self.prefix_embeddings(clip_embeddings).to(self._lm_dtype())
        text = self.config.prefix_text if prefix_text is None else prefix_text
        if not text:
            return prefix
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        return torch.cat([prefix, self._embed(ids).expand(prefix.shape[0], -1, -1)], dim=1)

    def _teacher_forcing_inputs(self, clip_embeddings, captions):
        prompt = self._prompt_embeddings(clip_embeddings)
        eos = self.tokenizer.eos_token_id
        ids = [self.tokenizer(c, add_special_tokens=False).input_ids + [eos] for c in captions]
        width = max(map(len, ids))
        caption_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(ids), prompt.shape[1] + width), -100, dtype=torch.long)
        mask = torch.zeros_like(labels)
        mask[:, :prompt.shape[1]] = 1
        for row, tokens in enumerate(ids):  # loss only on caption tokens and EOS, never on padding
            caption_ids[row, :len(tokens)] = torch.tensor(tokens)
            labels[row, prompt.shape[1]:prompt.shape[1] + len(tokens)] = torch.tensor(tokens)
            mask[row, prompt.shape[1]:prompt.shape[1] + len(tokens)] = 1
        embeddings = torch.cat([prompt, self._embed(caption_ids)], dim=1)
        return embeddings, mask.to(self.device), labels.to(self.device)

    def forward(self, clip_embeddings, captions):
        """Teacher forcing; the output's .loss is the mean cross-entropy over caption tokens and EOS."""
        embeddings, mask, labels = self._teacher_forcing_inputs(clip_embeddings, captions)
        return self.lm(inputs_embeds=embeddings, attention_mask=mask, labels=labels)

    def caption_token_log_probs(self, clip_embeddings, captions):
        """log p of each caption token and EOS: ([B, T] log-probs, [B, T] mask of real tokens), differentiable."""
        embeddings, mask, labels = self._teacher_forcing_inputs(clip_embeddings, captions)
        logits = self.lm(inputs_embeds=embeddings, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked, targets != -100

    def caption_log_likelihood(self, clip_embeddings, captions):
        """Sum of log p over each caption's tokens and EOS: [B] (the target of caption maps)."""
        log_probs, real = self.caption_token_log_probs(clip_embeddings, captions)
        return (log_probs * real).sum(dim=1)

    @torch.no_grad()
    def generate(self, images=None, *, embeddings=None, options=None, use_cache=True, **overrides):
        """Captions for images (or ready CLIP embeddings). `options` is a GenerationOptions; keyword
        overrides (e.g. max_new_tokens=8) change single settings of it. A prefix text given in the options
        is the caption's start: the LM continues it and the caption shows it."""
        options = dataclasses.replace(options or GenerationOptions(), **overrides)
        if embeddings is None:
            embeddings = self.clip.encode_images(images)
        prompt = self._prompt_embeddings(embeddings, options.prefix_text)
        draft = self._draft(options, len(prompt))
        if draft is not None:
            if isinstance(draft, PhraseDraft):
                draft = draft.hinted(self._auto_label(embeddings))
            ids = [checked_greedy(self.lm, draft, row[None], self._greedy_rule(options), options.max_new_tokens)[0]
                   for row in prompt]
        else:
            with _seeded_global_rng(options.seed, self.device) if options.sampling else nullcontext():
                ids = self.lm.generate(inputs_embeds=prompt, attention_mask=torch.ones(prompt.shape[:2], device=self.device),
                                       use_cache=use_cache, **self._generate_settings(options)).tolist()
        if options.prefix_text:  # decoded together, so the tokenizer puts the space between them
            start = self.tokenizer(options.prefix_text, add_special_tokens=False).input_ids
            ids = [start + row for row in ids]
        captions = [_clean(text) for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        if options.clip_kind and not options.prefix_text:  # a caption start the user wrote stays as written
            captions = self._name_clip_kinds(captions, embeddings)
        return captions

    def _name_clip_kinds(self, captions, embeddings):
        """Each caption naming the kind CLIP finds likeliest (models/kinds.py), when the knowledge base has kinds."""
        knowledge = self._knowledge
        if not knowledge.kinds:
            return captions
        kinds = likeliest_kinds(self.clip, embeddings.float(), knowledge)
        return [name_kind(caption, knowledge, kind) for caption, kind in zip(captions, kinds)]

    def _draft(self, options, rows):
        """What drafts greedy captions for the fp32 LM to check (models/checked.py): the reduced-precision copy
        when there is one, else the knowledge base's sentences for a single caption (a batch is cheaper written
        together, token by token); None for sampling, beams and the repetition penalty (whose rules the check
        does not replay), which the fp32 LM writes alone."""
        if options.sampling or options.num_beams != 1 or options.repetition_penalty != 1.0:
            return None
        if self.draft_lm is not None:
            return ModelDraft(self.draft_lm)
        return self._phrase_draft if options.phrase_draft and rows == 1 else None

    def _auto_label(self, embedding):
        """Token ids (EOS last) of the caption train/label.py would write for one CLIP embedding [1, D]: the
        summary of its top-k knowledge-base prompts (k as in the training labels), naming CLIP's likeliest kind."""
        from utils.summarizer import summarize_top

        knowledge = self._knowledge
        with torch.no_grad():
            probs = self.clip.probabilities(embedding.float(), knowledge.sentences())[0]
        kind, = likeliest_kinds(self.clip, embedding.float(), knowledge)
        text = summarize_top(probs.tolist(), knowledge, self.config.label_top_k, kind=kind,
                             min_share=self.config.label_min_share)
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]

    @functools.cached_property
    def _phrase_draft(self):
        """A PhraseDraft over the sentences the knowledge base's summarizer writes; None where constrained
        decoding's grammar does not fit this tokenizer."""
        try:
            return PhraseDraft(self._grammar.example_sentences())
        except ValueError:
            return None

    def _greedy_rule(self, options):
        """What generate() would do to each greedy step's logits under these options (models/checked.py)."""
        from transformers import MinNewTokensLengthLogitsProcessor, PrefixConstrainedLogitsProcessor

        settings = self._generate_settings(options)
        processors = list(settings["logits_processor"])
        stops = settings["eos_token_id"]
        if options.min_new_tokens > 0:  # the rule sees the caption's tokens only: no prompt length to skip
            processors.append(MinNewTokensLengthLogitsProcessor(0, options.min_new_tokens, stops, self.device))
        if "prefix_allowed_tokens_fn" in settings:
            processors.append(PrefixConstrainedLogitsProcessor(settings["prefix_allowed_tokens_fn"], 1))
        return GreedyRule(processors, stops)

    def _generate_settings(self, options):
        """GenerationOptions -> keyword arguments of transformers' generate."""
        from transformers import LogitsProcessorList

        from models.repeats import WordNoRepeatNGram

        settings = dict(
            do_sample=options.sampling, num_beams=options.num_beams, min_new_tokens=options.min_new_tokens,
            max_new_tokens=options.max_new_tokens, repetition_penalty=options.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id, logits_processor=LogitsProcessorList(),
            eos_token_id=[self.tokenizer.eos_token_id, *self._line_breaks],  # a caption is one line
        )
        if options.constrained:  # the grammar forbids repeats itself; an n-gram ban could block its only way on
            settings.update(prefix_allowed_tokens_fn=self._grammar.allowed_tokens_fn(options.prefix_text or ""))
        elif options.no_repeat_ngram_size > 0:  # given as a processor: over the caption's tokens (the prompt is
            # embeddings), by words ("soft brown rot, soft Brown rot" and "dark spots, dark spot" repeat too)
            settings["logits_processor"].append(WordNoRepeatNGram(options.no_repeat_ngram_size, self._classes))
        if options.sampling:
            settings.update(temperature=options.temperature, top_k=options.top_k or None, top_p=options.top_p)
        else:
            settings.update(temperature=None, top_k=None, top_p=None)  # silence sampling-only defaults
        return settings

    @functools.cached_property
    def _token_texts(self):
        return self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])

    @functools.cached_property
    def _line_breaks(self):
        """Token ids whose text holds a line break: generation stops there (and min_new_tokens holds them off)."""
        return [i for i, text in enumerate(self._token_texts) if "\n" in text and i != self.tokenizer.eos_token_id]

    @functools.cached_property
    def _classes(self):
        """Each token's word class (case and plural aside), for the n-gram ban (models/repeats.py)."""
        from models.repeats import word_classes

        return word_classes(self._token_texts)

    @functools.cached_property
    def _knowledge(self):
        """The knowledge base the bundle was trained with."""
        from utils.knowledge import load_knowledge

        return load_knowledge(self.config.knowledge)

    @functools.cached_property
    def _grammar(self):
        """Constrained decoding's grammar over the knowledge base the bundle was trained with."""
        from models.constrained import CaptionGrammar

        return CaptionGrammar(self._knowledge, self.tokenizer)

    def caption_embeddings(self, embeddings, options=None, batch_size=32, progress=False, desc="captioning"):
        """Captions for many stored CLIP embeddings [N, D], batch by batch, with an optional progress bar."""
        from tqdm.auto import tqdm

        self.eval()
        captions = []
        for start in tqdm(range(0, len(embeddings), batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            captions += self.generate(embeddings=embeddings[start:start + batch_size], options=options)
        return captions

    @torch.no_grad()
    def mean_loss(self, embeddings, captions, batch_size=32):
        """Mean over items of each item's mean token cross-entropy (teacher forcing, no dropout)."""
        self.eval()
        total = 0.0
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            total += self(embeddings[start:start + batch_size], chunk).loss.item() * len(chunk)
        return total / len(captions) if captions else math.nan

    def set_precision(self, precision):
        """fp32 alone, or a bf16 / int8 draft that writes greedy captions for the fp32 LM to check
        (models/checked.py): the captions stay fp32's, the fp32 LM gives caption maps their gradients, and
        the draft costs its memory on top."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}': choose one of {PRECISIONS}")
        self.draft_lm = None if precision == "fp32" else draft_lm(self.lm, precision)
        self.lm_precision = precision
        return self

    def save_pretrained(self, directory, include_clip=False):
        """Bundle = config.json + mapper.safetensors (+ lm/ when the LM was trained, + clip/ when asked:
        a self-contained bundle), written in a staging directory and swapped in whole."""
        directory = Path(directory)
        config = dataclasses.asdict(self.config)
        config["clip"] = _portable_path(config["clip"], directory)
        with staged_directory(directory) as staging:
            if include_clip:
                self.clip.save_pretrained(staging / "clip")
                config["clip"] = "clip"
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            save_file({k: v.contiguous() for k, v in self.mapper.state_dict().items()}, staging / "mapper.safetensors")
            if self.config.lm_mode != "frozen":
                self.lm.save_pretrained(staging / "lm")
                self.tokenizer.save_pretrained(staging / "lm")
            for name, data in {**read_companions(directory), **self.companions}.items():
                (staging / name).write_bytes(data)  # a re-saved bundle keeps its calibration
            if self.caption_words is not None:
                (staging / WORDS_FILE).write_text(json.dumps(sorted(self.caption_words)))

    def init_mapper_from(self, bundle):
        """Start from another bundle's mapper (same CLIP and sizes), and take over its calibration files:
        the thresholds depend on CLIP and the knowledge base only (retraining on corrections)."""
        bundle = Path(bundle)
        if (bundle / "lm").is_dir():
            raise ValueError(f"{bundle} carries a fine-tuned LM; continuing from it is not supported (frozen-LM "
                             "bundles only)")
        _load_mapper(self.mapper, bundle / "mapper.safetensors", self.config)
        self.companions = read_companions(bundle)
        return self

    @classmethod
    def from_pretrained(cls, directory, device=None, lm_precision="fp32", lm=None):
        """Load a bundle; `lm` swaps in another LM of the same width for a frozen-LM bundle. A missing,
        damaged or mismatched file is named in the error."""
        directory = Path(directory)
        config_path = directory / "config.json"
        config = read_config(directory)
        clip = CLIPW.from_pretrained(clip_source(directory, config), device)
        if lm is not None and (directory / "lm").is_dir():
            raise ValueError(f"{directory} carries its own fine-tuned LM; it cannot be swapped for '{lm}'")
        config = dataclasses.replace(config, lm=lm or config.lm)
        lm_model, tokenizer = load_lm(directory / "lm" if (directory / "lm").is_dir() else config.lm)
        captioner = cls(clip, lm_model, tokenizer, config)
        _check_dims(config, captioner.config, config_path)
        _load_mapper(captioner.mapper, directory / "mapper.safetensors", captioner.config)
        captioner.eval().requires_grad_(False)
        captioner.set_precision(lm_precision)
        captioner.companions = read_companions(directory)
        captioner.caption_words = read_caption_words(directory)
        return captioner


def read_config(directory):
    """A bundle's CaptionerConfig; a missing or damaged config.json is named."""
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} is not a captioner bundle (no config.json)")
    return CaptionerConfig.from_dict(read_json_strict(config_path, "bundle config"), str(config_path))


def clip_source(directory, config):
    """Where a bundle's CLIP is: its own clip/ folder (self-contained) or the id / path its config names."""
    inside = Path(directory) / config.clip
    return inside if inside.is_dir() else config.clip


def make_self_contained(bundle, device=None):
    """Copy CLIP into a finished bundle (train/train.py does it once, at the end, rather than every epoch:
    CLIP is ~600 MB); its calibration files stay."""
    bundle = Path(bundle)
    if (bundle / "config.json").is_file() and not (bundle / "clip").is_dir():
        ClipCaptioner.from_pretrained(bundle, device=device).save_pretrained(bundle, include_clip=True)


def read_caption_words(directory):
    """The bundle's training vocabulary (a set), or None for a bundle trained before it was kept."""
    path = Path(directory) / WORDS_FILE
    if not path.is_file():
        return None
    words = read_json_strict(path, "list of the training captions' words")
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise ValueError(f"{path}: expected a JSON list of words")
    return frozenset(words)


def read_companions(directory):
    """The calibration files (models/verdict.py) a bundle directory holds, as bytes by name."""
    return {name: (Path(directory) / name).read_bytes() for name in BUNDLE_FILES if (Path(directory) / name).is_file()}


def _clean(text):
    return " ".join(text.strip().split("\n")[0].split())


def _portable_path(clip, bundle):
    """Store a CLIP directory that lives inside the bundle relative to it, so bundles can be moved."""
    path = Path(clip)
    if path.is_absolute() and path.resolve().is_relative_to(bundle.resolve()):
        return str(path.resolve().relative_to(bundle.resolve()))
    return clip


def _load_mapper(mapper, path, config):
    weights = load_safetensors(path, "mapper weights")
    expected = mapper.state_dict()
    problems = [f"missing {name}" for name in expected.keys() - weights.keys()]
    problems += [f"unexpected {name}" for name in weights.keys() - expected.keys()]
    problems += [
        f"{name}: weights {tuple(weights[name].shape)} but config gives {tuple(tensor.shape)}"
        for name, tensor in expected.items() if name in weights and weights[name].shape != tensor.shape
    ]
    if problems:
        raise ValueError(
            f"{path} does not match its config (mapper={config.mapper}, prefix_length={config.prefix_length}, "
            f"clip_dim={config.clip_dim}, lm_dim={config.lm_dim}): " + "; ".join(problems[:5])
        )
    mapper.load_state_dict(weights)


def _check_dims(saved, actual, source):
    for key in ("clip_dim", "lm_dim"):
        value = getattr(saved, key)
        if value and value != getattr(actual, key):
            raise ValueError(f"{source} says {key}={value} but the loaded models give {getattr(actual, key)}")
