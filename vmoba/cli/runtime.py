"""Process-wide settings a command may make before it runs a model (the library itself never makes them)."""

from __future__ import annotations

import os

import torch

from .arguments import CliError


def set_threads(threads: int | None, default: int | None = None) -> None:
    """The command's thread count: ``--threads``, else OMP_NUM_THREADS when set, else ``default`` (None: PyTorch's
    own choice)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    count = threads or (int(env) if env.isdigit() and int(env) > 0 else default)
    if count is not None:
        torch.set_num_threads(count)


def require_device(device: str | None) -> torch.device | None:
    """``--device`` as a torch device, refused at once (before anything loads) when this machine lacks it."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise CliError(f"--device {device}: PyTorch sees no CUDA device on this machine "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise CliError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {device}: the MPS backend is not available on this machine")
    return resolved
