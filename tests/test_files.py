"""Files the project writes: readable by others (the umask's permissions), and named when damaged."""
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import app as app_module
from conftest import make_tiny_captioner
from models.vlm import ClipCaptioner
from train import predict as predict_script
from utils import files
from utils.data import save_dataset
from utils.files import DamagedFileError, atomic_write, load_safetensors, staged_directory
from utils.training_state import load_state


def modes(root):
    return {path.relative_to(root).as_posix(): stat.S_IMODE(path.stat().st_mode)
            for path in [root, *root.rglob("*")]}


@pytest.fixture
def bundle(tmp_path):
    """A self-contained tiny bundle whose LM lives in a directory next to it."""
    captioner = make_tiny_captioner("opt")
    captioner.lm.save_pretrained(tmp_path / "lm")
    captioner.tokenizer.save_pretrained(tmp_path / "lm")
    captioner.config.lm = str(tmp_path / "lm")
    captioner.save_pretrained(tmp_path / "bundle", include_clip=True)
    return tmp_path / "bundle"


def test_bundles_and_datasets_get_the_usual_permissions(bundle, tmp_path):
    old = os.umask(0o022)
    try:
        save_dataset(tmp_path / "data", torch.zeros(2, 4), pd.DataFrame(
            {"id": ["a", "b"], "path": ["a.jpg", "b.jpg"], "class": "", "caption": ["x", "y"]}), {"clip": "c"})
        for root in (bundle, tmp_path / "data"):
            seen = modes(root)
            assert any(name.endswith(".safetensors") for name in seen)  # safetensors alone would write 0600
            for name, mode in seen.items():
                expected = 0o755 if (root / name).is_dir() else 0o644
                assert mode == expected, f"{name}: {oct(mode)}"
    finally:
        os.umask(old)


def test_a_stricter_umask_is_respected(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_UMASK", 0o077)  # read once at import: a process that sets it first gets it
    with staged_directory(tmp_path / "private") as staging:
        (staging / "f.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "private" / "f.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


@pytest.mark.parametrize("cut", [0.6, 20])
def test_a_damaged_mapper_is_named(bundle, cut):
    weights = bundle / "mapper.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:int(len(data) * cut)] if cut < 1 else data[:cut])
    with pytest.raises(DamagedFileError, match="mapper.safetensors: damaged mapper weights"):
        ClipCaptioner.from_pretrained(bundle, device="cpu")
    with pytest.raises(SystemExit, match="cannot load the models: .*mapper.safetensors: damaged"):
        app_module.main(["--checkpoint", str(bundle), "--device", "cpu"])


def test_damaged_config_and_clip_are_named(bundle, tmp_path, capsys):
    (bundle / "clip" / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DamagedFileError, match="could not load CLIP .*clip'?: damaged"):
        ClipCaptioner.from_pretrained(bundle, device="cpu")
    (bundle / "config.json").write_text('{"clip": "clip", ')
    Image.new("RGB", (32, 32), "red").save(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as stopped:
        predict_script.main([str(tmp_path / "photo.png"), "--bundle", str(bundle), "--out", str(tmp_path / "out"),
                             "--no-progress"])
    assert stopped.value.code == 2
    assert "config.json: damaged bundle config" in capsys.readouterr().err


def test_a_damaged_training_state_is_named(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text("{}")
    (tmp_path / "state" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DamagedFileError, match="optimizer.pt: damaged training state"):
        load_state(tmp_path / "state")


def test_load_safetensors_names_missing_and_damaged_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing weights"):
        load_safetensors(tmp_path / "nothing.safetensors")
    atomic_write(tmp_path / "bad.safetensors", lambda path: Path(path).write_bytes(b"12345678junk"))
    with pytest.raises(DamagedFileError, match="bad.safetensors: damaged weights"):
        load_safetensors(tmp_path / "bad.safetensors")
