"""Adapt a CLIP to your domain from class folders (no masks, no captions), before labeling with it.

    python train/finetune_clip.py --images cells/train --out runs/cells-clip --clip checkpoints/demo/clip \\
        --knowledge solar_cell --class-map cells/class_map.yaml
    python train/label.py --images cells/train --out data/cells --clip runs/cells-clip --knowledge solar_cell

Folder: one sub-folder per class (cells/train/defective/...); deeper folders are allowed (the first level
is the class, the whole path stratifies the validation split). A class map says which knowledge-base
prompts each class stands for (class: healthy | defect | [prompt ids] | {prompt id: weight}, see
utils/class_folders.py); without one, the class folders must be named after prompt ids.

Every image trains CLIP's image-to-text contrastive loss over the prompts: the cross-entropy of its scaled
similarities to all the prompts against its class's spread over them. Two phases, as the decoder's seed
trains: first only the projections, final norms, temperature and the last --phase1-blocks blocks of both
towers, at --lr1; then the last --phase2-blocks blocks (-1: the whole model) at the lower --lr2. A word-level
tokenizer (the demo CLIP's) first learns the knowledge base's new words. `--clip fresh` starts from a new
small CLIP of the sizes given below (nothing worth freezing there: use --phase1-blocks -1).

A stratified --val-fraction is held out: after every epoch its defect AUROC, accuracy (probability mass on
the defect prompts against the threshold best on that split; a class counts as defective when its map puts
half or more on defect prompts) and class accuracy are printed; the epoch with the best AUROC is kept.
Output: a plain CLIP directory that --clip accepts everywhere (label.py, train.py, app.py, predict.py), with
finetune.json (options, per-epoch history, best epoch, threshold). Every finished epoch is saved in
OUT.partial: the same command continues an interrupted run and ends with the weights of a straight one.
"""
import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from models.config import DEFAULT_CLIP, SmallClipConfig
from utils.encoding import DEFAULT_WORKERS
from utils.options import add_arguments, as_plain, from_dict, from_namespace, option, parse_with_config_file

SETTINGS_FILE = "finetune.json"  # written last: its presence marks a finished CLIP directory
LOCAL = ("device", "workers", "overwrite", "progress")  # options that do not change the weights


@dataclass
class FinetuneOptions:
    clip: str = option(DEFAULT_CLIP, "starting CLIP: hub id, directory (offline: checkpoints/demo/clip), or "
                                     "'fresh' for a new small CLIP of the sizes below")
    knowledge: str = option("fruit", "knowledge base: built-in name or YAML/JSON file")
    class_map: str = option("", "YAML/JSON: class folder -> healthy | defect | [prompt ids] | {prompt id: "
                                "weight} (default: class folders named after prompt ids)")
    phase1_epochs: int = option(5, "phase 1: epochs with only the projections and the last blocks training")
    phase1_blocks: int = option(2, "phase 1: last blocks of each tower that train (-1: all)")
    lr1: float = option(1e-3, "phase 1: AdamW peak learning rate")
    phase2_epochs: int = option(25, "phase 2: epochs with more blocks unfrozen")
    phase2_blocks: int = option(-1, "phase 2: last blocks of each tower that train (-1: the whole model)")
    lr2: float = option(3e-4, "phase 2: AdamW peak learning rate (lower)")
    text_warmup: int = option(100, "steps pushing apart prompt embeddings that start nearly equal (new words, "
                                   "a fresh text tower) before training; 0: never")
    input_size: int = option(0, "input size in pixels (0: the starting CLIP's); another size keeps the patch "
                                "size and interpolates the position embeddings, e.g. 96 from a 64-px CLIP")
    balance: float = option(0.0, "class weighting: each image's loss weighs (N / (C * n_class)) ** balance; "
                                 "0: none, 1: every class folder weighs as much in all")
    freeze_text: bool = option(False, "keep the text tower frozen in both phases (after prompt separation)")
    batch_size: int = option(64, "images per step")
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms, biases, embeddings)")
    warmup_fraction: float = option(0.1, "share of each phase's steps warming up; then cosine to zero")
    symmetries: int = option(8, "augmentation: a random symmetry of the square per image: 8 (quarter turns "
                                "and mirrors), 4 (half turns and mirrors), 1 (none: photos with an up)",
                             choices=(1, 4, 8))
    jitter: float = option(0.2, "augmentation: brightness and contrast factors from [1 - j, 1 + j]")
    views: int = option(1, "8: the saved CLIP embeds every image as the mean of its 8 square symmetries "
                           "(validation too), for images with no up or left; 1: as they are", choices=(1, 8))
    val_fraction: float = option(0.15, "share held out to choose the epoch and the threshold, stratified")
    seed: int = option(0, "seed for the split, shuffling and augmentation")
    fresh: SmallClipConfig = option(SmallClipConfig(), "sizes of a fresh CLIP (--clip fresh)")
    device: str = option("", "cpu, cuda or cuda:N (default: cuda when available)")
    workers: int = option(DEFAULT_WORKERS, "processes decoding the images once at the start")
    overwrite: bool = option(False, "replace a finished or unfinished run in --out made with other settings")
    progress: bool = option(True, "show progress bars")

    def check(self):
        rules = [(min(self.phase1_epochs, self.phase2_epochs) >= 0 < self.phase1_epochs + self.phase2_epochs,
                  "phase epochs must be >= 0, at least one epoch in all"),
                 (min(self.phase1_blocks, self.phase2_blocks) >= -1, "blocks must be >= -1 (-1: all)"),
                 (self.lr1 > 0 and self.lr2 > 0 and self.batch_size >= 1, "learning rates > 0, batch size >= 1"),
                 (self.input_size >= 0 and self.balance >= 0, "input_size and balance must be >= 0"),
                 (0 < self.val_fraction < 1 and 0 <= self.warmup_fraction < 1 and 0 <= self.jitter < 1,
                  "val_fraction in (0, 1), warmup_fraction and jitter in [0, 1)")]
        problems = [message for ok, message in rules if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def phase_of(self, epoch):
        """The phase (1 or 2) of 1-based `epoch`."""
        return 1 if epoch <= self.phase1_epochs else 2


def finetune_clip(images, out_dir, opts=None, **options) -> Path:
    """Fine-tune a CLIP on the class folders in `images`; returns `out_dir`, a CLIP directory.
    `opts` is a FinetuneOptions; keyword options (as the flags: clip=..., phase1_epochs=...) fill one instead.
    A directory already finished with the same images and settings is left as it is."""
    from tqdm.auto import tqdm

    opts = (opts or from_dict(FinetuneOptions, options, "fine-tuning options")).check()
    out = Path(out_dir)
    run = prepare(images, out, opts)
    if run is None:
        print(f"{out}: finished already with these images and settings")
        return out
    steps = -(-len(run.train) // opts.batch_size)
    total = opts.phase1_epochs + opts.phase2_epochs
    bar = tqdm(total=total * steps, initial=run.done * steps, unit="step", desc="fine-tune CLIP",
               disable=not opts.progress, dynamic_ncols=True)
    for epoch in range(run.done + 1, total + 1):
        if opts.phase_of(epoch) != run.phase:
            start_phase(run, opts.phase_of(epoch), opts, steps)
        wall, cpu = time.perf_counter(), time.process_time()
        loss = train_epoch(run, epoch, opts, bar)
        scores = validate(run)
        run.history.append(dict(epoch=epoch, phase=run.phase, loss=round(loss, 5), **scores,
                                seconds=round(time.perf_counter() - wall, 1), cpu_seconds=round(time.process_time() - cpu, 1)))
        save_epoch(run, opts)
        bar.write(epoch_line(run.history[-1]) + (" *" if run.history[-1]["best"] else ""))
    bar.close()
    finish(run, out)
    return out


def prepare(images, out, opts):
    """Folders, class map, settings, CLIP and pixels; restored from OUT.partial when an interrupted run
    with the same settings left one there. None when `out` is finished already."""
    from utils.class_folders import class_targets, scan_class_folders
    from utils.encoding import digest, file_stats
    from utils.files import read_json
    from utils.knowledge import load_knowledge

    folders = scan_class_folders(images)
    knowledge = load_knowledge(opts.knowledge)
    targets = class_targets(opts.class_map or None, knowledge, folders.names, folders.root)
    names = [path.relative_to(folders.root).as_posix() for path in folders.files]
    settings = {"options": {k: v for k, v in as_plain(opts).items() if k not in LOCAL},
                "images": str(folders.root.resolve()), "files": digest(file_stats(folders.files, names)),
                "knowledge_hash": knowledge.hash(), "classes": folders.names, "targets": targets.round(6).tolist()}
    finished = read_json(out / SETTINGS_FILE)
    if finished is not None and finished.get("settings") == settings:
        return None
    if finished is not None and not opts.overwrite:
        raise FileExistsError(f"{out} holds a CLIP fine-tuned with other images or settings: pass --overwrite "
                              "to replace it, or choose another --out")
    run = SimpleNamespace(settings=settings, knowledge=knowledge, folders=folders, partial=partial_dir(out))
    run.targets_by_class = targets
    build_run(run, opts)
    return run


def partial_dir(out):
    return out.with_name(out.name + ".partial")


def build_run(run, opts):
    """The CLIP (its tokenizer fitted to the prompts), the pixels, the split, and the state to resume."""
    import torch

    from models.clip_training import separate_prompts, text_tokens
    from utils.data import stratified_split
    from utils.training_state import load_state

    state = load_state(run.partial / "state")
    if state is not None and state.get("settings") != run.settings:
        if not opts.overwrite:
            raise FileExistsError(f"{run.partial} holds an unfinished run with other images or settings: pass "
                                  "--overwrite to start again, or choose another --out")
        shutil.rmtree(run.partial)
        state = None
    run.clip = start_clip(opts, run.knowledge)
    run.sentences = run.knowledge.sentences()
    run.tokens = text_tokens(run.clip, run.sentences)
    if state is None and opts.text_warmup:
        separate_prompts(run.clip.model, run.tokens, opts.text_warmup, max_similarity=0.9)
    load_pixels(run, opts)
    train, val = stratified_split([run.folders.strata[i] for i in run.kept], opts.val_fraction, opts.seed)
    run.train, run.val = torch.tensor(train), torch.tensor(val)
    run.history, run.done, run.phase, run.best_auroc = [], 0, None, -1.0
    if state is not None:
        resume(run, state, opts)
    print(f"fine-tuning {run.clip.name} on {len(run.train)} images ({len(run.val)} for validation) of "
          f"{len(run.folders.names)} classes; device {run.clip.device}"
          + (f"; resuming after epoch {run.done}" if run.done else ""))


def start_clip(opts, knowledge):
    """The starting CLIP on its device, in training mode, with a tokenizer that knows the prompts' words."""
    import torch

    from models.clip import CLIPW, default_device, fit_tokenizer, make_word_tokenizer, small_clip_config
    from models.clip_training import resize_input

    device = opts.device or default_device()
    if opts.clip == "fresh":
        tokenizer = make_word_tokenizer(knowledge.sentences())
        torch.manual_seed(opts.seed)
        clip = CLIPW.from_config(small_clip_config(len(tokenizer), opts.fresh), tokenizer, device=device)
    else:
        clip = CLIPW.from_pretrained(opts.clip, device=device)
    if opts.input_size:
        resize_input(clip, opts.input_size)
    torch.manual_seed(opts.seed)
    fit_tokenizer(clip, knowledge.sentences())
    clip.model.to(clip.device)
    clip.views = opts.views
    return clip


def load_pixels(run, opts):
    """Every image through the CLIP's own preprocessing, once; unreadable ones are left out with a warning."""
    import warnings

    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from utils.data import ImageFiles, collate_images, one_thread_worker

    loader = DataLoader(ImageFiles(run.folders.files, run.clip), batch_size=64, num_workers=opts.workers,
                        collate_fn=collate_images, worker_init_fn=one_thread_worker if opts.workers else None)
    chunks, run.kept, failed = [], [], []
    for indices, pixels, bad in tqdm(loader, desc="preprocess", unit="batch", disable=not opts.progress):
        chunks += [pixels] if pixels is not None else []
        run.kept += indices
        failed += [(run.folders.files[i], reason) for i, reason in bad]
    if failed:
        warnings.warn(f"{len(failed)} images could not be read and are left out, e.g. {failed[0][0]}: "
                      f"{failed[0][1]}", stacklevel=2)
    run.pixels = torch.cat(chunks) if chunks else torch.zeros(0)
    lost = sorted(set(run.folders.names) - {run.folders.classes[i] for i in run.kept})
    if lost:
        raise ValueError(f"{run.folders.root}: no readable image in class folder(s) {', '.join(lost)}")
    class_index = {name: i for i, name in enumerate(run.folders.names)}
    run.classes = torch.tensor([class_index[run.folders.classes[i]] for i in run.kept])
    run.targets = torch.tensor(run.targets_by_class, dtype=torch.float32)
    run.failed = [(str(path), reason) for path, reason in failed]


def start_phase(run, phase, opts, steps_per_epoch):
    """Freeze all but what `phase` trains; a new optimizer and schedule over that phase's steps."""
    from models.clip_training import make_optimizer, set_trainable

    epochs, blocks, lr = ((opts.phase1_epochs, opts.phase1_blocks, opts.lr1) if phase == 1
                          else (opts.phase2_epochs, opts.phase2_blocks, opts.lr2))
    count = set_trainable(run.clip.model, blocks, text=not opts.freeze_text)
    run.optimizer, run.scheduler = make_optimizer(run.clip.model, lr, opts.weight_decay, opts.warmup_fraction,
                                                  epochs * steps_per_epoch)
    run.phase = phase
    if opts.progress:
        print(f"phase {phase}: {count:,} parameters train, lr {lr}, {epochs} epochs")


def train_epoch(run, epoch, opts, bar):
    """One pass over the training split; shuffling and augmentation depend only on (seed, epoch)."""
    import torch

    from models.clip_training import (clamp_logit_scale, class_weights, contrastive_logits,
                                      jitter_brightness_contrast, random_symmetries, soft_cross_entropy)
    from utils.training_state import epoch_generator

    model, device = run.clip.model, run.clip.device
    mean = torch.tensor(run.clip.processor.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(run.clip.processor.image_std).view(1, -1, 1, 1)
    generator = epoch_generator(opts.seed, epoch)
    weights = None
    if opts.balance:  # class counts of the training split only
        weights = class_weights(run.classes[run.train], opts.balance, len(run.targets))[run.classes]
    model.train()
    total = 0.0
    for batch in run.train[torch.randperm(len(run.train), generator=generator)].split(opts.batch_size):
        images = random_symmetries(run.pixels[batch], generator, opts.symmetries)
        if opts.jitter:
            images = jitter_brightness_contrast(images, generator, opts.jitter, mean, std)
        logits = contrastive_logits(model, images.to(device), run.tokens)
        loss = soft_cross_entropy(logits, run.targets[run.classes[batch]].to(device),
                                  None if weights is None else weights[batch].to(device))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        run.optimizer.step()
        run.scheduler.step()
        clamp_logit_scale(model)
        total += loss.item() * len(batch)
        bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    return total / len(run.train)


def validate(run):
    """Validation scores through CLIPW itself (its views, its temperature), as label.py will see the CLIP."""
    import torch

    from utils.metrics import auroc, best_threshold

    run.clip.model.eval()
    run.clip._text_cache.clear()  # the prompts' embeddings moved with the weights
    probabilities = run.clip.probabilities(run.pixels[run.val], run.sentences).cpu()
    defect_mask = ~torch.tensor(run.knowledge.healthy_mask())
    defect = probabilities[:, defect_mask].sum(dim=1).numpy()
    classes = run.classes[run.val]
    truth = (run.targets[classes][:, defect_mask].sum(dim=1) >= 0.5).numpy()
    threshold = best_threshold(truth, defect)
    cross_entropy = -(run.targets[None] * probabilities[:, None].clamp(min=1e-12).log()).sum(dim=-1)
    score = auroc(truth, defect)
    improved = _rank(score) > run.best_auroc
    run.best_auroc = max(run.best_auroc, _rank(score))
    return dict(val_auroc=round(score, 5), val_accuracy=round(float(((defect >= threshold) == truth).mean()), 5),
                threshold=round(threshold, 5),
                val_class_accuracy=round(float((cross_entropy.argmin(dim=1) == classes).float().mean()), 5),
                best=bool(improved))


def _rank(score):
    """AUROC for choosing the best epoch: NaN (a validation split without both kinds) ranks below any number
    but still above "no epoch yet" (-1)."""
    return score if score == score else -0.5


def save_epoch(run, opts):
    """The best CLIP so far (when this epoch is it), then the training state: a run killed in between
    redoes the epoch, which comes out the same."""
    from utils.files import staged_directory
    from utils.training_state import save_state

    if run.history[-1]["best"]:
        with staged_directory(run.partial / "best") as staging:
            run.clip.save_pretrained(staging)
    save_state(run.partial / "state", run.clip.model.state_dict(), run.optimizer, run.scheduler,
               dict(epoch=run.history[-1]["epoch"], phase=run.phase, best_auroc=run.best_auroc,
                    history=run.history, settings=run.settings))


def resume(run, state, opts):
    """The model, optimizer, schedule and RNG as they were after the saved epoch."""
    from utils.training_state import restore_state

    steps = -(-len(run.train) // opts.batch_size)
    start_phase(run, state["phase"], opts, steps)
    restore_state(state, run.clip.model, run.optimizer, run.scheduler, names=run.clip.model.state_dict())
    run.history, run.done, run.best_auroc = state["history"], state["epoch"], state["best_auroc"]


def finish(run, out):
    """The best epoch's CLIP and finetune.json swapped into `out` in one step; OUT.partial removed."""
    from utils.files import staged_directory, write_json

    best = max(run.history, key=lambda row: (_rank(row["val_auroc"]), -row["epoch"]))
    info = {"settings": run.settings, "best_epoch": best["epoch"], "threshold": best["threshold"],
            "validation": {k: best[k] for k in ("val_auroc", "val_accuracy", "val_class_accuracy")},
            "history": run.history, "failed": run.failed,
            "seconds": round(sum(row["seconds"] for row in run.history), 1),
            "cpu_seconds": round(sum(row["cpu_seconds"] for row in run.history), 1)}
    with staged_directory(out) as staging:
        shutil.copytree(run.partial / "best", staging, dirs_exist_ok=True)
        write_json(staging / SETTINGS_FILE, info)
    shutil.rmtree(run.partial, ignore_errors=True)
    print(f"CLIP saved to {out}: best epoch {best['epoch']}, validation AUROC {best['val_auroc']:.3f}, accuracy "
          f"{best['val_accuracy']:.3f} at threshold {best['threshold']:.3f}; {info['cpu_seconds']:.0f} CPU-s")


def epoch_line(row):
    return (f"epoch {row['epoch']} (phase {row['phase']}): loss {row['loss']:.3f}, val AUROC {row['val_auroc']:.3f}, "
            f"accuracy {row['val_accuracy']:.3f} (threshold {row['threshold']:.2f}), class accuracy "
            f"{row['val_class_accuracy']:.3f}; {row['seconds']:.0f} s, {row['cpu_seconds']:.0f} CPU-s")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder with one sub-folder per class (required)")
    parser.add_argument("--out", required=True, help="the fine-tuned CLIP directory to write (required)")
    parser.add_argument("--config", help="YAML file of options (keys as the flags); flags override it")
    return add_arguments(parser, FinetuneOptions)


def main(argv=None):
    parser = build_parser()
    args = parse_with_config_file(parser, FinetuneOptions, argv)  # before any heavy import: --help answers at once
    try:
        finetune_clip(args.images, args.out, from_namespace(FinetuneOptions, args))
    except (ValueError, FileExistsError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
