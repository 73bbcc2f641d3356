"""Block selection rules on a matrix of gate scores: the PyTorch reference and the fused Triton kernel.

Reference (`threshold_select`, `topk_select`): one row per selection group ([G, M] scores, own pairs marked),
exactly the rules in `vmoba.selection`'s docstring; used for every group type on any device.

Triton (`select_query_head_triton`): the ``query_head`` group fused with the gate. One program takes a few
rows of one head, computes their scores against every key block mean, and finds the cut without sorting:
the kept blocks are those whose score is at least the cut value ``v*``, the largest value whose "mass at or
above it" still reaches the target, found by bisection on the float's bit pattern (31 steps, exact);
blocks tied at ``v*`` are taken lowest index first, as the reference's stable order does.
"""

from __future__ import annotations

import torch

from ._triton import INTERPRET, new_empty, tl, triton

EPS = 1e-6
OWN_KEY = torch.iinfo(torch.int64).min
_INT32_MAGNITUDE = 0x7FFFFFFF


def _sort_keys(values: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Distinct int64 keys ordering members by value descending, then by index ascending; own pairs last."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ _INT32_MAGNITUDE, bits)  # float order -> integer order
    m = values.shape[-1]
    index_bits = max(1, (m - 1).bit_length())
    if index_bits > 31:
        raise ValueError(f"a selection group of {m} members is too large (at most 2**31)")
    key = (bits << index_bits) | ((1 << index_bits) - 1 - torch.arange(m, device=values.device))
    return key.masked_fill_(own, OWN_KEY)


def normalise_scores(scores: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation over the last dim; a flat row (max - min <= 1e-6) is divided by 1."""
    low = scores.amin(-1, keepdim=True)
    span = scores.amax(-1, keepdim=True) - low
    span = torch.where(span <= EPS, torch.ones_like(span), span)
    return (scores - low) / span


def _own_mask(own: torch.Tensor, shape) -> torch.Tensor:
    """``own`` as a [G, M] bool mask; an index tensor [G] names one own member per row."""
    if own.dtype == torch.bool:
        return own
    return torch.zeros(shape, dtype=torch.bool, device=own.device).scatter_(-1, own[:, None], True)


def threshold_select(scores: torch.Tensor, own: torch.Tensor, threshold: float, k_hint: int = 16):
    """Threshold rule on each row of ``scores`` ([G, M] float32). ``own``: [G, M] bool mask of own pairs,
    or [G] long index of each row's single own member (the query_head case, cheaper).

    Returns ``(selected [G, M] bool, k)`` where ``k`` is a good first guess of the top-k width for the
    next call on similar rows (90% of these rows needed at most that many).

    Rows take a float top-k that widens until the cut falls inside it. A tie across the cut (a kept and a
    dropped member with equal value) makes the float order ambiguous; such rows, rare except for flat
    rows, are redone with `_threshold_select_exact`, whose integer keys break ties by index.
    """
    G, M = scores.shape
    if threshold >= 1.0:
        return torch.ones(G, M, dtype=torch.bool, device=scores.device), k_hint
    n = normalise_scores(scores)
    denom = n.sum(-1) + EPS
    if own.dtype == torch.bool:
        own_mass, n_own = (n * own).sum(-1), own.sum(-1)
        ranked = n.masked_fill(own, -1.0)
    else:
        own_mass, n_own = n.gather(-1, own[:, None])[:, 0], torch.ones_like(own)
        ranked = n.scatter(-1, own[:, None], -1.0)
    remain = (threshold - own_mass / denom).clamp_min(0.0)
    n_others = M - n_own
    selected = _own_mask(own, (G, M)).clone()
    rows = None  # every row; later rounds work on the rows still open
    needed, redo = [], []
    k = max(1, min(M, k_hint))
    while True:
        sub = (lambda x: x) if rows is None else (lambda x: x[rows])  # noqa: E731
        vals, idx = sub(ranked).topk(k, dim=-1, sorted=True)
        is_other = vals >= 0
        ratio = vals.clamp_min(0.0).cumsum(-1) / sub(denom)[:, None]
        reached = (ratio >= sub(remain)[:, None]) & is_other
        any_reached = reached.any(-1)
        cut = torch.where(any_reached, reached.to(torch.uint8).argmax(-1), k - 1)
        all_seen = k >= sub(n_others)
        # the cut must sit inside the top-k (not on its last slot, whose tie partners may lie beyond it)
        done = (any_reached & ((cut < k - 1) | all_seen)) | (~any_reached & all_seen)
        after = vals.gather(-1, (cut + 1).clamp_max(k - 1)[:, None])[:, 0]
        tie = done & (cut < k - 1) & (after == vals.gather(-1, cut[:, None])[:, 0]) & (after >= 0)
        ok = done & ~tie
        take = (torch.arange(k, device=n.device) <= cut[:, None]) & is_other & ok[:, None]
        hit = torch.zeros(vals.shape[0], M, dtype=torch.bool, device=n.device).scatter_(-1, idx, take)
        all_rows = torch.arange(G, device=n.device) if rows is None else rows
        if rows is None:
            selected |= hit
        else:
            selected[rows] |= hit
        needed.append(cut[ok] + 1)
        redo.append(all_rows[tie])
        rows = all_rows[~done]
        if rows.numel() == 0:
            break
        k = min(M, 2 * k)
    redo = torch.cat(redo)
    if redo.numel():
        own_r = own[redo]
        selected[redo] = _threshold_select_exact(n[redo], _own_mask(own_r, (redo.numel(), M)), remain[redo], denom[redo])
    needed = torch.cat(needed)
    hint = int(needed.float().quantile(0.9)) + 2 if needed.numel() else k_hint
    return selected, hint


def _threshold_select_exact(n, own, remain, denom):
    """The threshold cut with integer keys (value bits, then index): exact ties, lowest index first."""
    key = _sort_keys(n, own)
    top_key, top_idx = key.sort(-1, descending=True)
    is_other = top_key != OWN_KEY
    vals = n.gather(-1, top_idx) * is_other
    reached = (vals.cumsum(-1) / denom[:, None] >= remain[:, None]) & is_other
    cut = torch.where(reached.any(-1), reached.to(torch.uint8).argmax(-1), n.shape[-1] - 1)
    take = (torch.arange(n.shape[-1], device=n.device) <= cut[:, None]) & is_other
    return own | torch.zeros_like(own).scatter_(-1, top_idx, take)


def topk_select(scores: torch.Tensor, own: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Keep the own pairs and the highest-scoring others, ``budget`` pairs per row in all (own included).
    ``own`` as in `threshold_select`."""
    own = _own_mask(own, scores.shape)
    own_count = own.sum(-1)
    take_n = torch.minimum((budget - own_count).clamp_min(0), scores.shape[-1] - own_count)
    k = int(take_n.max()) if take_n.numel() else 0
    if k == 0:
        return own.clone()
    top_idx = _sort_keys(scores, own).topk(k, dim=-1, sorted=True).indices
    take = torch.arange(k, device=scores.device) < take_n[:, None]
    return own | torch.zeros_like(own).scatter_(-1, top_idx, take)




# -- Triton: gate + query_head selection, fused ----------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _bisect(lo, hi, key, weight, other, target, min_count, STEPS: tl.constexpr):
        """Largest ``v`` in ``[lo, hi)`` per row with ``sum(weight[key >= v]) >= target`` and
        ``count(key >= v) >= min_count`` over ``other`` members (the predicate must hold at ``lo``)."""
        for _ in range(STEPS):
            mid = lo + (hi - lo) // 2
            above = other & (key >= mid[:, None])
            ok = (tl.sum(tl.where(above, weight, 0.0), 1) >= target) & (tl.sum(above.to(tl.int32), 1) >= min_count)
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid)
        return lo

    @triton.jit
    def _select_kernel(
        Q, ROW_IDX, OWN, KBAR, MASK,
        R, nb, H, stride_qb, stride_qs, stride_qh, threshold, n_take,
        D: tl.constexpr, BLOCK_D: tl.constexpr, NB: tl.constexpr, BLOCK_R: tl.constexpr,
        HAS_IDX: tl.constexpr, TOPK: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        h = bh % H
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        row_ok = rows < R
        if HAS_IDX:
            tok = tl.load(ROW_IDX + rows, mask=row_ok, other=0).to(tl.int64)
        else:
            tok = rows.to(tl.int64)
        cols = tl.arange(0, NB)
        col_ok = cols < nb
        s = tl.zeros([BLOCK_R, NB], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            qv = tl.load(Q + b * stride_qb + tok[:, None] * stride_qs + h * stride_qh + dd[None, :],
                         mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            kv = tl.load(KBAR + (bh * nb + cols[:, None]) * D + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                         other=0.0)
            s += tl.dot(qv, tl.trans(kv), input_precision=PRECISION)
        own = tl.load(OWN + rows, mask=row_ok, other=0)
        is_own = cols[None, :] == own[:, None]
        other = col_ok[None, :] & ~is_own
        if TOPK:
            bits = s.to(tl.int32, bitcast=True)
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            ones = tl.where(other, 1.0, 0.0)
            lo = tl.full([BLOCK_R], -2147483648, tl.int64)
            hi = tl.full([BLOCK_R], 2147483648, tl.int64)
            cut = _bisect(lo, hi, key, ones, other, n_take * 1.0, 1, 32)  # n_take may be a constexpr int
            above = other & (key > cut[:, None])
            need = n_take - tl.sum(above.to(tl.int32), 1)
        else:
            low = tl.min(tl.where(col_ok[None, :], s, float("inf")), 1)
            span = tl.max(tl.where(col_ok[None, :], s, float("-inf")), 1) - low
            span = tl.where(span <= 1e-6, 1.0, span)
            n = tl.where(col_ok[None, :], (s - low[:, None]) / span[:, None], 0.0)
            denom = tl.sum(n, 1) + 1e-6
            remain = tl.maximum(threshold - tl.sum(tl.where(is_own, n, 0.0), 1) / denom, 0.0)
            target = remain * denom
            key = n.to(tl.int32, bitcast=True)
            reach_all = tl.sum(tl.where(other, n, 0.0), 1) >= target
            lo = tl.zeros([BLOCK_R], tl.int64)
            hi = tl.full([BLOCK_R], 0x3F800001, tl.int64)  # just above the bits of 1.0
            cut = _bisect(lo, hi, key, n, other, target, 1, 31)
            cut = tl.where(reach_all, cut, 0)  # never reached: keep every other block (all keys >= 0)
            above = other & (key > cut[:, None])
            cut_value = cut.to(tl.int32).to(tl.float32, bitcast=True)
            short = target - tl.sum(tl.where(above, n, 0.0), 1)
            need = tl.where(cut_value > 0, tl.ceil(short / tl.where(cut_value > 0, cut_value, 1.0)), 1.0)
            need = tl.maximum(need, 1.0).to(tl.int32)
            need = tl.where(reach_all, need, nb)
        tie = other & (key == cut[:, None])
        rank = tl.cumsum(tie.to(tl.int32), 1)
        chosen = is_own | above | (tie & (rank <= need[:, None]))
        tl.store(MASK + (bh * R + rows[:, None]) * nb + cols[None, :], chosen.to(tl.int8),
                 mask=row_ok[:, None] & col_ok[None, :])


def select_query_head_triton(q_rows, row_index, own, kbar, threshold: float, topk: int | None):
    """Fused gate + ``query_head`` selection.

    q_rows: (B, S, H, D) queries read through ``row_index`` ([R] int, token granularity), or (B, H, R, D)
    tile means with ``row_index`` None. own: [R] block of each row. kbar: [B, H, nb, D] float32.
    topk: blocks per row (own included) for top-k mode, None for threshold mode.
    Returns [B, H, R, nb] bool.
    """
    B, H, nb, D = kbar.shape
    if row_index is not None:
        R = row_index.numel()
        stride_b, stride_s, stride_h = q_rows.stride(0), q_rows.stride(1), q_rows.stride(2)
    else:
        R = q_rows.shape[2]
        stride_b, stride_s, stride_h = q_rows.stride(0), q_rows.stride(2), q_rows.stride(1)
    if q_rows.stride(-1) != 1:
        raise ValueError("q rows must be contiguous in the head dimension")
    mask = new_empty(B, H, R, nb, device=kbar.device, dtype=torch.bool)
    if threshold >= 1.0 and topk is None:
        return mask.fill_(True)
    NB = max(16, triton.next_power_of_2(nb))
    # tl.dot needs at least 16 rows; the interpreter is fastest with few, wide programs
    block_r = 32 if INTERPRET else 16
    block_d = 16 if NB >= 1024 else 32  # the kbar slice [NB, block_d] float32 lives in shared memory
    n_take = 0 if topk is None else max(0, min(topk, nb) - 1)
    _select_kernel[(triton.cdiv(R, block_r), B * H)](
        q_rows, row_index if row_index is not None else own, own, kbar.contiguous(), mask.view(torch.int8),
        R, nb, H, stride_b, stride_s, stride_h, float(threshold), n_take,
        D=D, BLOCK_D=block_d, NB=NB, BLOCK_R=block_r, HAS_IDX=row_index is not None, TOPK=topk is not None,
        PRECISION="ieee", num_warps=4 if NB <= 128 else (8 if NB <= 256 else 16),  # keep rows in registers
    )
    return mask


MAX_TRITON_BLOCKS = 1024  # a program holds 16 rows' scores for every block in registers
