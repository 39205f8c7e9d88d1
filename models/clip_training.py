"""Training a CLIP against a knowledge base's prompts: what train/finetune_clip.py and the offline demo's
pretraining (demo/pretrain_clip.py) share. The demo's mask losses stay in demo/.

The loss is CLIP's image-to-text contrastive loss over the prompts: the cross-entropy of an image's scaled
cosine similarities to every prompt against a soft target spread over its true prompts. Freezing goes by
blocks, for the two phases of fine-tuning (the projections and the last blocks first, then more at a lower
learning rate). Augmentation by the square's symmetries suits images with no up or left (cells, wafers).
"""
import math

import torch
import torch.nn.functional as F

from models.clip import pooled

MAX_LOGIT_SCALE = 100.0  # CLIP's own cap on the temperature


def text_tokens(clip, sentences):
    """The prompts tokenized once, on the CLIP's device."""
    tokens = clip.tokenizer(list(sentences), padding=True, return_tensors="pt")
    return {k: v.to(clip.device) for k, v in tokens.items() if k != "token_type_ids"}


def normalized(features):
    return F.normalize(pooled(features), dim=-1)


def text_features(model, tokens):
    return normalized(model.get_text_features(**tokens))


def contrastive_logits(model, pixel_values, tokens):
    """[B, P] scaled cosine similarities of images to the prompts, as CLIPW computes them."""
    texts = text_features(model, tokens)
    images = normalized(model.get_image_features(pixel_values=pixel_values))
    return model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * images @ texts.T


def soft_cross_entropy(logits, targets, weights=None):
    """Mean (or `weights`-weighted mean) cross-entropy of the logits' softmax against target distributions."""
    losses = -(targets * logits.log_softmax(dim=-1)).sum(dim=-1)
    return losses.mean() if weights is None else (weights * losses).sum() / weights.sum()


def clamp_logit_scale(model):
    """Keep the stored temperature where the loss caps it, so CLIPW (which reads it unclamped) agrees."""
    with torch.no_grad():
        model.logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))


def separate_prompts(model, tokens, steps=100, lr=1e-2, max_similarity=None):
    """Push the prompt embeddings apart before the images train against them: a fresh text tower (or new
    words in a grown vocabulary) gives nearly the same embedding to prompts that differ in one word, so
    early image gradients are tiny. With `max_similarity`, only when some pair is at least that similar (a
    pretrained CLIP's prompts already differ). Trains the text tower even when it is frozen otherwise;
    returns whether it ran."""
    if max_similarity is not None:
        with torch.no_grad():
            texts = text_features(model, tokens)
            if (texts @ texts.T - 2 * torch.eye(len(texts), device=texts.device)).max() < max_similarity:
                return False
    params = list(model.text_model.parameters()) + list(model.text_projection.parameters())
    trainable = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        texts = text_features(model, tokens)
        similarity = texts @ texts.T - torch.eye(len(texts), device=texts.device)
        loss = similarity.clamp(min=0).pow(2).sum() / (len(texts) * (len(texts) - 1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for p, flag in zip(params, trainable):
        p.requires_grad_(flag)
    return True


def trainable_parts(model, blocks, text=True):
    """The modules a phase trains: the projections, the final norms and the last `blocks` blocks of each
    tower (-1: the whole model, embeddings included); `text=False` leaves the text tower out."""
    vision, textual = model.vision_model, model.text_model
    parts = [model.visual_projection, vision.post_layernorm]
    if text:
        parts += [model.text_projection, textual.final_layer_norm]
    if blocks < 0:
        parts += [vision.embeddings, vision.pre_layrnorm, *vision.encoder.layers]
        parts += [textual.embeddings, *textual.encoder.layers] if text else []
    elif blocks > 0:
        parts += list(vision.encoder.layers[-blocks:])
        parts += list(textual.encoder.layers[-blocks:]) if text else []
    return parts


def set_trainable(model, blocks, text=True):
    """Freeze everything but trainable_parts(...) and the temperature; returns the trainable parameter count."""
    model.requires_grad_(False)
    for part in trainable_parts(model, blocks, text):
        part.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model, lr, weight_decay, warmup_fraction, total_steps):
    """AdamW over the trainable parameters (no decay on norms, biases, embeddings and the temperature),
    linear warm-up, then cosine to zero."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def random_symmetries(pixels, generator, count=8):
    """Each image [B, C, S, S] turned by a random symmetry of the square: 8 (quarter turns and mirror
    images), 4 (half turns and mirror images: horizontal lines stay horizontal) or 1 (none)."""
    if count == 1:
        return pixels
    step = 1 if count == 8 else 2
    turns = step * torch.randint(0, 4 // step, (len(pixels),), generator=generator)
    flips = torch.rand(len(pixels), generator=generator) < 0.5
    out = torch.empty_like(pixels)
    for k in range(0, 4, step):
        for flip in (False, True):
            rows = (turns == k) & (flips == flip)
            if rows.any():
                out[rows] = torch.rot90(pixels[rows].flip(-1) if flip else pixels[rows], k, (-2, -1))
    return out


def jitter_brightness_contrast(pixels, generator, amount, mean, std):
    """Contrast, then brightness, each scaled by a factor from [1 - amount, 1 + amount], on normalized
    pixels (`mean`, `std`: the processor's, shaped [1, C, 1, 1])."""
    def factor():
        return 1 + amount * (2 * torch.rand(len(pixels), 1, 1, 1, generator=generator) - 1)

    images = pixels * std + mean
    average = images.mean(dim=(1, 2, 3), keepdim=True)
    images = ((average + (images - average) * factor()) * factor()).clamp(0, 1)
    return (images - mean) / std


def resize_input(clip, image_size):
    """Let a CLIP see larger (or smaller) images with the same patch size: its position embeddings are
    interpolated over the new patch grid (bicubic, as ViT fine-tuning does) and its processor resizes to the
    new size, so the saved directory loads at that size everywhere. A CLIP of that size is left alone."""
    vision = clip.model.vision_model.embeddings
    if image_size == vision.image_size:
        return
    if image_size % vision.patch_size or image_size < vision.patch_size:
        raise ValueError(f"image size {image_size} must be a positive multiple of the patch size {vision.patch_size}")
    old, new = vision.image_size // vision.patch_size, image_size // vision.patch_size
    weight = vision.position_embedding.weight.data
    grid = weight[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    vision.position_embedding = torch.nn.Embedding(new * new + 1, weight.shape[1]).to(weight.device)
    vision.position_embedding.weight.data = torch.cat([weight[:1], grid.reshape(new * new, -1)])
    vision.register_buffer("position_ids", torch.arange(new * new + 1, device=weight.device)[None], persistent=False)
    vision.image_size, vision.num_patches, vision.num_positions = image_size, new * new, new * new + 1
    vision.config.image_size = clip.model.config.vision_config.image_size = image_size
    clip.processor.size = {"shortest_edge": image_size}
    clip.processor.crop_size = {"height": image_size, "width": image_size}


def class_weights(classes, power, num_classes):
    """[num_classes] loss weights (N / (C * n_class)) ** power from the training images' classes: 0 leaves
    the classes as they come, 1 weighs every class as much in all (rare defect levels as much as common)."""
    counts = torch.bincount(classes, minlength=num_classes).float()
    return (counts.sum() / ((counts > 0).sum() * counts.clamp(min=1))) ** power
