"""Every entry point answers --help at once: no model library is imported before the arguments are parsed."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [["app.py"], ["train/label.py"], ["train/importers.py"], ["train/train.py"], ["train/evaluate.py"],
                ["train/predict.py"], ["train/calibrate.py"], ["train/corrections.py"], ["train/finetune_clip.py"],
                ["bench/eval_elpv.py"], ["demo/screenshots.py"]]
HEAVY = ("torch", "transformers", "gradio", "pandas")
# Runs the script's main() with --help, then reports which heavy libraries had been imported by then.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
print("LOADED:" + ",".join(name for name in {heavy!r} if name in sys.modules))
"""


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry[0])
def test_help_answers_without_loading_a_model_library(entry):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *entry], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "LOADED:", done.stdout.splitlines()[-1]
    assert seconds < 20  # generous: a shared CI machine; the real guard is the line above


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda entry: entry[0])
def test_required_flags_are_shown_as_required(entry):
    done = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "1000"})  # one line per flag
    usage = done.stdout.split("\n\n")[0]
    required = [line.split()[0] for line in done.stdout.splitlines() if "(required" in line]
    assert all(flag.startswith("--") for flag in required), required
    for flag in required:
        assert f"[{flag}" not in usage, f"{flag} is said to be required but shown as optional: {usage}"
