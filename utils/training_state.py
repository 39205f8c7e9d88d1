"""A training run's state between epochs, so a stopped run resumes and ends with the numbers of a straight one.

A state directory holds weights.safetensors (the weights being trained), optimizer.pt (optimizer, schedule
and torch RNG: plain state dicts, read back with weights_only=True, never unpickled) and state.json
(epoch, options, history, Python and NumPy RNG). It is written in a staging directory and swapped in whole.
"""
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from utils.files import DamagedFileError, load_safetensors, read_json, staged_directory

STATE_FILE = "state.json"


def save_state(directory, weights, optimizer, scheduler, info):
    """weights: {name: tensor}; info: JSON-able (epoch, options, ...); RNG states are added."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    numpy_state = np.random.get_state()
    info = dict(info, python_rng=_listify(random.getstate()),
                numpy_rng=[numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]])
    with staged_directory(directory) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, staging / "weights.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}, staging / "optimizer.pt")
        (staging / STATE_FILE).write_text(json.dumps(info, indent=1))


def load_state(directory):
    """The saved state (info keys plus "weights" and "tensors"), or None when there is none."""
    directory = Path(directory)
    info = read_json(directory / STATE_FILE)
    if info is None:
        return None
    try:
        info["tensors"] = torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise DamagedFileError(f"{directory / 'optimizer.pt'}: damaged training state ({error}); "
                               "start the run again without resuming") from None
    info["weights"] = load_safetensors(directory / "weights.safetensors", "training state")
    return info


def restore_state(state, module, optimizer, scheduler, names=None):
    """Weights into `module` (by name; `names`, when given, must be exactly the saved ones), then the
    optimizer, schedule and every RNG as they were."""
    saved = set(state["weights"])
    if names is not None and saved != set(names):
        raise ValueError("the saved training state does not match this model's trainable weights")
    unknown = saved - set(module.state_dict())
    if unknown:
        raise ValueError(f"the saved training state has weights this model lacks: {sorted(unknown)[:5]}")
    module.load_state_dict(state["weights"], strict=False)
    optimizer.load_state_dict(state["tensors"]["optimizer"])
    scheduler.load_state_dict(state["tensors"]["scheduler"])
    torch.set_rng_state(state["tensors"]["torch_rng"])
    cuda = state["tensors"]["cuda_rng"]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuplify(state["python_rng"]))
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def prepare_run_dir(out_dir, resume, overwrite, outputs):
    """The run folder, ready: a previous run there is refused unless resumed, or its `outputs` deleted."""
    out_dir = Path(out_dir)
    if (out_dir / "state").exists() and not (resume or overwrite):
        raise FileExistsError(f"{out_dir} already holds a training run: pass --resume to continue it, "
                              "--overwrite to start again, or choose another --out")
    if overwrite:
        for name in outputs:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def changed_options(saved, now, may_change=()):
    """"name: old -> new" for every option (plain dicts) that differs, except those in `may_change`; "" if none."""
    changed = sorted(k for k, v in now.items() if k not in may_change and v != saved.get(k))
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)


def make_scheduler(optimizer, kind, warmup_ratio, total_steps):
    """transformers' linear warm-up then cosine, linear or constant, sized to the run."""
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    warmup = round(warmup_ratio * total_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    make = {"cosine": get_cosine_schedule_with_warmup, "linear": get_linear_schedule_with_warmup}[kind]
    return make(optimizer, warmup, total_steps)


def epoch_generator(seed, epoch):
    """Shuffling and noise depend only on (seed, epoch): a resumed run draws exactly what a straight one does."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))


def _listify(value):
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value):
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value
