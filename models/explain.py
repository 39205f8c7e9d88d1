"""Where CLIP looks: Grad-CAM, gradient-weighted attention relevancy, LeGrad and caption maps over its ViT,
for a prompt's logit, its log-softmax against the other prompts, or its CLIP-ES share against given rivals.

One base (`Explainer.explain`): a forward pass that records what a method needs, the gradients of k target
scores taken in ONE batched backward (vmap over the k rows of an identity), and the method's recipe that
turns (recorded tensors, their gradients) into k maps on the patch grid. A method is one small class over
`Method` (as in pytorch-grad-cam); METHODS, the app's choices, predict's flag and the demo bench derive
from the registry. Which one wins on a CLIP nobody trained toward its maps: `python -m demo.evaluate`.
"""
import math
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from models.clip import pooled, undo_square_symmetry

TARGETS = ("logit", "contrastive", "clip_es")


def tokens_to_grid(values):
    """[..., T] per-token values (CLS first) -> [..., g, g] on the patch grid, row-major like the patch conv."""
    patches = values[..., 1:]
    side = math.isqrt(patches.shape[-1])
    if side * side != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patch tokens do not form a square grid")
    return patches.reshape(*patches.shape[:-1], side, side)


def normalize_maps(maps):
    """Each map min-max scaled to [0, 1]; a flat map (no signal) becomes all zeros, never NaN."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = high - low
    scaled = torch.where(span > 1e-12, (flat - low) / span.clamp(min=1e-12), torch.zeros_like(flat))
    return scaled.reshape(maps.shape)


def gradcam_scores(activations, gradients):
    """Signed Grad-CAM score of every token (before the ReLU): activations [..., T, C], gradients
    [..., T, C] (leading dims broadcast, e.g. [T, C] with [k, T, C]) -> [..., T].

    Channel weights are the gradient averaged over PATCH tokens per channel. Averaging over channels per
    token instead gives ~0: patch tokens reach the score only through a LayerNorm, whose input-gradient
    sums to zero over channels.
    """
    weights = gradients[..., 1:, :].mean(dim=-2)
    return torch.einsum("...c,...tc->...t", weights, activations)


def gradcam_maps(activations, gradients):
    """Grad-CAM on tokens: activations [T, C], gradients [k, T, C] -> [k, g, g] in [0, 1]."""
    return normalize_maps(tokens_to_grid(torch.relu(gradcam_scores(activations, gradients))))


def relevancy_maps(attentions, gradients):
    """Chefer et al. 2021 ("Generic Attention-model Explainability"): attentions [H, T, T] per block,
    gradients [k, H, T, T] per block -> [k, g, g]. R starts as the identity (each token is its own
    relevance); per block, A_bar = E_h[(grad A * A)^+] (eq. 5: gradient-weighted attention, positive part,
    mean over heads) and R <- R + A_bar R (eq. 6: the residual keeps what was there). The map is the CLS
    row of R over the patch tokens."""
    tokens = attentions[0].shape[-1]
    relevance = torch.eye(tokens, device=attentions[0].device).expand(gradients[0].shape[0], tokens, tokens)
    for attention, gradient in zip(attentions, gradients):
        mixed = (gradient * attention).clamp(min=0).mean(dim=1)
        relevance = relevance + mixed @ relevance
    return normalize_maps(tokens_to_grid(relevance[:, 0, :]))


def legrad_maps(attention_gradients):
    """LeGrad (Bousselham et al., ICCV 2025, Sec. 3): per layer l, the gradient of the score read from that
    layer's tokens w.r.t. its attention probabilities A^l, positive part, mean over heads and query tokens;
    then the mean over layers. attention_gradients: per layer [k, H, T, T] -> [k, g, g]."""
    per_layer = [gradient.clamp(min=0).mean(dim=(1, 2)) for gradient in attention_gradients]  # [k, T] each
    return normalize_maps(tokens_to_grid(torch.stack(per_layer).mean(dim=0)))


def prompt_scores(image_features, text_features, logit_scale, target="logit", competitors=None):
    """Per-prompt target scores [P] of one image: the logit, its log-softmax over all prompts, or
    (clip_es) its probability in a softmax over itself and the `competitors` (indices, e.g. the healthy
    prompts: CLIP-ES, Lin et al. 2023, so what a prompt shares with healthy skin cancels out)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target '{target}': choose one of {TARGETS}")
    logits = logit_scale * image_features[0] @ text_features.T
    if target == "clip_es":
        return clip_es_scores(logits, range(len(logits)) if competitors is None else competitors)
    return logits.log_softmax(dim=-1) if target == "contrastive" else logits


def clip_es_scores(logits, competitors):
    """[P] logits -> [P]: prompt c's softmax probability among c and the competitors (c counted once)."""
    count = len(logits)
    rival = torch.zeros(count, dtype=torch.bool, device=logits.device)
    rival[list(competitors)] = True
    eye = torch.eye(count, dtype=torch.bool, device=logits.device)
    table = logits.expand(count, -1).masked_fill(~rival | eye, float("-inf"))  # row c: rivals other than c
    return torch.sigmoid(logits - torch.logsumexp(table, dim=1))  # exp(l_c) / (exp(l_c) + sum of rivals)


@contextmanager
def _eval_mode(module):
    """Deterministic explanations (no dropout); every submodule gets its own mode back afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


_ATTENTION_LOCK = threading.Lock()
_EAGER_USERS = {}  # id(vision model) -> (explanations using eager now, implementation to restore)


@contextmanager
def _eager_attention(vision_model):
    """SDPA returns no attention probabilities; eager does the same math and returns them. Counted per model,
    so concurrent requests on one shared model never switch it back under each other."""
    key = id(vision_model)
    with _ATTENTION_LOCK:
        users, previous = _EAGER_USERS.get(key, (0, vision_model.config._attn_implementation))
        if users == 0 and previous != "eager":
            vision_model.set_attn_implementation("eager")
        _EAGER_USERS[key] = (users + 1, previous)
    try:
        yield
    finally:
        with _ATTENTION_LOCK:
            users, previous = _EAGER_USERS.pop(key)
            if users > 1:
                _EAGER_USERS[key] = (users - 1, previous)
            elif previous != "eager":
                vision_model.set_attn_implementation(previous)


@contextmanager
def _autograd_on():
    """Explanations need gradients even when the caller runs under no_grad or inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def _hooks(modules, hook):
    """Forward hooks that see only this thread's passes: the app's requests share one model concurrently."""
    owner = threading.get_ident()

    def own_thread_only(module, inputs, output):
        return hook(module, inputs, output) if threading.get_ident() == owner else None

    handles = [module.register_forward_hook(own_thread_only) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Method:
    """One explanation method: which modules' outputs the forward pass records, and how the recorded tensors
    and their gradients ([k, ...] each) become k maps [k, g, g]."""
    name = ""
    label = ""  # how the app names it
    help = ""  # one line for --help and the app
    target = "logit"  # the prompt score explained: "logit", or "contrastive" (log-softmax over the prompts)
    eager_attention = False  # needs attention probabilities, which SDPA does not return
    whole_graph = False  # needs autograd through every block (frozen weights: the input must ask for it)

    def modules(self, explainer):
        raise NotImplementedError

    def record(self, output, recorded):
        """Keep what the method needs from one hooked module's output; may return a replacement output."""
        raise NotImplementedError

    def maps(self, recorded, gradients):
        """[k, g, g]: the mean of the views' maps, each turned back onto the image (a CLIP with 8 views embeds
        the mean of the square's symmetries, so every view counts)."""
        views = len(recorded[0])
        if views == 1:
            return self.view_maps(recorded, gradients, 0)
        return normalize_maps(torch.stack([undo_square_symmetry(self.view_maps(recorded, gradients, view), view)
                                           for view in range(views)]).mean(dim=0))

    def view_maps(self, recorded, gradients, view):
        """[k, g, g] from the recorded tensors [V, ...] and their gradients [k, V, ...] of one view."""
        raise NotImplementedError

    def gradients(self, explainer, features, recorded, feature_grads):
        """[k, ...] per recorded tensor: the gradients of the k scores, given their gradients w.r.t. the
        image embedding `features` [1, D] (feature_grads [k, 1, D]), in one backward batched over k."""
        return vector_jacobians(features, recorded, feature_grads)


class GradCAM(Method):
    """Reads the explainer's block as the next block's first LayerNorm hands it to attention."""
    name, label = "gradcam", "Grad-CAM"
    help = "gradient-weighted activations of one block (cheapest)"

    def modules(self, explainer):
        return [explainer.gradcam_module()]

    def record(self, output, recorded):
        # a fresh leaf: the backward stops here instead of running through the lower blocks
        hidden = (output[0] if isinstance(output, tuple) else output).detach().requires_grad_()
        recorded.append(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def view_maps(self, recorded, gradients, view):
        return gradcam_maps(recorded[0][view], gradients[0][:, view])


class GradCAMContrastive(GradCAM):
    name, label = "gradcam_contrastive", "Grad-CAM, contrastive"
    help = "Grad-CAM of why this description rather than the others"
    target = "contrastive"


class Relevancy(Method):
    name, label = "relevancy", "Attention relevancy"
    help = "gradient-weighted attention through every block (Chefer et al. 2021)"
    eager_attention = whole_graph = True

    def modules(self, explainer):
        return [layer.self_attn for layer in explainer.layers]

    def record(self, output, recorded):
        recorded.append(output[1])

    def view_maps(self, recorded, gradients, view):
        return relevancy_maps([a[view] for a in recorded], [g[:, view] for g in gradients])


class LeGrad(Method):
    """Records every block's attention probabilities and its output, the latter as a fresh leaf: the backward
    of sum_l s^l then reaches each A^l only through s^l (its own layer's score), in one backward pass."""
    name, label = "legrad", "LeGrad"
    help = "gradients of each layer's own score w.r.t. its attention maps, averaged (Bousselham et al. 2025)"
    eager_attention = whole_graph = True

    def modules(self, explainer):
        return [module for layer in explainer.layers for module in (layer.self_attn, layer)]

    def record(self, output, recorded):
        if isinstance(output, tuple):  # attention: (output, probabilities)
            recorded.append(output[1])
            return None
        recorded.append(output)  # a block's output, with its graph; the next block gets a fresh leaf instead,
        return output.detach().requires_grad_()  # so the scores of the layers above stop there

    def gradients(self, explainer, features, recorded, feature_grads):
        """Every layer's tokens read as an embedding (mean over tokens, as LeGrad's code reads CLIP, through
        CLIP's final LayerNorm and projection, in every view), scored with the embedding's k gradients."""
        attentions, hidden = recorded[0::2], torch.stack(recorded[1::2])  # [L, V, T, C]
        pooled_tokens = explainer.vision.post_layernorm(hidden.mean(dim=2))
        embeddings = torch.nn.functional.normalize(explainer.model.visual_projection(pooled_tokens), dim=-1)
        vectors = feature_grads[:, None].expand(-1, *embeddings.shape)
        return vector_jacobians(embeddings, attentions, vectors)

    def view_maps(self, recorded, gradients, view):
        return legrad_maps([gradient[:, view] for gradient in gradients])


METHODS = {method.name: method for method in (GradCAM(), GradCAMContrastive(), Relevancy(), LeGrad())}


def get_method(method):
    """A Method from its name (or the Method itself)."""
    if isinstance(method, Method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    return METHODS[method]


class Explainer:
    """Explanations over a CLIP's vision transformer. `clip` is a CLIPW or a transformers CLIPModel;
    `block` picks the encoder layer whose output Grad-CAM reads (default second-to-last: the last
    block's patch outputs never reach the pooled CLS token, so their gradient is zero). It reads that
    output as the next block's first LayerNorm hands it to attention (pytorch-grad-cam's `norm1` target
    for ViTs): on the raw residual stream a token's own contribution is mostly cancelled by that
    LayerNorm, which ignores the token's scale."""

    def __init__(self, clip, block=-2):
        self.clip = clip
        self.model = getattr(clip, "model", clip)
        self.vision = self.model.vision_model
        self.layers = self.vision.encoder.layers
        if not -len(self.layers) <= block < len(self.layers):
            raise ValueError(f"block {block} out of range for {len(self.layers)} layers")
        self.block = block

    @property
    def logit_scale(self):
        return self.model.logit_scale.exp()

    def image_features(self, pixel_values):
        """Normalized [B, D] with autograd, exactly as the captioner sees them when `clip` is a CLIPW."""
        if hasattr(self.clip, "image_features"):
            return self.clip.image_features(pixel_values)
        return torch.nn.functional.normalize(pooled(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)

    def text_features(self, texts):
        """Prompts (needs a CLIPW) or ready [P, D] features -> normalized [P, D] on the model's device."""
        if torch.is_tensor(texts):
            return torch.nn.functional.normalize(texts.to(self.model.logit_scale.device, torch.float32), dim=-1)
        return self.clip.encode_texts(list(texts)).clone()  # the cache may hold inference-mode tensors

    def gradcam_module(self):
        following = self.block % len(self.layers) + 1
        return self.layers[following].layer_norm1 if following < len(self.layers) else self.layers[self.block]

    @_autograd_on()
    def prompt_maps(self, pixel_values, texts, method="gradcam", indices=None, target=None, separate_passes=False,
                    competitors=None):
        """[k, g, g] maps of one image, one per prompt in `indices` (default: all prompts). `target` overrides
        the method's own (TARGETS); contrastive targets compete against ALL given prompts, not only the
        explained ones; clip_es ones against `competitors` (prompt indices; default all)."""
        method = get_method(method)
        text_features = self.text_features(texts)
        picked = torch.arange(len(text_features)) if indices is None else torch.as_tensor(indices).long()
        kind = target or method.target

        def scores(features):
            return prompt_scores(features, text_features, self.logit_scale, kind, competitors)[picked]
        return self.explain(pixel_values, scores, method, separate_passes)

    @_autograd_on()
    def caption_map(self, captioner, pixel_values, caption, per_word=False, method="gradcam"):
        """Map of the caption's log-likelihood, back through LM and mapper into CLIP: [1, g, g];
        with per_word, one map per whitespace word of the caption: [n_words, g, g]."""
        if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in getattr(captioner, "lm", torch.nn.Module()).modules()):
            raise ValueError("caption maps need gradients through the LM and int8 layers have none: "
                             "load the captioner with set_precision, which keeps the fp32 LM")

        def target(features):
            if per_word:
                return word_log_probs(captioner, features, caption)
            return captioner.caption_log_likelihood(features, [caption])

        with _eval_mode(captioner):
            return self.explain(pixel_values, target, method)

    @_autograd_on()
    def explain(self, pixel_values, target, method="gradcam", separate_passes=False):
        """The base of every method: `target` maps the image embedding [1, D] to k scores; returns [k, g, g].

        ONE forward pass; the gradients of the k scores w.r.t. the embedding (cheap), then one backward
        batched over k from the embedding into the ViT. By the chain rule this equals k full backwards.
        `separate_passes` runs k forward+backward passes instead (for benchmarks and tests only).
        """
        method = get_method(method)
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        if pixel_values.shape[0] != 1:
            raise ValueError("explain one image at a time: pixel_values must be [1, 3, S, S]")
        pixel_values = pixel_values.detach().clone().to(self.model.logit_scale.device)
        with _eval_mode(self.model):
            if separate_passes:
                return self._explain_separately(pixel_values, target, method)
            return self._maps(*self._record(pixel_values, method), target, method)

    @_autograd_on()
    def explain_each(self, pixel_values, targets_for, method="gradcam"):
        """Several images [T, 3, S, S] whose targets depend on all of their embeddings (the tiles view takes the
        top-k of all tiles together): one recorded forward per image, then `targets_for` (the T embeddings
        [1, D]) gives one target per image, then one batched backward per image. Returns T maps [k, g, g]."""
        method = get_method(method)
        pixel_values = pixel_values.detach().clone().to(self.model.logit_scale.device)
        with _eval_mode(self.model):
            passes = [self._record(pixel_values[i:i + 1], method) for i in range(len(pixel_values))]
            targets = targets_for([features.detach() for features, _ in passes])
            return [self._maps(features, recorded, target, method)
                    for (features, recorded), target in zip(passes, targets)]

    def _maps(self, features, recorded, target, method):
        """The k scores' gradients w.r.t. the embedding, then one backward batched over k into the ViT."""
        leaf = features.detach().requires_grad_()
        feature_grads = vector_jacobians(target(leaf), [leaf])[0]
        return method.maps(recorded, method.gradients(self, features, recorded, feature_grads)).detach()

    def _explain_separately(self, pixel_values, target, method):
        maps, count, index = [], 1, 0
        while index < count:
            features, recorded = self._record(pixel_values, method)
            scores = target(features)
            count = len(scores)
            vector = torch.autograd.grad(scores[index], features, retain_graph=True)[0]
            maps.append(method.maps(recorded, method.gradients(self, features, recorded, vector[None])))
            index += 1
        return torch.cat(maps).detach()

    def _record(self, pixel_values, method):
        """One forward pass recording what `method` needs: (embedding [1, D], recorded tensors)."""
        recorded = []

        def keep(module, inputs, output):
            return method.record(output, recorded)

        attention = _eager_attention(self.vision) if method.eager_attention else nullcontext()
        with attention, _hooks(method.modules(self), keep):
            features = self.image_features(pixel_values.requires_grad_(method.whole_graph))
        return features, recorded


def _zeros_if_none(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def vector_jacobians(outputs, inputs, vectors=None):
    """[k, *input.shape] per input: the k vector-Jacobian products (rows of the identity when `vectors` is
    None, i.e. the gradient of each of the k outputs) in one backward vmapped over k."""
    if vectors is None:
        vectors = torch.eye(outputs.shape[0], dtype=outputs.dtype, device=outputs.device)
    grads = torch.autograd.grad(outputs, inputs, grad_outputs=vectors, is_grads_batched=True, allow_unused=True)
    return [_zeros_if_none(g, x.expand(len(vectors), *x.shape)) for g, x in zip(grads, inputs)]


def word_spans(caption):
    """(start, end) character spans of the caption's whitespace-separated words."""
    spans, position = [], 0
    for word in caption.split():
        start = caption.index(word, position)
        spans.append((start, start + len(word)))
        position = start + len(word)
    return spans


def token_log_probs(captioner, features, caption):
    """log p of each caption token, then of EOS, given the image embedding [1, D]: [n_tokens + 1]."""
    log_probs, real = captioner.caption_token_log_probs(features, [caption])
    return log_probs[0][real[0]]


def word_log_probs(captioner, features, caption):
    """Per-word sums of the caption's token log-probabilities (EOS left out): [n_words]."""
    tokens = token_log_probs(captioner, features, caption)
    offsets = captioner.tokenizer(caption, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    spans = word_spans(caption)
    owners = torch.tensor([_word_of(span, spans) for span in offsets], device=tokens.device)
    return torch.stack([tokens[:len(owners)][owners == word].sum() for word in range(len(spans))])


def _word_of(token_span, spans):
    """The word a token belongs to: most character overlap; a token of only spaces goes to the next word."""
    overlaps = [min(token_span[1], end) - max(token_span[0], start) for start, end in spans]
    best = max(range(len(spans)), key=lambda i: overlaps[i])
    if overlaps[best] > 0:
        return best
    return next((i for i, (start, _) in enumerate(spans) if start >= token_span[0]), len(spans) - 1)


@dataclass
class Explanation:
    """Top-k prompts of one image, best first, with one map each on the patch grid of CLIP's center crop."""
    prompts: list
    probs: list  # softmax over ALL prompts
    maps: np.ndarray  # [k, g, g] float32 in [0, 1]
    crop_box: tuple  # (left, top, right, bottom) of the original image that the grid covers
    image_size: tuple  # (width, height) of the original image
    method: str
    embedding: torch.Tensor = None  # [1, D] normalized image embedding from the same pass (for captioning)

    @property
    def combined(self):
        """One map: the k maps weighted by their probabilities, rescaled to [0, 1]."""
        weights = np.asarray(self.probs, dtype=np.float32)[:, None, None]
        combined = (weights * self.maps).sum(axis=0)
        return combined / combined.max() if combined.max() > 0 else combined
