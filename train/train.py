"""Train a ClipCap captioner on labeled dataset dirs (the output of train/label.py).

    python train/train.py checkpoints/labeled --out checkpoints/run1 --epochs 10
    python train/train.py data/a data/b --config run.yaml --lm smollm2 --mapper transformer --out runs/b
    python train/train.py checkpoints/labeled --out checkpoints/run1 --epochs 10 --resume

Only the mapper trains by default (frozen LM, as in ClipCap); --lm-mode full|partial fine-tunes the LM too.
Every epoch writes OUT/metrics.csv, OUT/curves.png, the best bundle by validation loss to OUT/best, the
latest to OUT/last, and the training state (optimizer, schedule, RNG) to OUT/state, so --resume continues a
stopped run and ends with the same numbers as an uninterrupted one.

Several GPUs: `accelerate launch --multi_gpu --num_processes N train/train.py ...` (or `torchrun
--nproc_per_node N train/train.py ...`) runs data-parallel (DDP through Hugging Face Accelerate): each
process takes a slice of every batch. Validation and saving happen on the main process;
resuming a multi-process run works but is bit-exact only for single-process runs.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.clip import CLIPW  # noqa: E402
from models.lm import load_lm  # noqa: E402
from models.vlm import DEFAULT_LM, CaptionerConfig, ClipCaptioner  # noqa: E402
from utils.data import DatasetMismatchError, atomic_write, check_compatible, load_dataset, stratified_split  # noqa: E402,E501
from utils.knowledge import BUILTIN, KnowledgeError, load_knowledge  # noqa: E402
from utils.metrics import COCO_METRICS, SCORERS, caption_metrics  # noqa: E402

METRIC_COLUMNS = ("exact_match", "token_f1") + COCO_METRICS
COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss") + METRIC_COLUMNS + ("val_items", "best", "seconds")
# Options that may differ when resuming: they change what is reported or saved, not the trained weights.
RESUMABLE_CHANGES = {"epochs", "device", "val_max", "metrics", "max_new_tokens", "include_clip", "resume",
                     "overwrite", "progress", "allow_clip_mismatch"}


@dataclass
class TrainOptions:
    clip: str = ""  # empty: the CLIP named in the datasets' manifest
    lm: str = DEFAULT_LM
    knowledge: str = ""  # empty: the manifest's knowledge base
    mapper: str = "mlp"
    prefix_length: int = 10
    prefix_text: str = ""
    mapper_hidden: int = 0
    clip_length: int = 10
    mapper_layers: int = 8
    mapper_heads: int = 8
    lm_mode: str = "frozen"
    lm_frozen_layers: int = 0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    grad_clip: float = 1.0
    noise: float = 0.0
    val_fraction: float = 0.1
    val_max: int = 200
    max_new_tokens: int = 30
    metrics: tuple = SCORERS
    seed: int = 0
    device: str = "auto"
    include_clip: bool = False
    resume: bool = False
    overwrite: bool = False
    allow_clip_mismatch: bool = False
    progress: bool = True

    def check(self):
        choices = {"mapper": ("mlp", "transformer"), "lm_mode": ("frozen", "full", "partial"),
                   "schedule": ("cosine", "linear", "constant")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        unknown = set(self.metrics) - set(SCORERS)
        if unknown:
            raise ValueError(f"metrics: unknown {sorted(unknown)}; choose from {', '.join(SCORERS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.prefix_length < 1:
            raise ValueError("epochs, batch_size and prefix_length must be at least 1")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("val_fraction and warmup_ratio must lie in [0, 1)")
        if self.lr <= 0 or self.noise < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive; noise, grad_clip and weight_decay not negative")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")


def make_options(options):
    known = {field.name for field in dataclasses.fields(TrainOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown training options {unknown}; known: {', '.join(sorted(known))}")
    opts = TrainOptions(**options)
    opts.metrics = tuple(opts.metrics)
    opts.check()
    return opts


@dataclass
class TrainingData:
    embeddings: torch.Tensor  # [N, D] float32, L2-normalized
    captions: list
    classes: list  # "" where an image sat in no class folder
    paths: list  # image paths: rows of one image (imported datasets have several captions) stay together
    manifest: dict  # the first dataset's; all agree on CLIP, embed dim and knowledge base
    fingerprint: list  # [dir, rows] per dataset: resume refuses other data


def load_training_data(dataset_dirs):
    """Concatenate dataset dirs after checking that their manifests agree (one CLIP, one knowledge base)."""
    if isinstance(dataset_dirs, (str, Path)):
        dataset_dirs = [dataset_dirs]
    if not dataset_dirs:
        raise ValueError("give at least one dataset dir")
    parts = [load_dataset(d) for d in dataset_dirs]
    for directory, part in zip(dataset_dirs, parts):
        check_manifest(part.manifest, parts[0].manifest, directory, dataset_dirs[0])
    embeddings, captions, classes, paths = [], [], [], []
    for number, (directory, part) in enumerate(zip(dataset_dirs, parts)):
        table = part.table
        keep = (table["caption"].str.strip() != "").to_numpy()
        if not keep.all():
            warnings.warn(f"{directory}: {int((~keep).sum())} rows without a caption are left out", stacklevel=2)
        rows = np.flatnonzero(keep)
        embeddings.append(part.embeddings[rows])
        captions += table["caption"].str.strip().iloc[rows].tolist()
        classes += table["class"].iloc[rows].tolist()
        paths += [f"{number}:{path}" for path in table["path"].iloc[rows]]  # two datasets may share a path
    fingerprint = [[str(Path(d).resolve()), len(p.table)] for d, p in zip(dataset_dirs, parts)]
    return TrainingData(torch.cat(embeddings), captions, classes, paths, parts[0].manifest, fingerprint)


def check_manifest(manifest, reference, directory, reference_dir):
    """Embeddings from different CLIPs, or captions from different knowledge bases, cannot be mixed."""
    clip = None if same_model(manifest.get("clip"), reference.get("clip")) else reference.get("clip")
    try:
        check_compatible(manifest, clip=clip, knowledge_hash=reference.get("knowledge_hash"),
                         embed_dim=reference.get("embed_dim"), what=str(directory))
    except DatasetMismatchError as error:
        raise DatasetMismatchError(f"{error}, as {reference_dir} was: datasets labeled with different CLIPs "
                                   "or knowledge bases cannot be trained together (re-label one)") from None


def same_model(a, b):
    """The same hub id, or two spellings of one local directory."""
    if a == b:
        return True
    if a and b and Path(a).exists() and Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return False


def local_or_id(name):
    """Absolute path for a local directory (a bundle may be used from anywhere), else the hub id as given."""
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def split_indices(data, val_fraction, seed):
    """Seeded train/val split, stratified on the class column (one class "" = a plain random split); all
    rows of one image land on the same side."""
    train_idx, val_idx = stratified_split(data.classes, val_fraction, seed, groups=data.paths)
    return np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)


def knowledge_for(option, manifest):
    """The bundle's knowledge base: --knowledge or the manifest's, refused when its hash differs."""
    name = option or manifest.get("knowledge") or "fruit"
    try:
        knowledge = load_knowledge(name)
    except KnowledgeError as error:
        if option:
            raise
        warnings.warn(f"the datasets' knowledge base {name!r} cannot be loaded here ({error}); the bundle "
                      "records the name as is (pass --knowledge FILE to fix)", stacklevel=2)
        return name
    expected = manifest.get("knowledge_hash")
    if expected and knowledge.hash() != expected:
        raise ValueError(f"knowledge base {name!r} has hash {knowledge.hash()} but the datasets were labeled with "
                         f"{expected}: captions and prompts would not match")
    return name if name in BUILTIN or not Path(name).is_file() else str(Path(name).resolve())


def build_captioner(opts, data, device):
    clip_name = opts.clip or data.manifest.get("clip")
    if not clip_name:
        raise ValueError("the manifest names no CLIP; pass --clip")
    if opts.clip and not same_model(opts.clip, data.manifest.get("clip")) and not opts.allow_clip_mismatch:
        raise ValueError(f"--clip {opts.clip!r} is not the CLIP the datasets were labeled with "
                         f"({data.manifest.get('clip')!r}); pass --allow-clip-mismatch if it is the same model "
                         "under another name")
    clip = CLIPW.from_pretrained(local_or_id(clip_name), device)
    if clip.embed_dim != data.embeddings.shape[1]:
        raise ValueError(f"CLIP {clip_name!r} gives {clip.embed_dim}-d embeddings but the datasets hold "
                         f"{data.embeddings.shape[1]}-d ones")
    lm, tokenizer = load_lm(local_or_id(opts.lm))
    config = CaptionerConfig(
        clip=local_or_id(clip_name), lm=local_or_id(opts.lm), mapper=opts.mapper, prefix_length=opts.prefix_length,
        mapper_hidden=opts.mapper_hidden, clip_length=opts.clip_length, mapper_layers=opts.mapper_layers,
        mapper_heads=opts.mapper_heads, prefix_text=opts.prefix_text, knowledge=knowledge_for(opts.knowledge,
                                                                                              data.manifest),
        lm_mode=opts.lm_mode, lm_frozen_layers=opts.lm_frozen_layers,
    )
    return ClipCaptioner(clip, lm, tokenizer, config)


def make_scheduler(optimizer, opts, total_steps):
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    warmup = round(opts.warmup_ratio * total_steps)
    if opts.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = get_cosine_schedule_with_warmup if opts.schedule == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup, total_steps)


def batches(n, batch_size, processes):
    """(start, stop) of every global batch; a last batch too small to give every process an item is dropped."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size) if min(s + batch_size, n) - s >= processes]


def epoch_generator(seed, epoch):
    """Shuffling and noise depend only on (seed, epoch): a resumed run draws exactly what a straight one does."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def add_noise(embeddings, std, generator):
    """CapDec / ClipCap trick: Gaussian noise on the normalized CLIP embedding, renormalized, so the mapper
    tolerates the gap between training and test embeddings."""
    noise = torch.randn(embeddings.shape, generator=generator) * std
    return F.normalize(embeddings + noise, dim=-1)


def train_epoch(model, captioner, optimizer, scheduler, accelerator, data, train_idx, epoch, opts, bar):
    generator = epoch_generator(opts.seed, epoch)
    order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
    trainable = [p for p in captioner.parameters() if p.requires_grad]
    model.train()
    total = torch.zeros(2, dtype=torch.float64, device=captioner.device)
    for start, stop in batches(len(order), opts.batch_size, accelerator.num_processes):
        rows = order[start:stop][accelerator.process_index::accelerator.num_processes]
        embeddings = data.embeddings[rows]
        if opts.noise:
            embeddings = add_noise(embeddings, opts.noise, generator)
        loss = model(embeddings.to(captioner.device), [data.captions[i] for i in rows]).loss
        accelerator.backward(loss)
        if opts.grad_clip:
            accelerator.clip_grad_norm_(trainable, opts.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total += torch.tensor([loss.item() * len(rows), len(rows)], dtype=torch.float64, device=total.device)
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    total = accelerator.reduce(total, "sum")
    return (total[0] / total[1]).item() if total[1] else math.nan


@torch.no_grad()
def mean_loss(captioner, embeddings, captions, batch_size):
    """Mean over items of each item's mean token cross-entropy (teacher forcing, no dropout)."""
    captioner.eval()
    total = 0.0
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        total += captioner(embeddings[start:start + batch_size], chunk).loss.item() * len(chunk)
    return total / len(captions) if captions else math.nan


def references_by_image(paths, captions, rows):
    """One item per image: its first row, and every caption that its rows carry (COCO has several)."""
    first, references = {}, {}
    for row in rows:
        key = paths[row]
        first.setdefault(key, int(row))
        references.setdefault(first[key], []).append(captions[row])
    return list(first.values()), references


@torch.no_grad()
def generate_captions(captioner, embeddings, batch_size, progress=False, desc="captioning", **generation):
    captioner.eval()
    out = []
    for start in tqdm(range(0, len(embeddings), batch_size), desc=desc, unit="batch", disable=not progress,
                      leave=False):
        out += captioner.generate(embeddings=embeddings[start:start + batch_size], **generation)
    return out


def validation_scores(captioner, data, val_idx, opts):
    """Greedy captions for up to val_max validation images, scored against their reference captions."""
    items, references = references_by_image(data.paths, data.captions, val_idx)
    items = items[:opts.val_max] if opts.val_max >= 0 else items
    if not items:
        return dict.fromkeys(METRIC_COLUMNS, math.nan), 0
    predictions = generate_captions(captioner, data.embeddings[items], opts.batch_size,
                                    max_new_tokens=opts.max_new_tokens)
    scores = caption_metrics({i: references[i] for i in items}, dict(zip(items, predictions)), opts.metrics)
    return scores, len(items)


def write_metrics(history, out_dir):
    import pandas as pd
    table = pd.DataFrame(history, columns=list(COLUMNS))
    atomic_write(Path(out_dir) / "metrics.csv", lambda p: table.to_csv(p, index=False))


def plot_curves(history, out_dir):
    """Loss, caption metrics and CIDEr per epoch (CIDEr has its own panel: it is not bounded by 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("loss", ["train_loss", "val_loss"]),
              ("caption metrics", ["exact_match", "token_f1", "bleu_4", "meteor", "rouge_l"]), ("CIDEr", ["cider"])]
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            ax.plot(epochs, [row[key] for row in history], marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(Path(out_dir) / "curves.png", lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)


def trainable_state(captioner):
    return {name: p.detach().cpu().contiguous() for name, p in captioner.named_parameters() if p.requires_grad}


def save_state(out_dir, captioner, optimizer, scheduler, info):
    """OUT/state: trained weights (safetensors), optimizer + schedule + torch RNG (torch.save of plain state
    dicts, read back with weights_only=True) and the rest as JSON; replaced as a whole, never half-written."""
    target = Path(out_dir) / "state"
    staging = Path(tempfile.mkdtemp(prefix=".state.", dir=out_dir))
    save_file(trainable_state(captioner), staging / "weights.safetensors")
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}, staging / "optimizer.pt")
    numpy_state = np.random.get_state()
    info = dict(info, python_rng=_listify(random.getstate()),
                numpy_rng=[numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]])
    (staging / "state.json").write_text(json.dumps(info, indent=1))
    old = target.with_name(f".state.old{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def load_state(out_dir):
    directory = Path(out_dir) / "state"
    if not (directory / "state.json").is_file():
        return None
    info = json.loads((directory / "state.json").read_text())
    info["tensors"] = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    info["weights"] = load_file(directory / "weights.safetensors")
    return info


def restore_state(state, captioner, optimizer, scheduler):
    expected = {name for name, p in captioner.named_parameters() if p.requires_grad}
    if set(state["weights"]) != expected:
        raise ValueError("the saved training state does not match this model's trainable weights")
    parameters = dict(captioner.named_parameters())
    with torch.no_grad():
        for name, value in state["weights"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["tensors"]["optimizer"])
    scheduler.load_state_dict(state["tensors"]["scheduler"])
    torch.set_rng_state(state["tensors"]["torch_rng"])
    cuda = state["tensors"]["cuda_rng"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuplify(state["python_rng"]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def check_resumable(state, opts, data):
    saved = state["options"]
    changed = sorted(k for k, v in dataclasses.asdict(opts).items()
                     if k not in RESUMABLE_CHANGES and _listify(v) != _listify(saved.get(k)))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(opts, k)!r}" for k in changed)
        raise ValueError(f"cannot resume with different training options ({details}); use the saved ones or a "
                         "new --out")
    if state["data"] != data.fingerprint:
        raise ValueError(f"cannot resume on other data: the run was trained on {state['data']}, now given "
                         f"{data.fingerprint}")


def prepare_out_dir(out_dir, opts):
    out_dir = Path(out_dir)
    if (out_dir / "state").exists() and not (opts.resume or opts.overwrite):
        raise FileExistsError(f"{out_dir} already holds a training run: pass --resume to continue it, "
                              "--overwrite to start again, or choose another --out")
    if opts.overwrite:
        for name in ("state", "best", "last", "metrics.csv", "curves.png"):
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def make_self_contained(bundle, device):
    """Copy CLIP into a finished bundle once, at the end, rather than every epoch (CLIP is ~600 MB)."""
    if (bundle / "config.json").is_file() and not (bundle / "clip").is_dir():
        ClipCaptioner.from_pretrained(bundle, device=device).save_pretrained(bundle, include_clip=True)


def save_epoch(out_dir, captioner, optimizer, scheduler, history, best_loss, opts, data):
    """Reports, bundles, then the state last: a run killed in between redoes the epoch and overwrites."""
    write_metrics(history, out_dir)
    plot_curves(history, out_dir)
    if history[-1]["best"]:
        captioner.save_pretrained(out_dir / "best")
    captioner.save_pretrained(out_dir / "last")
    save_state(out_dir, captioner, optimizer, scheduler, dict(
        epoch=history[-1]["epoch"], best_loss=best_loss, history=history, options=dataclasses.asdict(opts),
        data=data.fingerprint))


def train(dataset_dirs, out_dir, **options):
    """Train a captioner on dataset dirs; returns OUT/best (the bundle with the lowest validation loss)."""
    from accelerate import Accelerator

    opts = make_options(options)
    data = load_training_data(dataset_dirs)
    accelerator = Accelerator(cpu=opts.device == "cpu", device_placement=False)
    main_process = accelerator.is_main_process
    single_device = accelerator.num_processes == 1 and opts.device not in ("auto", "")
    device = torch.device(opts.device) if single_device else accelerator.device
    out_dir = prepare_out_dir(out_dir, opts) if main_process else Path(out_dir)
    accelerator.wait_for_everyone()
    state = load_state(out_dir) if opts.resume else None
    if state is not None:
        check_resumable(state, opts, data)
    elif opts.resume:
        print(f"{out_dir}: nothing to resume, starting a new run")
    start_epoch = state["epoch"] if state else 0

    torch.manual_seed(opts.seed)
    captioner = build_captioner(opts, data, device)
    train_idx, val_idx = split_indices(data, opts.val_fraction, opts.seed)
    if len(val_idx) == 0:
        warnings.warn("no validation items: the best bundle is chosen by training loss", stacklevel=2)
    trainable = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = len(batches(len(train_idx), opts.batch_size, accelerator.num_processes))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_idx)} training items are too few for {accelerator.num_processes} processes")
    scheduler = make_scheduler(optimizer, opts, opts.epochs * steps_per_epoch)
    model, optimizer = accelerator.prepare(captioner, optimizer)  # wraps in DDP only under accelerate launch
    history = state["history"] if state else []
    best_loss = state["best_loss"] if state else math.inf
    if state:
        restore_state(state, captioner, optimizer, scheduler)
    if main_process:
        print(f"training {sum(p.numel() for p in trainable):,} parameters on {len(train_idx)} items "
              f"({len(val_idx)} for validation), {steps_per_epoch} steps per epoch, device {device}"
              + (f" x {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""))

    val_embeddings = data.embeddings[val_idx]
    val_captions = [data.captions[i] for i in val_idx]
    bar = tqdm(total=opts.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, unit="step",
               desc="training", disable=not (opts.progress and main_process), dynamic_ncols=True)
    for epoch in range(start_epoch, opts.epochs):
        started = time.perf_counter()
        train_loss = train_epoch(model, captioner, optimizer, scheduler, accelerator, data, train_idx, epoch,
                                 opts, bar)
        val_loss = mean_loss(captioner, val_embeddings, val_captions, opts.batch_size)
        criterion = val_loss if len(val_idx) else train_loss
        improved = criterion < best_loss
        best_loss = min(best_loss, criterion)
        if main_process:
            bar.set_description("validating")
            scores, n_items = validation_scores(captioner, data, val_idx, opts)
            bar.set_description("training")
            history.append(dict(epoch=epoch + 1, step=(epoch + 1) * steps_per_epoch, lr=scheduler.get_last_lr()[0],
                                train_loss=train_loss, val_loss=val_loss, **scores, val_items=n_items,
                                best=improved, seconds=round(time.perf_counter() - started, 2)))
            save_epoch(out_dir, captioner, optimizer, scheduler, history, best_loss, opts, data)
            bar.write(_summary(history[-1]))
        accelerator.wait_for_everyone()
    bar.close()
    if main_process and opts.include_clip:
        for name in ("best", "last"):
            make_self_contained(out_dir / name, device)
    if main_process:
        print(f"best bundle: {out_dir / 'best'} (loss {best_loss:.4f}); metrics: {out_dir / 'metrics.csv'}")
    return out_dir / "best"


def _summary(row):
    parts = [f"epoch {row['epoch']}", f"train {row['train_loss']:.4f}", f"val {row['val_loss']:.4f}"]
    parts += [f"{k} {row[k]:.3f}" for k in ("exact_match", "token_f1", "bleu_4", "meteor", "cider")
              if not math.isnan(row[k])]
    return " | ".join(parts) + (" *" if row["best"] else "")


def build_parser():
    d = TrainOptions()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help="labeled dataset dirs (train/label.py output); may also come from "
                                                "the config file's 'datasets' list")
    ap.add_argument("--out", help="run folder: best/, last/, state/, metrics.csv, curves.png (required)")
    ap.add_argument("--config", help="YAML file of options (keys as the flags, with - or _); flags override it")
    models = ap.add_argument_group("models")
    models.add_argument("--clip", default=d.clip, help="CLIP hub id or directory (default: the datasets' manifest "
                                                       "CLIP; must be the model that computed the embeddings)")
    models.add_argument("--allow-clip-mismatch", action=argparse.BooleanOptionalAction, default=d.allow_clip_mismatch,
                        help="accept a --clip named differently from the manifest's (same weights elsewhere)")
    models.add_argument("--lm", default=d.lm, help="causal LM: hub id, directory, or 'smollm2' for the offline "
                                                   "SmolLM2-135M (default: %(default)s)")
    models.add_argument("--knowledge", default=d.knowledge, help="knowledge base the bundle uses at inference "
                        "(name or YAML/JSON file; default: the manifest's; its hash must match the datasets')")
    models.add_argument("--mapper", choices=("mlp", "transformer"), default=d.mapper,
                        help="CLIP-to-prefix mapper (default: %(default)s)")
    models.add_argument("--prefix-length", type=int, default=d.prefix_length,
                        help="visual prefix vectors fed to the LM (default: %(default)s)")
    models.add_argument("--prefix-text", default=d.prefix_text,
                        help="text the LM reads after the visual prefix, e.g. 'Condition:' (default: none)")
    models.add_argument("--mapper-hidden", type=int, default=d.mapper_hidden,
                        help="MLP hidden width; 0 = lm_dim * prefix_length / 2 as in ClipCap (default: 0)")
    models.add_argument("--clip-length", type=int, default=d.clip_length,
                        help="transformer mapper: tokens the CLIP embedding becomes (default: %(default)s)")
    models.add_argument("--mapper-layers", type=int, default=d.mapper_layers,
                        help="transformer mapper layers (default: %(default)s)")
    models.add_argument("--mapper-heads", type=int, default=d.mapper_heads,
                        help="transformer mapper attention heads (default: %(default)s)")
    models.add_argument("--lm-mode", choices=("frozen", "full", "partial"), default=d.lm_mode,
                        help="frozen: train the mapper only; full: the LM too; partial: all but the embeddings "
                             "and the first --lm-frozen-layers blocks (default: %(default)s)")
    models.add_argument("--lm-frozen-layers", type=int, default=d.lm_frozen_layers,
                        help="blocks kept frozen with --lm-mode partial (default: %(default)s)")
    optim = ap.add_argument_group("optimization")
    optim.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training split "
                       "(default: %(default)s; may be raised when resuming: the schedule is re-sized)")
    optim.add_argument("--batch-size", type=int, default=d.batch_size, help="items per step (default: %(default)s)")
    optim.add_argument("--lr", type=float, default=d.lr, help="AdamW peak learning rate (default: %(default)s)")
    optim.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay "
                                                                                  "(default: %(default)s)")
    optim.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                       help="fraction of all steps spent warming the learning rate up linearly (default: %(default)s)")
    optim.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=d.schedule,
                       help="decay after warm-up, sized to the run (default: %(default)s)")
    optim.add_argument("--grad-clip", type=float, default=d.grad_clip,
                       help="max gradient norm; 0 = no clipping (default: %(default)s)")
    optim.add_argument("--noise", type=float, default=d.noise, help="std of Gaussian noise added to the normalized "
                       "CLIP embeddings while training, then renormalized (CapDec; try 0.1; default: off)")
    optim.add_argument("--seed", type=int, default=d.seed, help="seed for init, split, shuffling and noise "
                                                                "(default: %(default)s)")
    val = ap.add_argument_group("validation")
    val.add_argument("--val-fraction", type=float, default=d.val_fraction,
                     help="share held out, stratified on the class column (default: %(default)s)")
    val.add_argument("--val-max", type=int, default=d.val_max,
                     help="validation images captioned for metrics each epoch; -1 = all (default: %(default)s)")
    val.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                     help="longest validation caption in tokens (default: %(default)s)")
    val.add_argument("--metrics", default=",".join(d.metrics), help="pycocoevalcap scorers, comma-separated, from "
                     f"{','.join(SCORERS)}, or 'none' (exact match and token F1 always; default: %(default)s)")
    run = ap.add_argument_group("run")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    run.add_argument("--include-clip", action=argparse.BooleanOptionalAction, default=d.include_clip,
                     help="copy CLIP into the final bundles so they are self-contained (default: off)")
    run.add_argument("--resume", action=argparse.BooleanOptionalAction, default=d.resume,
                     help="continue the run in --out from its last finished epoch")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=d.overwrite,
                     help="delete a previous run in --out and start again")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                     help="show progress bars (default: on)")
    return ap


def parse_metrics(text):
    if isinstance(text, (list, tuple)):
        return tuple(text)
    return () if text.strip().lower() in ("", "none") else tuple(s.strip() for s in text.split(",") if s.strip())


def apply_config(ap, path):
    """YAML values become the parser's defaults, so flags given on the command line win."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        ap.error(f"--config {path}: {error}")
    if not isinstance(values, dict):
        ap.error(f"--config {path}: expected a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    known = {a.dest for a in ap._actions} - {"help", "config"}
    unknown = sorted(set(values) - known)
    if unknown:
        ap.error(f"--config {path}: unknown keys {unknown}; known: {', '.join(sorted(known))}")
    ap.set_defaults(**values)


def main(argv=None):
    ap = build_parser()
    first, _ = ap.parse_known_args(argv)
    if first.config:
        apply_config(ap, first.config)
    args = ap.parse_args(argv)
    datasets = args.datasets or []
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets:
        ap.error("give at least one dataset dir (or 'datasets' in --config)")
    if not args.out:
        ap.error("--out is required (or 'out' in --config)")
    options = {k: v for k, v in vars(args).items() if k not in ("datasets", "out", "config")}
    options["metrics"] = parse_metrics(options["metrics"])
    try:
        train(datasets, args.out, **options)
    except (ValueError, FileExistsError, OSError) as error:
        ap.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
