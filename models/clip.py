"""CLIPW: a frozen CLIP (transformers CLIPModel) with its own preprocessing, cached prompts and top-k.

A CLIP directory may carry `inference.json` beside the transformers files: {"views": 8} makes CLIPW embed
every image as the mean of its 8 square symmetries (flips and quarter turns), for domains whose images have
no up or left, such as solar cells. Labeling, training, the app and explanations all go through
`image_features`, so they see the same embedding.
"""
import json
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPImageProcessorPil, PreTrainedTokenizerFast

from models.config import SmallClipConfig
from utils.files import loading, read_json_strict, write_json
from utils.images import load_image

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
INFERENCE_FILE = "inference.json"
VIEWS = (1, 8)  # 1: the image as it is; 8: the mean over the square's symmetries


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


class CLIPW(nn.Module):
    """Frozen CLIP in eval mode; images and prompts in, normalized embeddings and probabilities out."""

    def __init__(self, model, tokenizer, processor, device=None, name="", views=1):
        super().__init__()
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {views!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.processor = processor
        self.name = name
        self.views = views
        self._text_cache = OrderedDict()
        self.to(device or default_device())

    @classmethod
    def from_pretrained(cls, name_or_path=DEFAULT_CLIP, device=None):
        with loading("CLIP", name_or_path, "give a local directory, or run once online so the hub copy is cached "):
            model = CLIPModel.from_pretrained(name_or_path, dtype=torch.float32)  # a compact copy may be fp16
            tokenizer = _load_tokenizer(name_or_path)
            processor = CLIPImageProcessorPil.from_pretrained(name_or_path)
            views = _inference_settings(name_or_path).get("views", 1)
        return cls(model, tokenizer, processor, device, str(name_or_path), views)

    @classmethod
    def from_config(cls, config, tokenizer, device=None):
        """Randomly initialised CLIP of the given sizes (tests, benches, and the demo's pretraining)."""
        size = config.vision_config.image_size
        processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
        )
        return cls(CLIPModel(config), tokenizer, processor, device, "random-init")

    def save_pretrained(self, directory):
        for part in (self.model, self.tokenizer, self.processor):
            part.save_pretrained(directory)
        if self.views != 1:
            write_json(Path(directory) / INFERENCE_FILE, {"views": self.views})

    def train(self, mode=True):
        return super().train(False)  # frozen: stays in eval mode inside a captioner being trained

    @property
    def device(self):
        return self.model.logit_scale.device

    @property
    def image_size(self):
        return self.model.config.vision_config.image_size

    @property
    def patch_grid(self):
        return self.image_size // self.model.config.vision_config.patch_size

    @property
    def embed_dim(self):
        return self.model.config.projection_dim

    @property
    def logit_scale(self):
        return self.model.logit_scale.exp().item()

    def pixel_values(self, images):
        """Images (one or a list; paths, bytes, PIL, arrays) -> CPU tensor [B, 3, S, S]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        images = [load_image(image) for image in images]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def preprocess(self, images):
        return self.pixel_values(images).to(self.device)

    def image_features(self, pixel_values):
        """Normalized image embeddings with autograd on (for explanations). With 8 views, the mean of the
        views' normalized embeddings, the views batched in square_symmetries' order (an explanation turns
        each view's map back with undo_square_symmetry)."""
        pixel_values = pixel_values.to(self.device)
        if self.views == 1:
            return F.normalize(pooled(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)
        views = torch.cat(square_symmetries(pixel_values))
        features = F.normalize(pooled(self.model.get_image_features(pixel_values=views)), dim=-1)
        return F.normalize(features.view(self.views, len(pixel_values), -1).mean(dim=0), dim=-1)

    @torch.no_grad()
    def layer_features(self, pixel_values, layer=None):
        """Mean patch token after vision block `layer` (default: the middle one) [B, width]: the image statistics
        the contrastive embedding discards (models/plausibility.py compares them with the training photos')."""
        layer = self.model.config.vision_config.num_hidden_layers // 2 if layer is None else layer
        out = self.model.vision_model(pixel_values=pixel_values.to(self.device), output_hidden_states=True)
        return out.hidden_states[layer][:, 1:].mean(dim=1).float()

    @torch.no_grad()
    def encode_images(self, images, batch_size=32):
        pixel_values = images if torch.is_tensor(images) else self.pixel_values(images)
        chunks = [self.image_features(chunk) for chunk in pixel_values.split(batch_size)]
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_texts(self, prompts):
        key = tuple(prompts)
        if key not in self._text_cache:
            tokens = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
            tokens = {name: value.to(self.device) for name, value in tokens.items() if name != "token_type_ids"}
            features = self.model.get_text_features(**tokens)
            self._text_cache[key] = F.normalize(pooled(features), dim=-1)
            if len(self._text_cache) > 16:  # a handful of knowledge bases at most
                self._text_cache.popitem(last=False)
        self._text_cache.move_to_end(key)
        return self._text_cache[key]

    def logits(self, image_features, prompts):
        return self.logit_scale * image_features @ self.encode_texts(prompts).T

    @torch.no_grad()
    def probabilities(self, images, prompts):
        features = images if torch.is_tensor(images) and images.ndim == 2 else self.encode_images(images)
        return self.logits(features, prompts).softmax(dim=-1)

    def top_k(self, image, prompts, k=5):
        probs = self.probabilities(image, prompts)[0]
        values, indices = probs.topk(min(k, len(prompts)))
        return [(prompts[i], p) for i, p in zip(indices.tolist(), values.tolist())]


def pooled(features):
    """get_image_features / get_text_features output as a tensor: transformers 5 may return a model output
    whose pooler_output is the projected embedding."""
    return features if torch.is_tensor(features) else features.pooler_output


def square_symmetries(pixels):
    """The 8 symmetries of the square for a batch [B, C, S, S]: quarter turns of the image and of its mirror
    image, the identity first."""
    return [torch.rot90(pixels.flip(-1) if flip else pixels, turns, (-2, -1)) for flip in (False, True)
            for turns in range(4)]


def undo_square_symmetry(grids, index):
    """Maps [..., g, g] read in view `index` of square_symmetries back onto the image as it is."""
    flip, turns = divmod(index, 4)
    grids = torch.rot90(grids, -turns, (-2, -1))
    return grids.flip(-1) if flip else grids


def _inference_settings(name_or_path):
    """CLIPW's own settings stored with a CLIP directory ({} for a hub id or a directory without them)."""
    path = Path(name_or_path) / INFERENCE_FILE
    if not path.is_file():
        return {}
    settings = read_json_strict(path, "CLIP inference settings")
    if not isinstance(settings, dict) or settings.get("views", 1) not in VIEWS:
        raise ValueError(f"{path}: expected {{\"views\": 1 or 8}}, got {settings!r}")
    return settings


def _load_tokenizer(name_or_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(name_or_path)


def make_word_tokenizer(texts, model_max_length=32):
    """A word-level tokenizer built offline from a corpus: for tiny test models and the demo CLIP."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<pad>", "<unk>", "<s>", "</s>"]  # eos id 3: CLIP pools at the first eos token
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = {token: index for index, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length,
        pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
    )


def fit_tokenizer(clip, sentences):
    """Make the CLIP's tokenizer tell a new domain's prompts apart; returns the words it had to add.

    A word-level tokenizer (the demo CLIP's) maps unknown words to <unk>, so "a crack" and "a dark region"
    could become the same tokens: the missing words are appended to its vocabulary and the token embedding
    grows by as many rows, started near the mean of the old ones (old ids and rows stay as they were). A
    subword tokenizer (real CLIPs) knows every word and is left alone."""
    from tokenizers import Tokenizer

    tokenizer = clip.tokenizer
    unk = tokenizer.unk_token_id
    if unk is None or all(unk not in ids for ids in tokenizer(list(sentences))["input_ids"]):
        return []
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "WordLevel":
        raise ValueError("the CLIP's tokenizer maps some prompt words to <unk> and is not word-level: "
                         "reword the knowledge base")
    vocab = state["model"]["vocab"]
    new = sorted(word for word in make_word_tokenizer(sentences).get_vocab() if word not in vocab)
    for word in new:
        vocab[word] = len(vocab)
    clip.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)), model_max_length=tokenizer.model_max_length,
        pad_token=tokenizer.pad_token, unk_token=tokenizer.unk_token, bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token)
    embeddings = clip.model.text_model.embeddings
    old = embeddings.token_embedding.weight.data
    grown = nn.Embedding(len(vocab), old.shape[1]).to(old.device)
    grown.weight.data[:len(old)] = old
    grown.weight.data[len(old):] = old.mean(dim=0) + 0.02 * torch.randn(len(new), old.shape[1]).to(old.device)
    embeddings.token_embedding = grown
    clip.model.config.text_config.vocab_size = len(vocab)
    clip._text_cache.clear()
    return new


def small_clip_config(vocab_size, sizes=None, max_text_length=32):
    """A transformers CLIPConfig for a CLIP trained from scratch (models.config.SmallClipConfig sizes; the
    offline demo's by default); the text ids follow make_word_tokenizer."""
    sizes = sizes or SmallClipConfig()
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, max_position_embeddings=max_text_length, hidden_size=sizes.text_width,
            intermediate_size=4 * sizes.text_width, num_hidden_layers=sizes.text_layers,
            num_attention_heads=max(1, sizes.text_width // 32), pad_token_id=0, bos_token_id=2, eos_token_id=3,
        ),
        vision_config=dict(
            image_size=sizes.image_size, patch_size=sizes.patch_size, hidden_size=sizes.width,
            intermediate_size=4 * sizes.width, num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads,
        ),
        projection_dim=sizes.embed_dim,
    )


def tiny_clip_config(image_size=32, patch_size=8, vocab_size=64, dim=32, layers=2, max_text_length=32):
    """A CLIP small enough to build and run in milliseconds (tests)."""
    shared = dict(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers, num_attention_heads=2)
    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, max_position_embeddings=max_text_length,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3, **shared),
        vision_config=dict(image_size=image_size, patch_size=patch_size, **shared),
        projection_dim=dim,
    )
