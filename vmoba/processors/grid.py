"""Reading the post-patch latent grid ``(T, H, W)`` off the 3D rotary table a processor receives (used
without `vmoba.enable`, whose hook reads the grid from the transformer's inputs instead)."""

from __future__ import annotations

from typing import Any, Callable

import torch


AxesOf = Callable[[int], "torch.Tensor | None"]  # channels of the table -> axis of each channel, or None


def _tables(rotary: Any, n_tokens: int) -> list[torch.Tensor] | None:
    """The rotary tables (cos, sin, ...) as ``[n_tokens, channels]`` each, or None when they are not that."""
    tables = list(rotary) if isinstance(rotary, (tuple, list)) else [rotary]
    if not tables or not all(isinstance(t, torch.Tensor) and t.shape == tables[0].shape for t in tables):
        return None
    out = []
    for t in tables:
        if t.dim() == 4:  # Wan: [1, S, 1, D]
            t = t[0, :, 0]
        elif t.dim() == 3:  # LTX: [B, S, C]
            t = t[0]
        if t.dim() != 2 or t.shape[0] != n_tokens:
            return None
        out.append(t)
    return out


def _contiguous_axes(first_change: torch.Tensor, never: int) -> torch.Tensor | None:
    """Axis of each channel of a ``[t | h | w]`` table whose block sizes are unknown, from when each channel
    first changes. A varying axis is one run of channels that change first at the same token (two varying
    axes never share it); an axis of length 1 never changes, and only neighbouring such axes can merge into
    one run, which is harmless (both have length 1)."""
    values, counts = torch.unique_consecutive(first_change, return_counts=True)
    varying = [int(v) != never for v in values]
    changes = [int(v) for v, is_varying in zip(values, varying) if is_varying]
    if len(values) > 3 or len(set(changes)) != len(changes):
        return None
    # give every run one axis, then hand the axes left over to runs of constant channels
    spare = 3 - len(values)
    axes, axis = [], 0
    for count, is_varying in zip(counts.tolist(), varying):
        width = 1 if is_varying else 1 + spare
        if not is_varying:
            spare = 0
        axes.append(torch.full((count,), axis))  # a merged constant run is tagged with its first axis
        axis += width
    if axis != 3:
        return None
    return torch.cat(axes)


def grid_from_rotary(rotary: Any, n_tokens: int, axes_of: AxesOf | None = None) -> tuple[int, int, int] | None:
    """Recover ``(T, H, W)`` exactly from a 3D rotary table over ``n_tokens`` video tokens in frame-major order.

    Token ``i = (t*H + h)*W + w``: the t channels first change at token ``H*W`` (if T > 1), the h channels at
    ``W`` (if H > 1), the w channels at 1 (if W > 1); an axis of length 1 never changes. ``axes_of(channels)``
    gives the axis of each channel (0 t, 1 h, 2 w, -1 none) where the family fixes it; None (or no
    ``axes_of``) means contiguous ``[t | h | w]`` blocks of unknown sizes.
    Returns None when the table does not have that structure.
    """
    tables = _tables(rotary, n_tokens)
    if tables is None or n_tokens < 1:
        return None
    changed = torch.zeros(n_tokens, tables[0].shape[1], dtype=torch.bool, device=tables[0].device)
    for t in tables:  # cos and sin together: cos alone cannot tell position p from -p
        changed |= t != t[:1]
    changed[0] = False
    never = n_tokens
    first_change = torch.where(changed.any(0), changed.to(torch.uint8).argmax(0), never).cpu()
    axes = axes_of(first_change.numel()) if axes_of is not None else None
    if axes is None:
        axes = _contiguous_axes(first_change, never)
        if axes is None:
            return None
    elif axes.shape != first_change.shape:
        return None
    first = []
    for axis in range(3):
        values = first_change[axes == axis]
        finite = values[values < never]
        if finite.numel() and bool((finite != finite[0]).any()):
            return None  # channels of one axis that start changing at different tokens: not a 3D table
        first.append(int(finite[0]) if finite.numel() else None)
    f_t, f_h, f_w = first
    HW = f_t if f_t is not None else n_tokens
    W = f_h if f_h is not None else HW
    if n_tokens % HW or HW % W or (f_w is not None) != (W > 1) or (f_w is not None and f_w != 1):
        return None
    return (n_tokens // HW, HW // W, W)
