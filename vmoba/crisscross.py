"""Criss-cross attention (CCNet): modules on feature maps (2D, 3D, recurrent) and the token form for
transformers, `criss_cross_attention` (its video-query kernels, PyTorch and Triton, live in
``vmoba/kernels/crisscross*.py``; docs/crisscross.md has the whole story).

Each position attends to the positions on its own lines through the map (row and column in 2D; the t-, h-
and w-lines in 3D), itself counted once, with one softmax over all of them and no scaling. Energies are
computed line by line, so memory is ``positions x (sum of line lengths)``, never ``positions^2``.

Cost accounting (`crisscross_flops`, `non_local_flops`): FLOPs = 2 x multiply-accumulates of the 1x1
projections, the energies and the weighted sum; softmax, masking and the residual add are not counted (they
are O(positions x line length) and lower order). The implementation computes each position's own energy once
per line and masks the duplicates, so a 2D module evaluates ``H + W`` energies per position rather than the
``H + W - 1`` that are used; the count below is of the work actually done.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .attention import check_qkv, check_text_mask, dense_attention, split_text
from .checks import boolean, choice, integer, real
from .config import BACKENDS, VMoBAConfig
from .kernels._triton import triton_unavailable_reason
from .kernels.crisscross import criss_cross_attention_torch
from .kernels.crisscross_triton import criss_cross_attention_triton
from .partition import validate_grid


def _check_input(x: torch.Tensor, dims: int, in_channels: int, name: str) -> None:
    layout = "(B, C, H, W)" if dims == 4 else "(B, C, T, H, W)"
    if not isinstance(x, torch.Tensor) or x.dim() != dims:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a {layout} tensor, got {shape}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{name} was built for {in_channels} channels, got input with {x.shape[1]}: {tuple(x.shape)}")


def _masked_self(energy: torch.Tensor, length: int, axis_q: int) -> torch.Tensor:
    """Mask the diagonal (a position paired with itself) of ``energy`` along one line."""
    eye = torch.eye(length, dtype=torch.bool, device=energy.device)
    shape = [1] * energy.dim()
    shape[axis_q], shape[-1] = length, length
    return energy.masked_fill(eye.view(shape), float("-inf"))


class _CrissCrossBase(nn.Module):
    """Projections (Q, K to ``C // 8`` channels, V to ``C``) and the gated residual shared by 2D and 3D."""

    def __init__(self, in_channels: int, conv: type[nn.Module]):
        super().__init__()
        in_channels = integer("in_channels", in_channels, min=1)
        qk = max(1, in_channels // 8)
        self.in_channels = in_channels
        self.query = conv(in_channels, qk, 1)
        self.key = conv(in_channels, qk, 1)
        self.value = conv(in_channels, in_channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.attention(x) + x


class CrissCrossAttention(_CrissCrossBase):
    """Criss-cross attention on ``(B, C, H, W)``: each position attends to the ``H + W - 1`` positions of its
    row and column. ``y = gamma * attention + x`` with ``gamma`` starting at 0, so a fresh module is the identity."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, nn.Conv2d)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The aggregated values alone (before the gamma-weighted residual)."""
        _check_input(x, 4, self.in_channels, type(self).__name__)
        H, W = x.shape[-2:]
        q, k, v = self.query(x), self.key(x), self.value(x)
        # column energies [B, H, W, H'] (self masked: it is counted in the row), row energies [B, H, W, W']
        e_col = _masked_self(torch.einsum("bchw,bckw->bhwk", q, k), H, 1)
        e_row = torch.einsum("bchw,bchk->bhwk", q, k)
        att = torch.softmax(torch.cat([e_col, e_row], dim=-1), dim=-1)
        a_col, a_row = att.split([H, W], dim=-1)
        return torch.einsum("bhwk,bckw->bchw", a_col, v) + torch.einsum("bhwk,bchk->bchw", a_row, v)


class CrissCrossAttention3D(_CrissCrossBase):
    """Criss-cross attention on ``(B, C, T, H, W)``: the ``T + H + W - 2`` positions on a position's t-, h- and
    w-lines, one softmax, no scaling, ``y = gamma * attention + x`` with ``gamma`` starting at 0."""

    def __init__(self, in_channels: int):
        super().__init__(in_channels, nn.Conv3d)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, 5, self.in_channels, type(self).__name__)
        T, H, W = x.shape[-3:]
        q, k, v = self.query(x), self.key(x), self.value(x)
        e_t = _masked_self(torch.einsum("bcthw,bckhw->bthwk", q, k), T, 1)
        e_h = _masked_self(torch.einsum("bcthw,bctkw->bthwk", q, k), H, 2)
        e_w = torch.einsum("bcthw,bcthk->bthwk", q, k)
        att = torch.softmax(torch.cat([e_t, e_h, e_w], dim=-1), dim=-1)
        a_t, a_h, a_w = att.split([T, H, W], dim=-1)
        return (
            torch.einsum("bthwk,bckhw->bcthw", a_t, v)
            + torch.einsum("bthwk,bctkw->bcthw", a_h, v)
            + torch.einsum("bthwk,bcthk->bcthw", a_w, v)
        )


class RecurrentCrissCrossAttention(nn.Module):
    """One criss-cross module applied ``recurrence`` times with shared weights. With 2 loops every position
    reaches every other (row then column, or column then row). ``volumetric=True`` works on ``(B, C, T, H, W)``
    (3 loops are needed there for full reach)."""

    def __init__(self, in_channels: int, recurrence: int = 2, *, volumetric: bool = False):
        super().__init__()
        self.recurrence = integer("recurrence", recurrence, min=1)
        self.cca = CrissCrossAttention3D(in_channels) if volumetric else CrissCrossAttention(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x


def _projection_macs(positions: int, channels: int, qk_channels: int) -> int:
    return positions * channels * (2 * qk_channels + channels)


def crisscross_flops(height: int, width: int, channels: int, qk_channels: int | None = None,
                     recurrence: int = 2, frames: int | None = None) -> int:
    """FLOPs of `RecurrentCrissCrossAttention` as implemented (see the module docstring for what counts)."""
    qk = max(1, channels // 8) if qk_channels is None else qk_channels
    lines = height + width + (frames or 0)
    positions = height * width * (frames or 1)
    per_loop = _projection_macs(positions, channels, qk) + positions * lines * (qk + channels)
    return 2 * recurrence * per_loop


def non_local_flops(height: int, width: int, channels: int, qk_channels: int | None = None) -> int:
    """FLOPs of a non-local block with the same projections (every position attends to every position)."""
    qk = max(1, channels // 8) if qk_channels is None else qk_channels
    positions = height * width
    return 2 * (_projection_macs(positions, channels, qk) + positions * positions * (qk + channels))


def criss_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid,
    *,
    scale: float | None = None,
    text_len: int = 0,
    text_first: bool = True,
    text_mask: torch.Tensor | None = None,
    recurrence: int = 1,
    memory_budget_mb: int = VMoBAConfig.memory_budget_mb,
    backend: str = "auto",
) -> torch.Tensor:
    """Token-level criss-cross attention for transformers: ``(B, S, H, D)`` in and out.

    Per head, each video query attends, with one softmax at ``scale`` (``1/sqrt(D)`` by default), to the video
    tokens on its t-, h- and w-lines (``T + H + W - 2`` of them, itself once) and to every text token; text
    queries attend densely. Video tokens come frame-major over ``grid = (T, H, W)``; ``text_len`` text tokens
    sit first or last; ``text_mask`` ``[B, text_len]`` marks valid text keys (padded ones are attended by no
    query; their own outputs are still computed over the valid keys).

    ``recurrence = R`` applies the layer's attention R times (CCNet's loops): with ``A`` the layer's sparse
    attention matrix (queries and keys unchanged), the output is ``A^R v``: loop ``r + 1`` attends with the same
    probabilities over the outputs of loop ``r`` as its values. On a 2D grid (one of T, H, W equal to 1) two
    loops connect every video token to every other; a 3D grid needs three (any two tokens differ in at most
    three coordinates, and each loop changes one); with text tokens, two loops already connect everything
    through them. Cost: R times one loop, still linear in tokens x line length.

    Memory: the PyTorch path works on runs of whole frames of a few heads, sized so that the logits of one
    run and their temporaries stay within ``memory_budget_mb`` (default: `VMoBAConfig`'s); peak memory is
    then the inputs, the output and one budget. Nothing is ever ``S x S``.

    ``backend``: ``"auto"`` (the fused Triton kernel on CUDA, the PyTorch path elsewhere and for float64),
    ``"torch"`` or ``"triton"``, as `VMoBAConfig.backend`. The kernel recomputes its logits in the backward
    pass from the saved log-sum-exp, so training memory does not grow with the line lengths either.
    """
    check_qkv(q, k, v)
    B, S, Hn, D = q.shape
    T, H, W = validate_grid(grid)
    text_len = integer("text_len", text_len, min=0, max=S - 1)
    text_first = boolean("text_first", text_first)
    recurrence = integer("recurrence", recurrence, min=1)
    scale = 1.0 / math.sqrt(D) if scale is None else real("scale", scale, min=0.0, min_exclusive=True)
    if T * H * W != S - text_len:
        raise ValueError(f"grid {(T, H, W)} holds {T * H * W} tokens but the sequence has {S - text_len} video tokens "
                         f"(seq_len {S} - text_len {text_len})")
    memory_budget_mb = integer("memory_budget_mb", memory_budget_mb, min=1)
    text_mask = check_text_mask(text_mask, B, text_len, q.device)
    if criss_cross_backend(backend, q) == "triton":
        video = criss_cross_attention_triton
    else:
        video = functools.partial(criss_cross_attention_torch, memory_budget_mb=memory_budget_mb)
    values = v
    for _ in range(recurrence):
        values = _criss_cross_once(q, k, values, (T, H, W), scale, text_len, text_first, text_mask, video,
                                   memory_budget_mb)
    return values


def criss_cross_backend(backend, q: torch.Tensor) -> str:
    """The path `criss_cross_attention(backend=backend)` takes for queries like ``q``: ``"torch"`` or
    ``"triton"``, by the rule of `VMoBAConfig.backend` (``"auto"``: Triton on CUDA); the kernel has no
    float64 version, so ``"auto"`` keeps float64 on the PyTorch path."""
    choice("backend", backend, BACKENDS)
    if backend == "torch" or (backend == "auto" and (q.device.type != "cuda" or q.dtype == torch.float64)):
        return "torch"
    reason = triton_unavailable_reason(q.device)
    if reason is not None and backend == "triton":
        raise RuntimeError(f"criss_cross_attention(backend='triton') cannot run here: {reason}")
    if q.dtype == torch.float64 and backend == "triton":
        raise ValueError("criss_cross_attention(backend='triton') runs float16, bfloat16 and float32, got float64; "
                         "use backend='torch' or 'auto'")
    return "torch" if reason is not None else "triton"


def _criss_cross_once(q, k, v, grid, scale, text_len, text_first, text_mask, video, memory_budget_mb):
    """One loop of `criss_cross_attention` on validated arguments; ``video`` attends the video queries."""
    if not text_len:
        return video(q, k, v, grid, scale)[0]
    qt, qv = split_text(q, text_len, text_first)
    kt, kv = split_text(k, text_len, text_first)
    vt, vv = split_text(v, text_len, text_first)
    out_v, _ = video(qv, kv, vv, grid, scale, kt, vt, text_mask)
    out_t = _text_queries(qt, k, v, scale, text_len, text_first, text_mask, memory_budget_mb)
    return torch.cat([out_t, out_v] if text_first else [out_v, out_t], dim=1)


def _text_queries(qt, k, v, scale, text_len, text_first, text_mask, memory_budget_mb) -> torch.Tensor:
    """Text queries attend densely over every video key and every valid text key. SDPA without a mask runs
    PyTorch's fused (flash) kernel, whose working memory does not grow with the sequence, but copies its
    inputs head-major: so it runs on as many heads at a time as the budget holds, and a masked batch one
    element at a time over its valid keys rather than through a mask."""
    B, S, Hn, D = k.shape
    heads = max(1, (memory_budget_mb << 20) // (3 * S * D * max(4, k.element_size())))
    outs = []
    for b in range(B):
        keep = slice(None)
        if text_mask is not None:
            keep = torch.ones(S, dtype=torch.bool, device=k.device)
            keep[slice(0, text_len) if text_first else slice(S - text_len, S)] = text_mask[b]
        kb, vb = k[b : b + 1, keep], v[b : b + 1, keep]
        outs.append(torch.cat([dense_attention(qt[b : b + 1, :, n : n + heads], kb[:, :, n : n + heads],
                                               vb[:, :, n : n + heads], scale) for n in range(0, Hn, heads)], 2))
    return torch.cat(outs)
