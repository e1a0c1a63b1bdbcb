"""Writing a file so that a crash leaves either the old file or the new one, never a part; and the
output folders of the runs that write files."""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Callable

_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` beside ``path``, flushed to disk, then renamed over ``path``. The file
    gets the mode a plain open() would give it (mkstemp's are private), or the replaced file's."""
    path = Path(path)
    if path.is_dir():  # checked first: the write would otherwise run in full before the rename fails
        raise IsADirectoryError(f"{path} is a folder; give a file path to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def output_folder(out: str | os.PathLike, name: str = "out") -> Path:
    """``out`` as a Path, checked before a run: ValueError naming ``name`` if it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name} must be a folder, but {out} is a file")
    return out


def make_output_folder(out: Path, name: str = "out") -> Path:
    """Creates ``out`` and the folders above it; ValueError naming ``name`` where that cannot be done
    (a read-only or missing file system), not an OSError traceback after the run's set-up."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{name}: cannot create the folder {out}: {error.strerror or error}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write into the folder {out}")
    return out
