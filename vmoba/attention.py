"""`vmoba_attention`: the one entry point from ``(q, k, v, grid)`` to the attention output.

latent grid -> partition -> block means -> gate scores -> selection -> sparse attention -> output in the
original order. Text tokens (joint-attention models) are split off here: video queries see every text key
plus their selected blocks, text queries attend densely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from . import checks
from .config import SCHEMES, VMoBAConfig, as_config
from .kernels._triton import triton_unavailable_reason
from .kernels.sparse_attention import block_sparse_attention_torch
from .kernels.sparse_attention_op import block_sparse_attention
from .kernels.sparse_attention_triton import block_sparse_attention_triton
from .partition import get_partition, validate_grid
from .selection import BlockSelection, compute_selection

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionStats:
    """What one `vmoba_attention` call did. Densities are fractions of video query-key pairs."""

    scheme: str
    num_blocks: int
    granularity: str
    backend: str
    density: float  # pairs each query attends, averaged over batch and heads
    dense_reason: str | None = None  # set when the call ran dense attention, and why

    @property
    def sparse(self) -> bool:
        return self.dense_reason is None


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, seq_len, heads, head_dim), got {tuple(x.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"q, k and v must have the same (batch, seq_len, heads, head_dim) shape for self-attention, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; use one of {SUPPORTED_DTYPES}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.numel() == 0:
        raise ValueError(f"q, k and v must not be empty, got shape {tuple(q.shape)}")


def check_finite(*tensors: torch.Tensor, names: Sequence[str] = ("q", "k", "v"), group=None) -> None:
    """Raise when a tensor holds NaN or Inf. With a process ``group``, every rank of it raises when any rank's
    tensors do: one rank raising alone would leave the others waiting in the next collective."""
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    if group is not None:
        flags = flags.to(torch.int32)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN, group=group)
    bad = [n for n, ok in zip(names, flags.tolist()) if not ok]
    if bad:
        where = " on some rank" if group is not None else ""
        raise ValueError(f"non-finite values (NaN or Inf) in {', '.join(bad)}{where}")


def check_text_mask(text_mask, batch: int, text_len: int, device) -> torch.Tensor | None:
    """The checked ``[batch, text_len]`` padding mask of the text keys, or None when it keeps every text token
    (`vmoba_attention` and `criss_cross_attention`)."""
    if text_mask is None:
        return None
    if not isinstance(text_mask, torch.Tensor):
        raise TypeError(f"text_mask must be a bool torch.Tensor of shape ({batch}, text_len) or None, "
                        f"got {type(text_mask).__name__}")
    if text_len == 0:
        raise ValueError("text_mask was given but text_len=0: there are no text tokens to mask (pass text_len, "
                         "the number of text tokens in the sequence, or drop text_mask)")
    if text_mask.dtype != torch.bool or tuple(text_mask.shape) != (batch, text_len):
        raise ValueError(f"text_mask must be a bool tensor of shape ({batch}, {text_len}), got "
                         f"{text_mask.dtype} {tuple(text_mask.shape)}")
    if text_mask.device != device:
        raise ValueError(f"text_mask is on {text_mask.device} but q, k and v are on {device}")
    if not bool(text_mask.any(-1).all()):
        raise ValueError("text_mask leaves a batch element with no valid text token")
    return None if bool(text_mask.all()) else text_mask


def resolve_backend(config: VMoBAConfig, device: torch.device) -> str:
    reason = triton_unavailable_reason(device)
    if config.backend == "triton":
        if reason is not None:
            raise RuntimeError(f"VMoBAConfig.backend='triton' cannot run here: {reason}")
        return "triton"
    if config.backend == "auto" and device.type == "cuda" and reason is None:
        return "triton"
    return "torch"


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain softmax attention on ``(B, S, H, D)`` tensors through PyTorch SDPA."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask, scale=scale)
    return out.transpose(1, 2)


def split_text(x: torch.Tensor, text_len: int, text_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text, video)`` parts of a ``(B, S, ...)`` sequence whose ``text_len`` text tokens come first
    (``text_first``) or last."""
    if text_first:
        return x[:, :text_len], x[:, text_len:]
    S = x.shape[1]
    return x[:, S - text_len :], x[:, : S - text_len]


def dense_reason(config: VMoBAConfig, layer_idx: int, n_video: int, *, scheme: str | None = None,
                 step: int | None = None) -> str | None:
    """Why an attention call runs exact dense attention instead of its sparse scheme, or None.

    The one place that decides dense fallbacks, for `vmoba_attention` and every processor: ``dense_layers``,
    ``min_tokens``, ``dense_steps`` (only when the denoising ``step`` is known) and, for the VMoBA schemes,
    ``threshold=1.0`` (every block kept by definition; it means nothing to criss-cross attention).
    """
    if layer_idx in config.dense_layers:
        return f"layer {layer_idx} is in dense_layers"
    if n_video < config.min_tokens:
        return f"{n_video} video tokens < min_tokens={config.min_tokens}"
    if (scheme or config.scheme_for_layer(layer_idx)) != "crisscross" and config.is_dense():
        return "threshold=1.0 keeps every block"
    if step is not None and step < config.dense_steps:
        return f"step {step} < dense_steps={config.dense_steps}"
    return None


def vmoba_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    layer_idx: int = 0,
    config: VMoBAConfig | Mapping[str, Any] | None = None,
    *,
    text_len: int = 0,
    text_first: bool = True,
    text_mask: torch.Tensor | None = None,
    scale: float | None = None,
    return_stats: bool = False,
):
    """VMoBA block-sparse self-attention.

    Args:
        q, k, v: ``(B, S, H, D)``, as diffusers passes them to ``dispatch_attention_fn``.
        grid: latent token grid ``(T, H, W)`` of the video tokens, ``T * H * W == S - text_len``,
            tokens in frame-major order.
        layer_idx: index of the attention layer; picks the partition scheme from ``config.layer_schedule``.
        config: a `VMoBAConfig` (or a dict of its fields); None for the defaults.
        text_len: number of text tokens in the sequence, first (``text_first``, CogVideoX) or last
            (HunyuanVideo). Video queries attend to every text key; text queries attend densely.
        text_mask: optional ``[B, text_len]`` bool, False for padded text tokens: no query attends to them
            (their own outputs are still computed, over the valid keys, as diffusers does).
        scale: softmax scale, ``1 / sqrt(D)`` by default.
        return_stats: also return an `AttentionStats`.

    Returns:
        ``(B, S, H, D)`` in q's dtype, or ``(output, stats)`` with ``return_stats``.
    """
    out, stats, _ = attention_with_selection(q, k, v, grid, layer_idx, config, text_len=text_len,
                                             text_first=text_first, text_mask=text_mask, scale=scale)
    return (out, stats) if return_stats else out


def attention_with_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    layer_idx: int,
    config: VMoBAConfig | Mapping[str, Any] | None,
    *,
    text_len: int = 0,
    text_first: bool = True,
    text_mask: torch.Tensor | None = None,
    scale: float | None = None,
    fallback: bool = True,
) -> tuple[torch.Tensor, AttentionStats, BlockSelection | None]:
    """`vmoba_attention` that also returns the `BlockSelection` it attended with (None when it ran dense).

    With ``fallback=False`` the caller has already decided (through `dense_reason`) that the call is sparse.
    """
    config = as_config(config)
    check_qkv(q, k, v)
    B, S, H, D = q.shape
    grid = validate_grid(grid)
    text_len = checks.integer("text_len", text_len, min=0, max=S - 1)
    text_first = checks.boolean("text_first", text_first)
    n_video = S - text_len
    if math.prod(grid) != n_video:
        raise ValueError(
            f"grid {grid} holds {math.prod(grid)} tokens but the sequence has {n_video} video tokens "
            f"(seq_len {S} - text_len {text_len})"
        )
    if config.validate_inputs:
        check_finite(q, k, v)
    scale = 1.0 / math.sqrt(D) if scale is None else checks.real("scale", scale, min=0.0, min_exclusive=True)
    scheme = config.scheme_for_layer(layer_idx)
    if scheme not in SCHEMES:
        raise ValueError(f"layer {layer_idx} runs {scheme!r} attention in config.layer_schedule, not a VMoBA scheme "
                         f"{SCHEMES}: use a processor (vmoba.VMoBAProcessor) for mixed schedules")
    text_mask = check_text_mask(text_mask, B, text_len, q.device)
    part = get_partition(grid, scheme, config.chunk_for_scheme(scheme), q.device)

    reason = dense_reason(config, layer_idx, n_video, scheme=scheme) if fallback else None
    if reason is not None:
        mask = None
        if text_mask is not None:
            mask = torch.ones(B, 1, 1, S, dtype=torch.bool, device=q.device)
            text_cols = slice(0, text_len) if text_first else slice(S - text_len, S)
            mask[:, 0, 0, text_cols] = text_mask
        out = dense_attention(q, k, v, scale, mask)
        return out, AttentionStats(scheme, part.num_blocks, config.granularity, "dense", 1.0, reason), None

    backend = resolve_backend(config, q.device)
    config = config.for_backend(backend)
    if text_len:
        qt, qv = split_text(q, text_len, text_first)
        kt, kv = split_text(k, text_len, text_first)
        vt, vv = split_text(v, text_len, text_first)
    else:
        qv, kv, vv = q, k, v
        qt = kt = vt = None
    selection = compute_selection(qv, kv, part, config, scheme, backend=backend)
    out_v, out_t = _attend_selection(k, v, qv, kv, vv, qt, kt, vt, selection, scale, text_mask, backend, config)
    out = out_v if not text_len else torch.cat([out_t, out_v] if text_first else [out_v, out_t], dim=1)
    stats = AttentionStats(
        scheme=scheme,
        num_blocks=part.num_blocks,
        granularity=config.granularity,
        backend=backend,
        density=float(selection.density().mean()),
    )
    return out, stats, selection


def _attend_selection(k, v, qv, kv, vv, qt, kt, vt, selection: BlockSelection, scale, text_mask, backend, config):
    """Outputs of the video queries (selected blocks plus every valid text key) and of the text queries (dense
    over every valid key; ``k, v`` are the whole sequence)."""
    if text_mask is None:
        out_v = _sparse_attention(qv, kv, vv, selection, scale, kt, vt, backend, config)
        return out_v, (dense_attention(qt, k, v, scale) if qt is not None else None)
    outs_v, outs_t = [], []  # text keys differ per batch element: one element at a time
    for b in range(qv.shape[0]):
        sel_b = BlockSelection(selection.partition, selection.tiles, selection.granularity, selection.mask[b : b + 1])
        keep = text_mask[b]
        kt_b, vt_b = kt[b : b + 1, keep], vt[b : b + 1, keep]
        outs_v.append(_sparse_attention(qv[b : b + 1], kv[b : b + 1], vv[b : b + 1], sel_b, scale, kt_b, vt_b,
                                        backend, config))
        outs_t.append(dense_attention(qt[b : b + 1], torch.cat([kv[b : b + 1], kt_b], 1),
                                      torch.cat([vv[b : b + 1], vt_b], 1), scale))
    return torch.cat(outs_v), torch.cat(outs_t)


def _sparse_attention(q, k, v, selection: BlockSelection, scale, text_k, text_v, backend, config) -> torch.Tensor:
    if torch.compiler.is_compiling():  # one custom op: the backends' work is data-dependent
        out, _ = block_sparse_attention(q, k, v, selection, scale, text_k, text_v, query_tile=config.query_tile,
                                        backend=backend, memory_budget_mb=config.memory_budget_mb)
        return out
    if backend == "triton":
        out, _ = block_sparse_attention_triton(q, k, v, selection, scale, text_k, text_v)
        return out
    out, _ = block_sparse_attention_torch(q, k, v, selection, scale, text_k, text_v, config.memory_budget_mb)
    return out


def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: Sequence[int],
    layer_idx: int = 0,
    config: VMoBAConfig | Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``BoolTensor[B, H, S, n_blocks]``: the key blocks each query attends (own block included), for video
    tokens ``q, k`` of shape ``(B, S, H, D)`` in frame-major order. In ``tile`` granularity every query
    carries its tile's list."""
    config = as_config(config)
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both have shape (batch, seq_len, heads, head_dim), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    grid = validate_grid(grid)
    if math.prod(grid) != q.shape[1]:
        raise ValueError(f"grid {grid} holds {math.prod(grid)} tokens but q has seq_len {q.shape[1]}")
    if config.validate_inputs:
        check_finite(q, k, names=("q", "k"))
    scheme = config.scheme_for_layer(layer_idx)
    part = get_partition(grid, scheme, config.chunk_for_scheme(scheme), q.device)
    backend = resolve_backend(config, q.device)
    return compute_selection(q, k, part, config, scheme, backend=backend).token_mask()
