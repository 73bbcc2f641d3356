"""Optional Triton import, and the rule for when the Triton kernels can run.

Triton decides at decoration time whether kernels are compiled or interpreted, so ``TRITON_INTERPRET=1``
must be in the environment before ``vmoba`` is imported for the interpreter (CPU) to be used.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    triton_available = True
    triton_import_error: str | None = None
except Exception as error:  # absent, or installed but broken (a missing shared library, a version clash, ...)
    triton = None
    tl = None
    triton_available = False
    if isinstance(error, ModuleNotFoundError) and error.name == "triton":
        triton_import_error = "Triton is not installed (pip install triton)"
    else:
        triton_import_error = f"Triton is installed but does not import: {type(error).__name__}: {error}"

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on ``device``; otherwise why not, in words a user can act on."""
    if not triton_available:
        return triton_import_error
    if device.type == "cuda":
        if INTERPRET:
            return "TRITON_INTERPRET=1 is set, so Triton kernels would run in the interpreter, not on the GPU"
        return None
    if device.type == "cpu":
        if INTERPRET:
            return None
        return (
            "the Triton backend runs on CPU tensors only in the interpreter: set TRITON_INTERPRET=1 before "
            "importing vmoba, or use backend='torch'"
        )
    return f"the Triton backend does not support {device.type} tensors"


# Tests set POISON so that every buffer a kernel is meant to fill starts as NaN (floats) or True (masks):
# an element the kernel forgot to write then fails the comparison instead of passing by luck.
POISON = False


def new_empty(*shape, dtype, device) -> torch.Tensor:
    out = torch.empty(*shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(True if dtype == torch.bool else float("nan"))
    return out
