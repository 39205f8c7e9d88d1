"""Pretrain the offline demo's small CLIP on a synthetic fruit world (no pretrained CLIP can be had here).

    python -m demo.pretrain_clip --world checkpoints/demo-world --out checkpoints/demo-work/clip

A patch ViT (64 px, 8 px patches: an 8 x 8 grid for the explanations) and a small text encoder with a
word-level tokenizer, trained on the world's images against the knowledge base's prompts: each image's
target is spread over its true defect prompts (by defect area), a healthy item's over the healthy prompts.
The prompt embeddings are first pushed apart, then frozen (trained along, the text tower merges prompts
the images cannot tell apart yet, e.g. "a cut" and "a scar"). Because the world comes with defect masks,
auxiliary losses make a short CPU run learn fast and look at the right place: the patch tokens of the
last blocks and what each patch would add to the CLS token are classified against their masks, the last
block's CLS attention is pulled onto the defects, and the Grad-CAM map of each item's main defect is
supervised with its mask (explanation supervision, as in GAIN; without it the pointing game was 0.72).
When the knowledge base lists product kinds, each image is also classified against the kind prompts
("a photo of an apple", ...) by the world's fruit kind, so the labeler can name the kind. A share of each batch
is shown as mosaics: two items side by side cut to a square at random, their targets recounted from the defects
left in view, because the tiles of a wide photo cut items so (a CLIP that never saw a cut item reads one as a
defect). A CLIP trained on web images learns where things are from far more data; this small one is told.

The result is a plain CLIP directory: `CLIPW.from_pretrained(out)` loads it like a real one. Each
finished epoch is saved under OUT.partial, so a stopped run continues where it was.
"""
import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from demo.world import load_masks, load_truth
from models.clip import CLIPW, OPENAI_MEAN, OPENAI_STD, make_word_tokenizer, small_clip_config
from models.clip_training import (contrastive_logits, make_optimizer, normalized, separate_prompts,
                                  soft_cross_entropy, text_tokens)
from models.config import SmallClipConfig
from models.explain import gradcam_scores
from utils.files import read_json, staged_directory, write_json
from utils.images import center_crop_box
from utils.knowledge import load_knowledge
from utils.options import add_arguments, as_plain, from_dict, option
from utils.training_state import load_state, restore_state, save_state

DEFECT_PATCH_WEIGHT = 10.0  # defect patches are few next to the skin and background around them
SETTINGS_FILE = "pretrain.json"  # written last: its presence marks a finished CLIP directory


@dataclass
class PretrainOptions(SmallClipConfig):
    """The demo CLIP's sizes (SmallClipConfig's defaults) and how it is pretrained."""
    epochs: int = option(24, "passes over the world")
    batch_size: int = option(64, "images per step")
    lr: float = option(2e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms, biases, embeddings)")
    warmup_fraction: float = option(0.1, "share of the steps warming the learning rate up")
    text_warmup: int = option(100, "steps pushing the prompt embeddings apart before the text tower is frozen")
    area_weight: float = option(0.5, "multi-defect targets: 0 = uniform over true defects, 1 = by area")
    patch_weight: float = option(1.0, "auxiliary loss: every patch token against the defects its mask shows")
    patch_layers: tuple = option((-2, -3), "vision hidden states the patch loss reads (-2: the one Grad-CAM "
                                           "explains)")
    value_weight: float = option(1.0, "auxiliary loss: what each patch would add to the CLS token, vs its mask")
    attention_weight: float = option(1.0, "auxiliary loss: the last block's CLS attention onto the defects")
    gradcam_weight: float = option(1.0, "auxiliary loss: the Grad-CAM map of the primary defect onto its mask")
    # the image embedding serves both rankings: at 1.0 the auto-labels' primary defect fell from 0.952 to 0.903
    # (kinds 0.877 right, 0.59 at 0.3); 0.5 with 48 epochs gets both (0.955, kinds 0.927), and the recipe's 72 too
    kind_weight: float = option(0.3, "loss: each image against the knowledge base's kind prompts, by its fruit "
                                     "kind (no effect without kinds)")
    patch_full: float = option(0.2, "a patch this much covered by a defect is labeled all that defect")
    augment: bool = option(True, "random zoom, shift, rotation, flip and colour jitter")
    # the tiles of a wide photo cut items: without such views a tile straddling two healthy items read as defective
    mosaic: float = option(0.25, "share of images replaced by a square cut at random from two items side by side, "
                                 "its targets recounted from the defects left in view")
    seed: int = option(0, "seed for init and batches")


def demo_clip_config(vocab_size, opts=PretrainOptions(), max_text_length=32):
    """A transformers CLIPConfig of the demo's sizes."""
    return small_clip_config(vocab_size, opts, max_text_length)


def build_clip(knowledge, opts, device="cpu"):
    """A randomly initialised demo CLIP whose tokenizer knows every word of the knowledge base."""
    tokenizer = make_word_tokenizer(knowledge.sentences() + knowledge.kind_sentences())
    torch.manual_seed(opts.seed)
    return CLIPW.from_config(demo_clip_config(len(tokenizer), opts), tokenizer, device=device)


def prompt_targets(world_dir, truth, knowledge, area_weight=0.5):
    """[N, P] target distribution over the knowledge base's prompts for every item of the world."""
    ids = knowledge.ids()
    healthy = torch.tensor(knowledge.healthy_mask(), dtype=torch.float32)
    targets = torch.zeros(len(truth), len(ids))
    for row, (item, defects) in enumerate(zip(truth["id"], truth["defects"])):
        kinds = [d for d in defects.split(";") if d]
        if not kinds:
            targets[row] = healthy / healthy.sum()
            continue
        missing = [d for d in kinds if d not in ids]
        if missing:
            raise ValueError(f"the world has defects {missing} that knowledge base {knowledge.name!r} lacks")
        weights = np.ones(len(kinds))
        if len(kinds) > 1 and area_weight > 0:
            masks = load_masks(world_dir, item)
            area = np.array([masks[d].sum() for d in kinds], dtype=float)
            weights = (1 - area_weight) / len(kinds) + area_weight * area / max(area.sum(), 1.0)
        for kind, weight in zip(kinds, weights / weights.sum()):
            targets[row, ids.index(kind)] = float(weight)
    return targets


def kind_targets(truth, knowledge):
    """[N] index of each item's fruit kind among the knowledge base's kinds (None without kinds)."""
    if not knowledge.kinds:
        return None
    ids = [kind.id for kind in knowledge.kinds]
    missing = sorted(set(truth["fruit"]) - set(ids))
    if missing:
        raise ValueError(f"the world has fruit kinds {missing} that knowledge base {knowledge.name!r} lacks "
                         f"(its kinds: {', '.join(ids)})")
    return torch.tensor([ids.index(fruit) for fruit in truth["fruit"]])


def load_pixels(world_dir, paths, clip, batch_size=256, progress=True):
    """Every image of the world through the CLIP's own preprocessing, once: [N, 3, S, S] float32."""
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="preprocess", disable=not progress, unit="batch"):
        chunk = [Path(world_dir) / p for p in paths[start:start + batch_size]]
        chunks.append(clip.pixel_values(chunk))
    return torch.cat(chunks)


def load_defect_masks(world_dir, truth, knowledge, size):
    """[N, P, size, size] uint8 coverage (0-255) of each defect prompt over CLIP's center crop."""
    ids = knowledge.ids()
    out = torch.zeros(len(truth), len(ids), size, size, dtype=torch.uint8)
    for row, (item, defects) in enumerate(zip(truth["id"], truth["defects"])):
        if not defects:
            continue
        for kind, mask in load_masks(world_dir, item).items():
            left, top, right, bottom = center_crop_box(mask.shape[1], mask.shape[0])
            crop = torch.from_numpy(mask[top:bottom, left:right].astype(np.float32))
            cover = F.adaptive_avg_pool2d(crop[None, None], size)[0, 0]
            out[row, ids.index(kind)] = (cover * 255).round().to(torch.uint8)
    return out


_MEAN = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)


def random_warps(n, generator):
    """[n, 2, 3] affine maps: zoom, shift, small rotation and a horizontal flip at random."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(n, generator=generator)

    scale, angle = uniform(0.85, 1.1), uniform(-0.3, 0.3)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return torch.stack([torch.stack([cos * flip, -sin, uniform(-0.1, 0.1)], 1),
                        torch.stack([sin * flip, cos, uniform(-0.1, 0.1)], 1)], 1)


def warp(images, theta):
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def jitter_colours(pixels, generator):
    """Brightness/contrast/saturation jitter on normalized pixels. No hue change: mold colours are what
    tells the kinds apart."""
    def uniform(low, high):
        return low + (high - low) * torch.rand(pixels.shape[0], 1, 1, 1, generator=generator)

    images = pixels * _STD + _MEAN
    gray = images.mean(dim=1, keepdim=True)
    images = gray + (images - gray) * uniform(0.8, 1.2)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * uniform(0.8, 1.2)
    images = (images * uniform(0.85, 1.15)).clamp(0, 1)
    return (images - _MEAN) / _STD


def augment(pixels, masks, generator):
    """The same random zoom/shift/rotation/flip for images and their defect masks (one grid_sample each),
    then colour jitter on the images."""
    theta = random_warps(pixels.shape[0], generator)
    return jitter_colours(warp(pixels, theta), generator), warp(masks, theta)


def mosaic(pixels, covers, targets, kinds, healthy, share, area_weight, generator):
    """Replace a random `share` of the batch by two items side by side (each chosen image and the next one),
    cut to a square at a random offset: its prompt targets are recounted from the defect cover left in view,
    its kind kept only where both items are of that kind (else -100, which the kind loss ignores)."""
    n, size, cells = pixels.shape[0], pixels.shape[-1], covers.shape[-1]
    chosen = torch.nonzero(torch.rand(n, generator=generator) < share).flatten()
    if n < 2 or not len(chosen):
        return pixels, covers, targets, kinds
    partner = (chosen + 1) % n
    scale = size // cells  # covers are coarser than pixels: offsets in cover cells keep both aligned
    offsets = torch.randint(0, cells + 1, (len(chosen),), generator=generator).tolist()
    wide_pixels = torch.cat([pixels[chosen], pixels[partner]], dim=-1)
    wide_covers = torch.cat([covers[chosen], covers[partner]], dim=-1)
    pixels, covers, targets = pixels.clone(), covers.clone(), targets.clone()
    for row, (index, offset) in enumerate(zip(chosen.tolist(), offsets)):
        pixels[index] = wide_pixels[row, ..., offset * scale:offset * scale + size]
        covers[index] = wide_covers[row, ..., offset:offset + cells]
    targets[chosen] = visible_targets(covers[chosen], healthy, area_weight)
    if kinds is not None:
        kinds = kinds.clone()
        kinds[chosen] = torch.where(kinds[chosen] == kinds[partner], kinds[chosen], -100)
    return pixels, covers, targets, kinds


def visible_targets(covers, healthy, area_weight, min_cells=1.0):
    """Covers [B, P, m, m] -> [B, P] targets as prompt_targets weighs them, over the defects showing at least
    `min_cells` cells of cover; an image showing none is healthy."""
    area = covers.sum(dim=(-1, -2)) * (1 - healthy)
    shown = area >= min_cells
    count = shown.sum(dim=-1, keepdim=True).clamp(min=1)
    total = (area * shown).sum(dim=-1, keepdim=True).clamp(min=1e-6)
    weights = shown * ((1 - area_weight) / count + area_weight * area / total)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6)
    return torch.where(shown.any(dim=-1, keepdim=True), weights, healthy / healthy.sum())


def patch_targets(masks, grid, healthy, full=0.2):
    """Masks [B, P, m, m] (coverage in [0, 1] per prompt) -> [B, grid*grid, P] target per patch: a patch
    `full` covered by a defect counts as all that defect (thin cuts and small spots never fill a patch);
    what is left of it goes to the healthy prompts."""
    cover = (F.adaptive_avg_pool2d(masks, grid).flatten(2).transpose(1, 2) / full).clamp(max=1)
    cover = cover / cover.sum(dim=-1, keepdim=True).clamp(min=1.0)
    rest = (1 - cover.sum(dim=-1, keepdim=True)).clamp(min=0)
    return cover + rest * (healthy / healthy.sum())


def train_loss(model, images, covers, targets, tokens, healthy, opts, kinds=None, kind_tokens=None):
    """Image-to-prompt cross-entropy against soft targets, plus the kind and auxiliary losses (see the module
    doc). `kinds`: [B] kind indices into `kind_tokens`' prompts, or None."""
    texts = normalized(model.get_text_features(**tokens))
    read_out = []  # what Grad-CAM reads (models/explain.py): the last block's first LayerNorm output
    hook = model.vision_model.encoder.layers[-1].layer_norm1.register_forward_hook(
        lambda module, inputs, output: read_out.append(output))
    try:
        output = model.get_image_features(pixel_values=images, output_hidden_states=True,
                                          output_attentions=opts.attention_weight > 0)
    finally:
        hook.remove()
    scale = model.logit_scale.exp().clamp(max=100)

    def prompt_logits(tokens_):  # any [..., width] vision tokens, through the CLS token's norm and projection
        return scale * normalized(model.visual_projection(model.vision_model.post_layernorm(tokens_))) @ texts.T

    logits = scale * normalized(output.pooler_output) @ texts.T
    loss = soft_cross_entropy(logits, targets)
    if kinds is not None and opts.kind_weight and (kinds >= 0).any():  # a mosaic of two kinds has none (-100)
        kind_texts = normalized(model.get_text_features(**kind_tokens))
        kind_logits = scale * normalized(output.pooler_output) @ kind_texts.T
        loss = loss + opts.kind_weight * F.cross_entropy(kind_logits, kinds)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    per_patch = patch_targets(covers, grid, healthy, opts.patch_full)
    if opts.patch_weight:
        hidden = torch.cat([output.hidden_states[layer][:, 1:] for layer in opts.patch_layers], dim=1)
        loss = loss + opts.patch_weight * patch_loss(
            prompt_logits(hidden), per_patch.repeat(1, len(opts.patch_layers), 1), healthy)
    if opts.value_weight:  # what each patch adds to the CLS token when attended: what Grad-CAM reads
        last = model.vision_model.encoder.layers[-1]
        values = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(output.hidden_states[-2][:, 1:])))
        loss = loss + opts.value_weight * patch_loss(prompt_logits(values), per_patch, healthy)
    if opts.attention_weight:
        loss = loss + opts.attention_weight * attention_loss(output.attentions[-1], per_patch, healthy)
    if opts.gradcam_weight:
        loss = loss + opts.gradcam_weight * gradcam_loss(logits, read_out[0], targets, per_patch, healthy)
    return loss


def patch_loss(patch_logits, per_patch, healthy):
    """Cross-entropy per patch token, defect patches weighted up."""
    losses = -(per_patch * patch_logits.log_softmax(dim=-1)).sum(dim=-1)
    weights = 1 + (DEFECT_PATCH_WEIGHT - 1) * per_patch[..., ~healthy.bool()].sum(dim=-1)
    return (weights * losses).sum() / weights.sum()


def attention_loss(attention, per_patch, healthy):
    """Cross-entropy between the CLS token's attention over the patches (mean over heads) and the defects'
    share of each patch, on the items that have defects."""
    defect = per_patch[..., ~healthy.bool()].sum(dim=-1)  # [B, T]
    has = defect.sum(dim=-1) > 0
    if not has.any():
        return attention.sum() * 0
    share = defect[has] / defect[has].sum(dim=-1, keepdim=True)
    cls = attention[has][:, :, 0, 1:].mean(dim=1)
    return -(share * (cls + 1e-6).log()).sum(dim=-1).mean()


def gradcam_loss(logits, activations, targets, per_patch, healthy):
    """Explanation supervision (as in GAIN, Li et al. 2018): the Grad-CAM scores of each defect item's main
    defect logit, computed by models/explain.py's own formula (differentiably: double backprop), classified
    per patch against that defect's mask. Scaled by their spread, so only their sign and ranking count."""
    defect_targets = targets * (1 - healthy)
    has = defect_targets.sum(dim=-1) > 0
    if not has.any():
        return logits.sum() * 0
    primary = defect_targets.argmax(dim=-1)[has]
    score = logits[has, primary].sum()  # items are independent: one backward gives each its own gradient
    gradients = torch.autograd.grad(score, activations, create_graph=True)[0]
    cam = gradcam_scores(activations[has], gradients[has])[:, 1:]
    cam = cam / (cam.std(dim=-1, keepdim=True) + 1e-6)
    inside = (per_patch[has][torch.arange(len(primary)), :, primary] > 0).float()  # [items, patches]
    balance = (inside.numel() - inside.sum()) / inside.sum().clamp(min=1)  # defect patches are few
    return F.binary_cross_entropy_with_logits(cam, inside, pos_weight=balance)


def make_demo_optimizer(model, opts, total_steps):
    return make_optimizer(model, opts.lr, opts.weight_decay, opts.warmup_fraction, total_steps)


def accuracy(probabilities, targets):
    """Share of items whose top-1 prompt is one of their true prompts."""
    top = probabilities.argmax(dim=-1)
    return float((targets.gather(1, top[:, None])[:, 0] > 0).float().mean())


@torch.no_grad()
def predict(model, pixels, tokens, batch_size=256):
    model.eval()
    return torch.cat([contrastive_logits(model, chunk.to(model.logit_scale.device), tokens).softmax(-1).cpu()
                      for chunk in pixels.split(batch_size)])


def _partial(out):
    return out.with_name(out.name + ".partial")


def _save_progress(partial, model, optimizer, scheduler, epoch, opts):
    """The state after `epoch` finished epochs (utils.training_state: swapped in whole, never torn)."""
    save_state(partial, model.state_dict(), optimizer, scheduler, {"epoch": epoch, "options": as_plain(opts)})


def _resume(partial, model, optimizer, scheduler, opts):
    """Finished epochs found under OUT.partial for the same options (0 when none)."""
    state = load_state(partial)
    if state is None or state.get("options") != as_plain(opts):
        return 0
    restore_state(state, model, optimizer, scheduler, names=model.state_dict())
    return int(state["epoch"])


def finished(out_dir, world_dir=None, knowledge=None, **options):
    """True when out_dir holds a CLIP that pretrain_clip finished with these settings."""
    saved = read_json(Path(out_dir) / SETTINGS_FILE)
    if saved is None or world_dir is None:
        return saved is not None
    expected = _settings(world_dir, load_knowledge(knowledge or "fruit"), make_options(options))
    return all(saved.get(k) == v for k, v in expected.items())


def effective_options(**options):
    """All pretraining options (defaults filled in) as saved in OUT/pretrain.json under "options"."""
    return as_plain(make_options(options))


def _settings(world_dir, knowledge, opts):
    world = read_json(Path(world_dir) / "world.json")
    return {"options": as_plain(opts), "world": world, "knowledge": knowledge.name, "knowledge_hash": knowledge.hash()}


def make_options(options):
    return from_dict(PretrainOptions, options, "pretraining options")


def pretrain_clip(world_dir, out_dir, knowledge="fruit", *, device=None, progress=True, **options) -> Path:
    """Train the demo CLIP on a synthetic world; returns out_dir, a directory CLIPW.from_pretrained loads.

    options: the fields of PretrainOptions (image_size, patch_size, width, layers, epochs, lr, ...).
    A directory already finished with the same world, knowledge base and options is left as it is.
    """
    out, knowledge, opts = Path(out_dir), load_knowledge(knowledge), make_options(options)
    settings = _settings(world_dir, knowledge, opts)
    if finished(out, world_dir, knowledge, **options):
        return out
    start = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    clip = build_clip(knowledge, opts, device)
    world = _load_world(world_dir, clip, knowledge, opts, device, progress)
    model = clip.model.train().requires_grad_(True)  # CLIPW keeps its model frozen; pretraining unfreezes it
    for part in (model.text_model, model.text_projection):
        part.requires_grad_(False)  # the text tower only moves in separate_prompts
    _train(model, world, opts, _partial(out), progress)
    clip.model.eval().requires_grad_(False)
    train_accuracy = accuracy(predict(model, world.pixels, world.tokens), world.targets)
    if world.kinds is not None:
        kind_accuracy = (predict(model, world.pixels, world.kind_tokens).argmax(-1) == world.kinds).float().mean()
        settings.update(train_kind_accuracy=round(float(kind_accuracy), 4))
    settings.update(train_accuracy=round(train_accuracy, 4), images=len(world.targets),
                    seconds=round(time.perf_counter() - start, 1))
    with staged_directory(out) as staging:
        clip.save_pretrained(staging)
        write_json(staging / SETTINGS_FILE, settings)
    shutil.rmtree(_partial(out), ignore_errors=True)
    if progress:
        print(f"CLIP saved to {out}: train top-1 {train_accuracy:.1%}, {settings['seconds']:.0f}s")
    return out


def _load_world(world_dir, clip, knowledge, opts, device, progress):
    """Everything training reads, once: pixels, defect masks, prompt targets, prompt tokens."""
    truth = load_truth(world_dir)
    return SimpleNamespace(
        targets=prompt_targets(world_dir, truth, knowledge, opts.area_weight),
        pixels=load_pixels(world_dir, list(truth["path"]), clip, progress=progress),
        masks=load_defect_masks(world_dir, truth, knowledge, opts.image_size // 2),
        healthy=torch.tensor(knowledge.healthy_mask(), dtype=torch.float32, device=device),
        tokens=text_tokens(clip, knowledge.sentences()), kinds=kind_targets(truth, knowledge),
        kind_tokens=text_tokens(clip, knowledge.kind_sentences()) if knowledge.kinds else None,
        all_tokens=text_tokens(clip, knowledge.sentences() + knowledge.kind_sentences()), device=device)


def _train(model, world, opts, partial, progress):
    """The epochs, each saved under OUT.partial so a stopped run continues where it was."""
    steps_per_epoch = -(-len(world.targets) // opts.batch_size)
    optimizer, scheduler = make_demo_optimizer(model, opts, opts.epochs * steps_per_epoch)
    done = _resume(partial, model, optimizer, scheduler, opts)
    if done == 0 and opts.text_warmup:
        separate_prompts(model, world.all_tokens, opts.text_warmup)  # the kind prompts too: the text tower freezes next
    attention = model.vision_model.config._attn_implementation
    if opts.attention_weight or opts.gradcam_weight:
        model.vision_model.set_attn_implementation("eager")  # SDPA: no attention probabilities, no double backward
    bar = tqdm(total=opts.epochs * steps_per_epoch, initial=done * steps_per_epoch, desc="pretrain CLIP",
               disable=not progress, unit="step")
    for epoch in range(done, opts.epochs):
        generator = torch.Generator().manual_seed(opts.seed * 1000 + epoch)  # same batches after a resume
        model.train()
        for index in torch.randperm(len(world.targets), generator=generator).split(opts.batch_size):
            images, covers = world.pixels[index], world.masks[index].float() / 255
            targets, kinds = world.targets[index], None if world.kinds is None else world.kinds[index]
            if opts.mosaic:
                images, covers, targets, kinds = mosaic(images, covers, targets, kinds, world.healthy.cpu(),
                                                        opts.mosaic, opts.area_weight, generator)
            if opts.augment:
                images, covers = augment(images, covers, generator)
            loss = train_loss(model, images.to(world.device), covers.to(world.device), targets.to(world.device),
                              world.tokens, world.healthy, opts, None if kinds is None else kinds.to(world.device),
                              world.kind_tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.0f}")
        _save_progress(partial, model, optimizer, scheduler, epoch + 1, opts)
    bar.close()
    model.vision_model.set_attn_implementation(attention)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="a synthetic world (python -m demo.world)")
    parser.add_argument("--out", required=True, help="output CLIP directory")
    parser.add_argument("--knowledge", default="fruit", help="knowledge base name or file (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_arguments(parser, PretrainOptions)
    args = vars(parser.parse_args(argv))
    world, out, knowledge, quiet = (args.pop(k) for k in ("world", "out", "knowledge", "quiet"))
    pretrain_clip(world, out, knowledge, progress=not quiet, **args)


if __name__ == "__main__":
    main()
