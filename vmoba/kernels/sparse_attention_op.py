"""Block-sparse attention as a `torch.library` custom op, for `torch.compile`.

Both backends build data-dependent work (block lists, per-block query sets) that a compiler cannot trace.
As a custom op the call is one opaque node with a fake (meta) implementation that gives the output shapes,
and an autograd formula whose backward is a second custom op: `torch.compile(..., fullgraph=True)` traces
through VMoBA attention without graph breaks. The selection travels as its mask plus the partition's
description (grid, scheme, chunk, query tile); the op rebuilds the `BlockSelection` from the partition cache.

Eager calls go straight to the backends instead (`vmoba.attention`), where the forward's work lists stay on
the selection for the backward; under the op, the backward rebuilds them.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..layout import BlockSelection, get_partition
from .sparse_attention import block_sparse_attention_torch, block_sparse_attention_torch_backward
from .sparse_attention_triton import block_sparse_attention_triton, block_sparse_attention_triton_backward


def _selection(mask: Tensor, grid, scheme, chunk, granularity, query_tile) -> BlockSelection:
    part = get_partition(tuple(grid), scheme, tuple(chunk), mask.device)
    return BlockSelection(part, part.tiles(query_tile), granularity, mask)


@torch.library.custom_op("vmoba::block_sparse_attention", mutates_args=())
def block_sparse_attention_op(
    q: Tensor, k: Tensor, v: Tensor, text_k: Optional[Tensor], text_v: Optional[Tensor], mask: Tensor,
    grid: Sequence[int], scheme: str, chunk: Sequence[int], granularity: str, query_tile: int, scale: float,
    backend: str, memory_budget_mb: int,
) -> tuple[Tensor, Tensor]:
    """``(out (B, S, H, D), lse (B, H, S) float32)`` of the backend ``backend`` ("torch" or "triton")."""
    selection = _selection(mask, grid, scheme, chunk, granularity, query_tile)
    with torch.no_grad():
        if backend == "triton":
            out, lse = block_sparse_attention_triton(q, k, v, selection, scale, text_k, text_v)
        else:
            out, lse = block_sparse_attention_torch(q, k, v, selection, scale, text_k, text_v, memory_budget_mb)
    return out.contiguous(), lse.contiguous()  # the strides the fake implementation promises


@block_sparse_attention_op.register_fake
def _(q, k, v, text_k, text_v, mask, grid, scheme, chunk, granularity, query_tile, scale, backend,
      memory_budget_mb):
    B, S, H, D = q.shape
    return q.new_empty(B, S, H, D), q.new_empty(B, H, S, dtype=torch.float32)


@torch.library.custom_op("vmoba::block_sparse_attention_backward", mutates_args=())
def block_sparse_attention_backward_op(
    dout: Tensor, dlse: Tensor, q: Tensor, k: Tensor, v: Tensor, text_k: Optional[Tensor],
    text_v: Optional[Tensor], out: Tensor, lse: Tensor, mask: Tensor, grid: Sequence[int], scheme: str,
    chunk: Sequence[int], granularity: str, query_tile: int, scale: float, backend: str, memory_budget_mb: int,
) -> list[Tensor]:
    """``[dq, dk, dv]``, plus ``dtext_k, dtext_v`` with text keys."""
    selection = _selection(mask, grid, scheme, chunk, granularity, query_tile)
    if backend == "triton":
        grads = block_sparse_attention_triton_backward(q, k, v, out, lse, dout, dlse, selection, scale, text_k, text_v)
    else:
        grads = block_sparse_attention_torch_backward(q, k, v, out, lse, dout, dlse, selection, scale, text_k, text_v,
                                                      memory_budget_mb)
    return [g.contiguous() for g in grads if g is not None]


@block_sparse_attention_backward_op.register_fake
def _(dout, dlse, q, k, v, text_k, text_v, out, lse, mask, grid, scheme, chunk, granularity, query_tile, scale,
      backend, memory_budget_mb):
    return [torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v, text_k, text_v)
            if x is not None]


_NON_TENSOR_ARGS = ("grid", "scheme", "chunk", "granularity", "query_tile", "scale", "backend", "memory_budget_mb")


def _setup_context(ctx, inputs, output):
    q, k, v, text_k, text_v, mask, *rest = inputs
    ctx.save_for_backward(q, k, v, text_k, text_v, mask, *output)
    ctx.rest = rest
    ctx.has_text = text_k is not None


def _backward(ctx, dout, dlse):
    q, k, v, text_k, text_v, mask, out, lse = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout
    dlse = torch.zeros_like(lse) if dlse is None else dlse
    grads = block_sparse_attention_backward_op(dout, dlse, q, k, v, text_k, text_v, out, lse, mask, *ctx.rest)
    dtext = (grads[3], grads[4]) if ctx.has_text else (None, None)
    return (grads[0], grads[1], grads[2], *dtext, None) + (None,) * len(_NON_TENSOR_ARGS)


block_sparse_attention_op.register_autograd(_backward, setup_context=_setup_context)


def block_sparse_attention(q, k, v, selection: BlockSelection, scale: float, text_k=None, text_v=None, *,
                           query_tile: int, backend: str = "torch", memory_budget_mb: int = 256):
    """The op called with a `BlockSelection`: ``(out, lse)`` as the backends return them."""
    part = selection.partition
    return block_sparse_attention_op(q, k, v, text_k, text_v, selection.mask, list(part.grid), part.scheme,
                                     list(part.chunk), selection.granularity, query_tile, float(scale), backend,
                                     memory_budget_mb)
