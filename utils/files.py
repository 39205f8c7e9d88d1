"""Atomic writes: a killed run never leaves a half-written file or directory behind."""
import os
import shutil
from pathlib import Path


def atomic_write(path, write):
    """Call write(temp_path), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def replace_directory(staging, directory):
    """Swap a fully written `staging` directory in for `directory` (renames only), then drop the old one."""
    staging, directory = Path(staging), Path(directory)
    old = directory.with_name(f".{directory.name}.old{os.getpid()}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
