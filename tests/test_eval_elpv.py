"""bench/eval_elpv.py's skip of finished work: the digest of its inputs (no ELPV data, no model needed)."""
import importlib.util
import os
from argparse import Namespace
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("eval_elpv", Path(__file__).parents[1] / "bench" / "eval_elpv.py")
eval_elpv = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(eval_elpv)


def test_the_inputs_digest_follows_bytes_and_options_not_times(tmp_path):
    for name, text in (("cells/labels.csv", "path,split\n"), ("bundle/mapper.bin", "abc"),
                       ("clip/model.bin", "xyz"), ("labels/embeddings.bin", "123")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    args = Namespace(bundle=str(tmp_path / "bundle"), clip=str(tmp_path / "clip"), cells=str(tmp_path / "cells"),
                     labels=str(tmp_path / "labels"), explain=24, steps=8)
    first = eval_elpv.inputs_digest(args)
    os.utime(tmp_path / "bundle" / "mapper.bin", (1, 1))  # a fresh copy of the same bundle: new times only
    assert eval_elpv.inputs_digest(args) == first
    assert eval_elpv.inputs_digest(Namespace(**{**vars(args), "steps": 4})) != first
    (tmp_path / "clip" / "model.bin").write_text("xyZ")
    assert eval_elpv.inputs_digest(args) != first
