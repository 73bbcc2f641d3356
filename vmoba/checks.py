"""Argument checks and safe file writing shared by every public entry point.

One helper per kind of argument, so every function and CLI option rejects bad values with the same kind of
message (naming the argument and what it got), and accepts every numeric type a user may hold (Python,
numpy and 0-d torch scalars). Imports only the standard library: any module may use it.

Files: everything the package writes goes through `atomic_output` / `atomic_directory`: the data is
written under a temporary name in the destination's folder and renamed over the destination only once
complete, so a failed write never leaves a truncated file or destroys the one that was there.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number; anything else unchanged."""
    if hasattr(value, "shape") and tuple(getattr(value, "shape")) == () and hasattr(value, "item"):
        return value.item()
    return value


def integer(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an ``int``: any integral number (not bool, not a float) within ``[min, max]``."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    _check_range(name, value, min, max)
    return value


def real(name: str, value: Any, *, min: float | None = None, max: float | None = None,
         min_exclusive: bool = False) -> float:
    """``value`` as a finite ``float`` within ``[min, max]`` (``(min, max]`` with ``min_exclusive``)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if min_exclusive and min is not None and value <= min:
        raise ValueError(f"{name} must be > {min}, got {value!r}")
    _check_range(name, value, min, max)
    return value


def bound(name: str, value: Any) -> float:
    """``value`` as a ``float`` that may be infinite (an open end of an interval) but never NaN."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must be a number or +-inf (an open end), got nan")
    return value


def _check_range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    value = _scalar(value)
    if not isinstance(value, (bool,)) and type(value).__name__ != "bool_":
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def int_tuple(name: str, value: Any, length: int | None = None, *, min: int | None = None) -> tuple[int, ...]:
    """A tuple of integers (a single integer counts as a 1-tuple), each ``>= min``."""
    value = _scalar(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a tuple of integers, got {value!r}")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a tuple of integers, got {value!r}") from None
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {value!r}")
    return tuple(integer(f"{name}[{i}]", item, min=min) for i, item in enumerate(items))


# -- files ------------------------------------------------------------------------------------------------


def writable_destination(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before any work is done that a file can be created at ``path``: the folder exists (or can be
    made) and is a folder, and ``path`` itself is not a folder. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file name")
    parent = path.parent if str(path.parent) else Path(".")
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{what} {str(path)!r}: {str(ancestor)!r} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} {str(path)!r}: folder {str(ancestor)!r} is not writable")
            break
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _new_mode(path: Path, default: int) -> int:
    """The mode the replaced ``path`` had, else what open()/mkdir() would give a new one (mkstemp and mkdtemp
    make private 0600/0700 entries, which would silently hide every file written from other users)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default & ~_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers that pick a format by extension
    work); once the block completes, it replaces ``path`` in one rename. On error the temporary file is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _new_mode(path, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_output` for a folder (an exported pipeline, a checkpoint): fill the yielded temporary
    folder; on success it takes ``path``'s place (an existing ``path`` is moved aside first and removed
    only after the new folder is in place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, _new_mode(path, 0o777))
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
