"""Files the project writes and reads back: atomic writes, staged directories, JSON, safetensors.

A killed run never leaves a half-written file or directory behind, and what is written gets the usual
permissions (the umask), as any other tool's files: a bundle a colleague trained is readable on a shared
server. A damaged file is reported by name, never as a library's own traceback.
"""
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def _umask():
    mask = os.umask(0o022)  # reading the umask means setting it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _umask()


def usual_permissions(path):
    """Give `path` (and everything under it) the permissions a plain open()/mkdir would: safetensors and
    mkdtemp create private (0600/0700) files, which colleagues on a shared server could not read."""
    path = Path(path)
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_UMASK)


class DamagedFileError(ValueError):
    """A file the project wrote (or should have) that cannot be read back: truncated, corrupt or foreign."""


def atomic_write(path, write):
    """Call write(temp_path), then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        usual_permissions(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, data):
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path, default=None):
    """The parsed file, or `default` when it is missing or not valid JSON (e.g. a marker of unfinished work)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_json_strict(path, what="file"):
    """The parsed file; a missing or damaged one raises with its name (for files that must be there)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise DamagedFileError(f"{path}: damaged {what}, not valid JSON ({error})") from None


@contextmanager
def staged_directory(directory):
    """Yield an empty sibling directory to fill; on success it replaces `directory` in one rename, on
    failure it is removed. Created with os.mkdir, so it gets the umask's permissions (mkdtemp's are 0700)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    usual_permissions(staging)
    replace_directory(staging, directory)


def replace_directory(staging, directory):
    """Swap a fully written `staging` directory in for `directory` (renames only), then drop the old one."""
    staging, directory = Path(staging), Path(directory)
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if directory.exists():
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def loading(what, name, hint=""):
    """Errors while loading a model by name, said plainly: not found (OSError, with `hint`) or damaged."""
    from safetensors import SafetensorError

    try:
        yield
    except OSError as error:
        raise OSError(f"could not load {what} '{name}': {hint}({error})") from error
    except (SafetensorError, ValueError, RuntimeError, KeyError) as error:
        raise DamagedFileError(f"could not load {what} '{name}': damaged or mismatched files "
                               f"({type(error).__name__}: {error})") from None


def load_safetensors(path, what="weights"):
    """safetensors file -> {name: tensor}; a truncated or corrupt file raises DamagedFileError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing {what} file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DamagedFileError(f"{path}: damaged {what} file, cannot be read ({error}); "
                               "restore it or produce it again") from None


def local_or_id(name):
    """Absolute path for a local directory (so a bundle or dataset can be used from anywhere), else the hub
    id as given."""
    return str(Path(name).resolve()) if name and Path(name).is_dir() else name


def short_names(paths):
    """Short unique names for directories: 'best', or 'run1/best' when two share a folder name."""
    names = [Path(p).name for p in paths]
    for depth in range(2, 1 + max((len(Path(p).resolve().parts) for p in paths), default=1)):
        if len(set(names)) == len(names):
            break
        names = ["/".join(Path(p).resolve().parts[-depth:]) for p in paths]
    return names
