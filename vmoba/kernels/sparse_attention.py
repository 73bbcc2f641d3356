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
    part = selection.partition
    cdt = _compute_dtype(q)

    def blocked(x: torch.Tensor) -> torch.Tensor:  # [B*H, S + 1, D], a zero row at position S
        xb = x.index_select(1, part.order).transpose(1, 2).to(cdt).reshape(B * H, S, D)
        return torch.cat([xb, xb.new_zeros(B * H, 1, D)], 1)

    def heads_first(x):
        return None if x is None else x.transpose(1, 2).to(cdt).reshape(B * H, x.shape[1], D)

    qb, kb, vb = blocked(q * scale), blocked(k), blocked(v)
    tk, tv = heads_first(text_k), heads_first(text_v)
    budget = memory_budget_mb << 20
    if selection.granularity == "token":
        out, lse = _attend_by_key_block(qb, kb, vb, tk, tv, selection, budget)
    else:
        out, lse = _attend_by_query_tile(qb, kb, vb, tk, tv, selection, budget)
    out = out.view(B, H, S, D).index_select(2, part.inverse)
    lse = lse.view(B, H, S).index_select(2, part.inverse)
    return out.transpose(1, 2).to(q.dtype), lse.float()


def _softmax_stats(logits: torch.Tensor, acc: torch.dtype, cdt: torch.dtype):
    """Normalised probabilities (in ``cdt``) and the log-sum-exp of each row.

    One fused softmax plus two max passes: the largest probability belongs to the largest logit, so
    ``lse = max(logits) - log(max(p))``; ``max(p) >= 1/n`` cannot underflow, and the gradient of this
    expression with respect to the logits is ``p``, exactly that of a log-sum-exp.
    """
    logits = logits.to(acc)
    p = torch.softmax(logits, dim=-1)
    lse = logits.amax(-1) - torch.log(p.amax(-1))
    return p.to(cdt), lse


def _attend_by_query_tile(qb, kb, vb, tk, tv, selection: BlockSelection, budget: int):
    """Tile granularity: one item per (batch*head, query tile) over the blocks the tile selected."""
    BH, S1, D = qb.shape
    S = S1 - 1
    part, tiles = selection.partition, selection.tiles
    nb, bs, nt, tm = part.num_blocks, part.max_block_size, tiles.num_tiles, tiles.max_tile
    dev, cdt = qb.device, qb.dtype
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    key_pos = _padded_ranges(tuple(part.offsets.tolist()), bs, S, str(dev), False)  # [nb + 1, bs]
    tile_offsets = tuple(tiles.offsets.tolist())
    row_pos = _padded_ranges(tile_offsets, tm, S, str(dev), True)[:nt]  # [nt, tm], pads repeat a real row
    row_out = _padded_ranges(tile_offsets, tm, S, str(dev), False)[:nt]  # pads write to the dummy row
    ragged = bool((part.sizes < bs).any())
    L = 0 if tk is None else tk.shape[1]

    indices, counts = selection.kv_lists()
    width = indices.shape[-1]
    indices = indices.view(-1, width).long()
    counts = counts.view(-1)
    order = torch.argsort(counts, descending=True, stable=True)
    sorted_counts = counts[order].tolist()
    elem = torch.finfo(cdt).bits // 8

    outs, lses, out_rows = [], [], []
    start, items = 0, order.numel()
    while start < items:
        c = max(1, sorted_counts[start])
        per_item = tm * (c * bs + L) * (3 * 4 + elem) + 2 * c * bs * D * elem
        n = max(1, min(items - start, budget // per_item))
        item = order[start : start + n]
        padded = ragged or sorted_counts[start + n - 1] < c  # a shorter list in the chunk pads with id nb
        start += n
        bh, t = item // nt, item % nt
        kpos = key_pos[indices[item, :c]].view(n, c * bs)  # padding id nb -> an all-pad block
        qi = qb[bh[:, None], row_pos[t]]  # [n, tm, D]
        logits = torch.bmm(qi, kb[bh[:, None], kpos].transpose(1, 2))
        if padded:
            logits = logits.masked_fill((kpos == S)[:, None, :], float("-inf"))
        if L:
            logits = torch.cat([logits, torch.bmm(qi, tk[bh].transpose(1, 2))], 2)
        p, lse = _softmax_stats(logits, acc, cdt)
        o = torch.bmm(p[..., : c * bs], vb[bh[:, None], kpos])
        if L:
            o = o + torch.bmm(p[..., c * bs :], tv[bh])
        outs.append(o)
        lses.append(lse)
        out_rows.append(bh[:, None] * S1 + row_out[t])

    flat_rows = torch.cat(out_rows).view(-1)
    out = qb.new_zeros(BH * S1, D).index_put((flat_rows,), torch.cat(outs).view(-1, D))
    lse = torch.zeros(BH * S1, device=dev, dtype=acc).index_put((flat_rows,), torch.cat(lses).view(-1))
    return out.view(BH, S1, D)[:, :S], lse.view(BH, S1)[:, :S]


def _attend_by_key_block(qb, kb, vb, tk, tv, selection: BlockSelection, budget: int):
    """Token granularity: one item per (batch*head, key block, run of the queries that chose it).

    Work is exactly the selected pairs. Each item yields a partial output normalised over its block and
    that block's log-sum-exp; partials of one query are merged with the usual running-max rescaling. The
    running max is a constant for autograd: the merged result does not depend on it.
    """
    BH, S1, D = qb.shape
    S = S1 - 1
    part = selection.partition
    nb, bs = part.num_blocks, part.max_block_size
    dev, cdt = qb.device, qb.dtype
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    elem = torch.finfo(cdt).bits // 8
    key_pos = _padded_ranges(tuple(part.offsets.tolist()), bs, S, str(dev), False)  # [nb + 1, bs]
    ragged = bool((part.sizes < bs).any())
    L = 0 if tk is None else tk.shape[1]
    # largest run of queries one item may take, so its logits stay within a quarter of the budget
    run = max(1, budget // (4 * max(bs, L, 1) * (3 * 4 + elem)))

    row_mask = selection.mask.reshape(BH, S, nb)
    outs, lses = [], []
    for bh in range(BH):
        chosen = row_mask[bh].t()  # [nb, S]
        blk, qry = chosen.nonzero(as_tuple=True)  # grouped by block, queries ascending
        count = torch.bincount(blk, minlength=nb)
        group_start = torch.cumsum(count, 0) - count
        # items: runs of at most `run` queries of one block, widest first
        n_runs = (count + run - 1) // run
        item_blk = torch.repeat_interleave(torch.arange(nb, device=dev), n_runs)
        first = torch.cumsum(n_runs, 0) - n_runs
        item_rank = torch.arange(item_blk.numel(), device=dev) - first[item_blk]
        item_start = group_start[item_blk] + item_rank * run
        item_len = torch.minimum(count[item_blk] - item_rank * run, torch.tensor(run, device=dev))
        item_order = torch.argsort(item_len, descending=True, stable=True)
        lens = item_len[item_order].tolist()

        m_run = torch.full((S,), float("-inf"), device=dev, dtype=acc)
        z_run = torch.zeros(S, device=dev, dtype=acc)
        o_run = torch.zeros(S, D, device=dev, dtype=acc)

        def merge(rows, part_lse, part_out):
            nonlocal m_run, z_run, o_run
            m_new = m_run.index_reduce(0, rows, part_lse.detach(), "amax")
            keep = torch.exp(m_run - m_new).nan_to_num_(0.0)  # -inf - -inf before a query's first partial
            w = torch.exp(part_lse - m_new[rows])
            z_run = (z_run * keep).index_add(0, rows, w)
            o_run = (o_run * keep[:, None]).index_add(0, rows, w[:, None] * part_out.to(acc))
            m_run = m_new

        start, items = 0, item_order.numel()
        while start < items:
            width = lens[start]
            n = max(1, min(items - start, budget // (width * bs * (3 * 4 + elem) + 2 * bs * D * elem)))
            it = item_order[start : start + n]
            start += n
            slot = torch.arange(width, device=dev)
            valid = slot[None, :] < item_len[it][:, None]  # [n, width]
            rows = qry[(item_start[it][:, None] + slot).clamp_max(qry.numel() - 1)]  # [n, width]
            kpos = key_pos[item_blk[it]]  # [n, bs]
            logits = torch.bmm(qb[bh][rows], kb[bh][kpos].transpose(1, 2))
            if ragged:
                logits = logits.masked_fill((kpos == S)[:, None, :], float("-inf"))
            p, lse = _softmax_stats(logits, acc, cdt)
            o = torch.bmm(p, vb[bh][kpos])
            merge(rows[valid], lse[valid], o[valid])
        if L:
            for r0 in range(0, S, run):
                r1 = min(S, r0 + run)
                p, lse = _softmax_stats(qb[bh, r0:r1] @ tk[bh].t(), acc, cdt)
                merge(torch.arange(r0, r1, device=dev), lse, p @ tv[bh])
        outs.append(o_run / z_run[:, None])
        lses.append(m_run + torch.log(z_run))
    return torch.stack(outs).to(cdt), torch.stack(lses)
