"""Block-sparse attention over a `BlockSelection`: the PyTorch path (this file) and the Triton kernels.

The math: each video query attends, with one exact softmax at scale ``scale``, to the keys of the blocks
its selection lists plus every always-on (text) key. Identical to dense attention under that mask.

The PyTorch path works on *work items* ``(batch, head, query tile)``. An item gathers the keys of the blocks
its tile computes (padded to the largest block), runs two batched matrix products and a softmax, and in
token granularity masks each query's row down to its own blocks. Items are sorted by block count and
processed in chunks sized to ``memory_budget_mb``, so memory never grows like ``S x S``. Autograd works
through it (it is the CPU training path).
"""

from __future__ import annotations

import functools

import torch

from ..selection import BlockSelection


@functools.lru_cache(maxsize=64)
def _padded_ranges(offsets: tuple, width: int, pad: int, device: str, pad_with_start: bool) -> torch.Tensor:
    """[n + 1, width] positions of each segment; past its end (and for the extra last row): ``pad``, or
    the segment's first position when ``pad_with_start``."""
    off = torch.tensor(offsets)
    starts, sizes = off[:-1], off[1:] - off[:-1]
    pos = starts[:, None] + torch.arange(width)[None, :]
    filler = starts[:, None].expand_as(pos) if pad_with_start else torch.full_like(pos, pad)
    pos = torch.where(torch.arange(width)[None, :] < sizes[:, None], pos, filler)
    pos = torch.cat([pos, torch.full((1, width), pad, dtype=pos.dtype)])
    return pos.to(device)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype in (torch.float32, torch.float64):
        return x.dtype
    return x.dtype if x.is_cuda else torch.float32  # half-precision CPU matmuls are slow; use float32


def block_sparse_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    scale: float,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    memory_budget_mb: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q, k, v``: video tokens ``(B, S, H, D)`` in original order; ``text_k/v``: ``(B, L, H, D)`` keys every
    query sees. Returns ``(out (B, S, H, D) in q's dtype, lse (B, H, S) float32)``, natural-log lse."""
    B, S, H, D = q.shape
    part, tiles = selection.partition, selection.tiles
    nb, bs = part.num_blocks, part.max_block_size
    nt, tm = tiles.num_tiles, tiles.max_tile
    dev = q.device
    cdt = _compute_dtype(q)
    acc = torch.float64 if cdt == torch.float64 else torch.float32  # softmax precision

    def blocked(x: torch.Tensor) -> torch.Tensor:  # [B*H, S + 1, D], a zero row at position S
        xb = x.index_select(1, part.order).transpose(1, 2).to(cdt).reshape(B * H, S, D)
        return torch.cat([xb, xb.new_zeros(B * H, 1, D)], 1)

    qb, kb, vb = blocked(q * scale), blocked(k), blocked(v)
    key_pos = _padded_ranges(tuple(part.offsets.tolist()), bs, S, str(dev), False)  # [nb + 1, bs]
    row_pos = _padded_ranges(tuple(tiles.offsets.tolist()), tm, S, str(dev), True)[:nt]  # [nt, tm]
    row_out = _padded_ranges(tuple(tiles.offsets.tolist()), tm, S, str(dev), False)[:nt]
    L = 0
    if text_k is not None:
        L = text_k.shape[1]
        tk = text_k.transpose(1, 2).to(cdt).reshape(B * H, L, D)
        tv = text_v.transpose(1, 2).to(cdt).reshape(B * H, L, D)

    indices, counts = selection.kv_lists()
    width = indices.shape[-1]
    indices = indices.view(-1, width).long()
    counts = counts.view(-1)
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    row_mask = selection.row_mask.reshape(B * H, S, nb) if selection.row_mask is not None else None

    budget = memory_budget_mb << 20
    elem = torch.finfo(cdt).bits // 8
    outs, lses, out_rows = [], [], []
    start, items = 0, order.numel()
    while start < items:
        c = max(1, sorted_counts[start])
        per_item = tm * (c * bs + L) * (3 * 4 + elem) + 2 * c * bs * D * elem
        n = max(1, min(items - start, budget // per_item))
        item = order[start : start + n]
        start += n
        bh, t = item // nt, item % nt
        blk = indices[item, :c]  # [n, c]; padding id nb -> all-pad block
        kpos = key_pos[blk].view(n, c * bs)
        qi = qb[bh[:, None], row_pos[t]]  # [n, tm, D]
        kg = kb[bh[:, None], kpos]  # [n, c*bs, D]
        vg = vb[bh[:, None], kpos]
        logits = torch.bmm(qi, kg.transpose(1, 2)).to(acc)
        allowed = (kpos != S)[:, None, :]
        if row_mask is not None:
            rows = row_pos[t].clamp_max(S - 1)
            chosen = row_mask[bh[:, None, None], rows[:, :, None], blk.clamp_max(nb - 1)[:, None, :]]
            allowed = allowed & chosen.repeat_interleave(bs, dim=2)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if L:
            logits = torch.cat([logits, torch.bmm(qi, tk[bh].transpose(1, 2)).to(acc)], 2)
        lse = torch.logsumexp(logits, dim=-1)  # [n, tm]
        p = torch.exp(logits - lse[..., None]).to(cdt)
        o = torch.bmm(p[..., : c * bs], vg)
        if L:
            o = o + torch.bmm(p[..., c * bs :], tv[bh])
        outs.append(o)
        lses.append(lse)
        out_rows.append(bh[:, None] * (S + 1) + row_out[t])

    flat_rows = torch.cat(out_rows).view(-1)
    out = torch.zeros(B * H * (S + 1), D, device=dev, dtype=cdt)
    out = out.index_put((flat_rows,), torch.cat(outs).view(-1, D))
    lse = torch.zeros(B * H * (S + 1), device=dev, dtype=acc)
    lse = lse.index_put((flat_rows,), torch.cat(lses).view(-1))
    out = out.view(B, H, S + 1, D)[:, :, :S].index_select(2, part.inverse)
    lse = lse.view(B, H, S + 1)[:, :, :S].index_select(2, part.inverse)
    return out.transpose(1, 2).to(q.dtype), lse.float()
