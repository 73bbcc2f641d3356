"""Segment means of per-token vectors: key block means (`kbar`) and query tile means.

``x`` is ``(B, S, H, D)`` in the original token order; ``order`` lists the original index of every blocked
position and ``offsets`` cuts the blocked sequence into segments. The result is ``(B, H, n_segments, D)``
in float32, whatever the input dtype.
"""

from __future__ import annotations

import torch

from ._triton import new_empty, tl, triton, triton_available


def pool_segments_reference(x: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    B, S, H, D = x.shape
    n = offsets.numel() - 1
    sizes = offsets[1:] - offsets[:-1]
    segment_of_blocked = torch.repeat_interleave(torch.arange(n, device=x.device), sizes)
    segment_of_token = torch.empty_like(segment_of_blocked)
    segment_of_token[order] = segment_of_blocked
    out = torch.zeros(B, n, H, D, device=x.device, dtype=torch.float32)
    for b in range(B):  # one batch element at a time keeps the float32 copy small
        out[b].index_add_(0, segment_of_token, x[b].float())
    out /= sizes.to(torch.float32).view(1, n, 1, 1)
    return out.transpose(1, 2)


if triton_available:

    @triton.jit
    def _pool_segments_kernel(
        x_ptr, order_ptr, offsets_ptr, out_ptr,
        stride_xb, stride_xs, stride_xh,
        stride_ob, stride_oh, stride_on,
        H, D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # 64-bit offsets: b * stride_xb passes 2**31 once B*S*H*D does (75,600 tokens, 40 heads, batch 7)
        seg = tl.program_id(0).to(tl.int64)
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        h = bh % H
        start = tl.load(offsets_ptr + seg)
        end = tl.load(offsets_ptr + seg + 1)
        d = tl.arange(0, BLOCK_D)
        acc = tl.zeros([BLOCK_S, BLOCK_D], dtype=tl.float32)
        for pos in range(start, end, BLOCK_S):
            rows = pos + tl.arange(0, BLOCK_S)
            row_ok = rows < end
            tok = tl.load(order_ptr + rows, mask=row_ok, other=0).to(tl.int64)
            ptrs = x_ptr + b * stride_xb + h * stride_xh + tok[:, None] * stride_xs + d[None, :]
            acc += tl.load(ptrs, mask=row_ok[:, None] & (d[None, :] < D), other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / (end - start).to(tl.float32)
        tl.store(out_ptr + b * stride_ob + h * stride_oh + seg * stride_on + d, mean, mask=d < D)


def pool_segments_triton(x: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    B, S, H, D = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    n = offsets.numel() - 1
    out = new_empty(B, H, n, D, device=x.device, dtype=torch.float32)
    block_d = triton.next_power_of_2(D)
    block_s = max(1, min(64, 4096 // block_d))
    _pool_segments_kernel[(n, B * H)](
        x, order, offsets, out,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        H, D=D, BLOCK_S=block_s, BLOCK_D=block_d,
    )
    return out
