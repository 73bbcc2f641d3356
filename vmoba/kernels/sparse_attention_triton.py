"""Triton block-sparse flash attention, forward and backward, over a `BlockSelection`.

Same math and signature as `block_sparse_attention_torch` (sparse_attention.py), its reference.

Queries, keys and values are copied once into blocked, head-major order ``[B*H, S, D]`` so that every key
block is a contiguous range; text keys (always attended) are appended as one more segment. The kernels see
only the work lists of `work_lists.py`. LSE is kept in the log2 domain of the scaled logits inside.

Tile granularity (every query of a tile shares its block list): ``_tile_fwd`` and ``_tile_bwd_dq`` walk a
tile's key chunks with online softmax. A flat loop over key chunks keeps loops long even when blocks are
small.

Token granularity (the paper's per-query rule): queries are grouped by key block, so the work is exactly
the selected pairs. ``_pair_fwd`` attends one run of queries to one whole block and writes a partial
output and LSE per pair; ``_pair_merge`` combines the partials of each query. Backward: ``_pair_bwd_dq``
writes per-pair partial dQ (summed by ``_pair_sum``). Partials cost ``pairs x D`` extra memory.

dK/dV, one kernel for both (``_bwd_dkdv``): for one key chunk, every run of queries that selected its
block, a run being a tile's query chunk (contiguous rows) or an item of the pair lists (gathered rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layout import BlockSelection
from . import work_lists as wl
from ._triton import INTERPRET, new_empty, tl, triton

LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _online_step(q, k_ptrs, v_ptrs, kv_mask, valid, m_i, l_i, acc, qk_scale, PRECISION: tl.constexpr):
        """One key chunk of online softmax; rows with no valid key so far keep m = -inf safely."""
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        return m_new, l_i * alpha + tl.sum(p, 1), acc

    @triton.jit
    def _grad_step(q, do, lse, delta, k_ptrs, v_ptrs, kv_mask, valid, qk_scale, PRECISION: tl.constexpr):
        """Probabilities and dS of one (query run, key chunk) tile, from the final LSE."""
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        ds = p * (tl.dot(do, tl.trans(v), input_precision=PRECISION) - delta[:, None])
        return k, p, ds

    # -- tile granularity ----------------------------------------------------------------------------

    @triton.jit
    def _tile_fwd(
        Q, K, V, O, LSE, TILE_OFF, TABLE, COUNT, CH_START, CH_END,
        S, SK, n_tiles, width, qk_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLITS: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        t = pid // SPLITS
        row0 = tl.load(TILE_OFF + t) + (pid % SPLITS) * BLOCK_M
        t_end = tl.load(TILE_OFF + t + 1)
        if row0 < t_end:
            rows = row0 + tl.arange(0, BLOCK_M)
            row_ok = rows < t_end
            d = tl.arange(0, BLOCK_D)
            d_ok = d < D
            io = (bh * S + rows[:, None]) * D + d[None, :]
            q = tl.load(Q + io, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            row_of_table = (bh * n_tiles + t) * width
            for i in range(tl.load(COUNT + bh * n_tiles + t)):
                c = tl.load(TABLE + row_of_table + i)
                cols = tl.load(CH_START + c) + tl.arange(0, BLOCK_N)
                col_ok = cols < tl.load(CH_END + c)
                kv = (bh * SK + cols[:, None]) * D + d[None, :]
                m_i, l_i, acc = _online_step(q, K + kv, V + kv, col_ok[:, None] & d_ok[None, :], col_ok[None, :],
                                             m_i, l_i, acc, qk_scale, PRECISION)
            l_safe = tl.where(l_i == 0.0, 1.0, l_i)
            tl.store(O + io, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
            tl.store(LSE + bh * S + rows, m_i + tl.log2(l_safe), mask=row_ok)

    @triton.jit
    def _tile_bwd_dq(
        Q, K, V, DO, LSE, DELTA, DQ, TILE_OFF, TABLE, COUNT, CH_START, CH_END,
        S, SK, n_tiles, width, qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLITS: tl.constexpr, PRECISION: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        t = pid // SPLITS
        row0 = tl.load(TILE_OFF + t) + (pid % SPLITS) * BLOCK_M
        t_end = tl.load(TILE_OFF + t + 1)
        if row0 < t_end:
            rows = row0 + tl.arange(0, BLOCK_M)
            row_ok = rows < t_end
            d = tl.arange(0, BLOCK_D)
            d_ok = d < D
            io = (bh * S + rows[:, None]) * D + d[None, :]
            io_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + io, mask=io_mask, other=0.0)
            do = tl.load(DO + io, mask=io_mask, other=0.0)
            lse = tl.load(LSE + bh * S + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + bh * S + rows, mask=row_ok, other=0.0)
            dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            row_of_table = (bh * n_tiles + t) * width
            for i in range(tl.load(COUNT + bh * n_tiles + t)):
                c = tl.load(TABLE + row_of_table + i)
                cols = tl.load(CH_START + c) + tl.arange(0, BLOCK_N)
                col_ok = cols < tl.load(CH_END + c)
                kv = (bh * SK + cols[:, None]) * D + d[None, :]
                k, p, ds = _grad_step(q, do, lse, delta, K + kv, V + kv, col_ok[:, None] & d_ok[None, :],
                                      col_ok[None, :] & row_ok[:, None], qk_scale, PRECISION)
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            tl.store(DQ + io, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)

    # -- token granularity: queries grouped by key block ---------------------------------------------

    @triton.jit
    def _pair_rows(ITEM_GROUP, ITEM_START, ITEM_LEN, ITEM_SLOTS, PAIR_ROW, item, n_seg, BLOCK_M: tl.constexpr):
        group = tl.load(ITEM_GROUP + item)
        i = tl.arange(0, BLOCK_M)
        ok = i < tl.load(ITEM_LEN + item)
        slot = tl.load(ITEM_SLOTS + tl.load(ITEM_START + item) + i, mask=ok, other=0).to(tl.int64)
        row = tl.load(PAIR_ROW + slot, mask=ok, other=0)
        return (group // n_seg).to(tl.int64), group % n_seg, slot, row, ok

    @triton.jit
    def _pair_fwd(
        Q, K, V, PO, PLSE, SEG_OFF, ITEM_GROUP, ITEM_START, ITEM_LEN, ITEM_SLOTS, PAIR_ROW,
        S, SK, n_seg, qk_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        bh, seg, slot, row, ok = _pair_rows(ITEM_GROUP, ITEM_START, ITEM_LEN, ITEM_SLOTS, PAIR_ROW,
                                            tl.program_id(0), n_seg, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        q = tl.load(Q + (bh * S + row[:, None]) * D + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        seg_end = tl.load(SEG_OFF + seg + 1)
        for start in range(tl.load(SEG_OFF + seg), seg_end, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < seg_end
            kv = (bh * SK + cols[:, None]) * D + d[None, :]
            m_i, l_i, acc = _online_step(q, K + kv, V + kv, col_ok[:, None] & d_ok[None, :], col_ok[None, :],
                                         m_i, l_i, acc, qk_scale, PRECISION)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        tl.store(PO + slot[:, None] * D + d[None, :], (acc / l_safe[:, None]).to(PO.dtype.element_ty),
                 mask=ok[:, None] & d_ok[None, :])
        tl.store(PLSE + slot, m_i + tl.log2(l_safe), mask=ok)

    @triton.jit
    def _pair_merge(
        PO, PLSE, QUERY_PTR, O, LSE, M_RUN, L_RUN, ACC_RUN, S,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    ):
        """Merge each query's partials into its running (max, sum, weighted output): FIRST starts from
        nothing, LAST normalises and writes the output, others keep the state for the next segment group."""
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < S
        first = tl.load(QUERY_PTR + bh * S + rows, mask=row_ok, other=0)
        count = tl.load(QUERY_PTR + bh * S + rows + 1, mask=row_ok, other=0) - first
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        io = (bh * S + rows[:, None]) * D + d[None, :]
        io_mask = row_ok[:, None] & d_ok[None, :]
        if FIRST:
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        else:
            m_i = tl.load(M_RUN + bh * S + rows, mask=row_ok, other=float("-inf"))
            l_i = tl.load(L_RUN + bh * S + rows, mask=row_ok, other=0.0)
            acc = tl.load(ACC_RUN + io, mask=io_mask, other=0.0)
        for j in range(tl.max(count, 0)):
            has = j < count
            slot = (first + j).to(tl.int64)
            lse_p = tl.load(PLSE + slot, mask=has, other=float("-inf"))
            o_p = tl.load(PO + slot[:, None] * D + d[None, :], mask=has[:, None] & d_ok[None, :], other=0.0)
            m_new = tl.maximum(m_i, lse_p)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            w = tl.exp2(lse_p - m_safe)
            l_i = l_i * alpha + w
            acc = acc * alpha[:, None] + w[:, None] * o_p.to(tl.float32)
            m_i = m_new
        if LAST:
            l_safe = tl.where(l_i == 0.0, 1.0, l_i)
            tl.store(O + io, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=io_mask)
            tl.store(LSE + bh * S + rows, m_i + tl.log2(l_safe), mask=row_ok)
        else:
            tl.store(M_RUN + bh * S + rows, m_i, mask=row_ok)
            tl.store(L_RUN + bh * S + rows, l_i, mask=row_ok)
            tl.store(ACC_RUN + io, acc, mask=io_mask)

    @triton.jit
    def _pair_bwd_dq(
        Q, K, V, DO, LSE, DELTA, PDQ, SEG_OFF, ITEM_GROUP, ITEM_START, ITEM_LEN, ITEM_SLOTS, PAIR_ROW,
        S, SK, n_seg, qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        bh, seg, slot, row, ok = _pair_rows(ITEM_GROUP, ITEM_START, ITEM_LEN, ITEM_SLOTS, PAIR_ROW,
                                            tl.program_id(0), n_seg, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        io = (bh * S + row[:, None]) * D + d[None, :]
        io_mask = ok[:, None] & d_ok[None, :]
        q = tl.load(Q + io, mask=io_mask, other=0.0)
        do = tl.load(DO + io, mask=io_mask, other=0.0)
        lse = tl.load(LSE + bh * S + row, mask=ok, other=0.0)
        delta = tl.load(DELTA + bh * S + row, mask=ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        seg_end = tl.load(SEG_OFF + seg + 1)
        for start in range(tl.load(SEG_OFF + seg), seg_end, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < seg_end
            kv = (bh * SK + cols[:, None]) * D + d[None, :]
            k, p, ds = _grad_step(q, do, lse, delta, K + kv, V + kv, col_ok[:, None] & d_ok[None, :],
                                  col_ok[None, :] & ok[:, None], qk_scale, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        tl.store(PDQ + slot[:, None] * D + d[None, :], dq * sm_scale, mask=io_mask)

    @triton.jit
    def _pair_sum(
        PDQ, QUERY_PTR, DQ, DQ_RUN, S,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, FIRST: tl.constexpr, LAST: tl.constexpr,
    ):
        bh = tl.program_id(1).to(tl.int64)
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < S
        first = tl.load(QUERY_PTR + bh * S + rows, mask=row_ok, other=0)
        count = tl.load(QUERY_PTR + bh * S + rows + 1, mask=row_ok, other=0) - first
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        io = (bh * S + rows[:, None]) * D + d[None, :]
        io_mask = row_ok[:, None] & d_ok[None, :]
        if FIRST:
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        else:
            acc = tl.load(DQ_RUN + io, mask=io_mask, other=0.0)
        for j in range(tl.max(count, 0)):
            has = j < count
            slot = (first + j).to(tl.int64)
            acc += tl.load(PDQ + slot[:, None] * D + d[None, :], mask=has[:, None] & d_ok[None, :], other=0.0)
        if LAST:
            tl.store(DQ + io, acc.to(DQ.dtype.element_ty), mask=io_mask)
        else:
            tl.store(DQ_RUN + io, acc, mask=io_mask)

    # -- dK/dV, both granularities --------------------------------------------------------------------

    @triton.jit
    def _bwd_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV, CH_START, CH_END, CH_SEG, RUNS, RUN_COUNT, RUN_START, RUN_LEN,
        ITEM_SLOTS, PAIR_ROW,
        S, SK, n_seg, width, qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr, GATHER: tl.constexpr,
    ):
        """dK and dV of one key chunk: every *run* of at most BLOCK_M queries that selected its segment.

        Tile granularity (GATHER false): a run is a query chunk, rows ``RUN_START[r] + i`` for
        ``i < RUN_LEN[r]``; the runs of (batch*head, segment) ``g`` are ``RUNS[g * width + i]`` for
        ``i < RUN_COUNT[g]``. Token granularity (GATHER): a run is an item of the pair lists, rows
        ``PAIR_ROW[ITEM_SLOTS[RUN_START[r] + i]]``; the items of ``g`` are ``RUN_COUNT[g] .. RUN_COUNT[g + 1]``
        (consecutive), and RUNS is unused."""
        c = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        seg = tl.load(CH_SEG + c)
        cols = tl.load(CH_START + c) + tl.arange(0, BLOCK_N)
        col_ok = cols < tl.load(CH_END + c)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        kv = (bh * SK + cols[:, None]) * D + d[None, :]
        kv_mask = col_ok[:, None] & d_ok[None, :]
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        group = bh * n_seg + seg
        if GATHER:
            first = tl.load(RUN_COUNT + group)
            n_runs = tl.load(RUN_COUNT + group + 1) - first
        else:
            first = group * width
            n_runs = tl.load(RUN_COUNT + group)
        i = tl.arange(0, BLOCK_M)
        for j in range(n_runs):
            if GATHER:
                run = first + j
                ok = i < tl.load(RUN_LEN + run)
                slot = tl.load(ITEM_SLOTS + tl.load(RUN_START + run) + i, mask=ok, other=0).to(tl.int64)
                rows = tl.load(PAIR_ROW + slot, mask=ok, other=0)
            else:
                run = tl.load(RUNS + first + j)
                ok = i < tl.load(RUN_LEN + run)
                rows = tl.load(RUN_START + run) + i
            io = (bh * S + rows[:, None]) * D + d[None, :]
            io_mask = ok[:, None] & d_ok[None, :]
            q = tl.load(Q + io, mask=io_mask, other=0.0)
            do = tl.load(DO + io, mask=io_mask, other=0.0)
            lse = tl.load(LSE + bh * S + rows, mask=ok, other=0.0)
            delta = tl.load(DELTA + bh * S + rows, mask=ok, other=0.0)
            k, p, ds = _grad_step(q, do, lse, delta, K + kv, V + kv, kv_mask, col_ok[None, :] & ok[:, None],
                                  qk_scale, PRECISION)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        tl.store(DK + kv, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv, dv.to(DV.dtype.element_ty), mask=kv_mask)


# -- launch configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_configs(head_dim: int, dtype: torch.dtype, block_size: int | None = None) -> tuple[KernelConfig, KernelConfig]:
    """(forward, backward) launch configurations, from the sweep of benchmarks/attention_gpu.py on an H200.

    Blocks whose size leaves half a 64-key chunk empty (the 3D default: 4x6x4 = 96 keys) run the forward
    with 32-key chunks (17% faster there). float32 and the interpreter get small tiles, so tests cross
    several of them."""
    if INTERPRET or dtype == torch.float32:
        small = KernelConfig(16, 16, 1, 1)
        return small, small
    block_n = 32 if block_size is not None and 0 < block_size % 64 <= 32 else 64
    return KernelConfig(64, block_n, 4, 3), KernelConfig(64, 64, 4, 2)


def _precision(dtype: torch.dtype) -> str | None:
    """float32 runs exact (IEEE) products, as the reference does; 16-bit inputs use the default."""
    return "ieee" if dtype == torch.float32 else None


def _meta(D: int, dtype: torch.dtype, cfg: KernelConfig) -> dict:
    return dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                PRECISION=_precision(dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# -- forward and backward drivers ----------------------------------------------------------------------


def _tile_forward(qb, kb, vb, selection, L, scale, cfg):
    BH, S, D = qb.shape
    tiles = selection.tiles
    lists = wl.tile_lists(selection, L, cfg.block_n)
    ob = new_empty(BH, S, D, dtype=qb.dtype, device=qb.device)
    lse = new_empty(BH, S, dtype=torch.float32, device=qb.device)
    splits = triton.cdiv(tiles.max_tile, cfg.block_m)
    _tile_fwd[(tiles.num_tiles * splits, BH)](
        qb, kb, vb, ob, lse, tiles.offsets_i32, lists.table, lists.count,
        lists.chunks.start, lists.chunks.end, S, kb.shape[1], tiles.num_tiles, lists.table.shape[1], scale * LOG2E,
        SPLITS=splits, **_meta(D, qb.dtype, cfg),
    )
    return ob, lse


def _tile_backward(qb, kb, vb, dob, lse, delta, selection, L, scale, cfg):
    BH, S, D = qb.shape
    tiles = selection.tiles
    lists = wl.tile_lists(selection, L, cfg.block_n)
    dq = new_empty(*qb.shape, dtype=qb.dtype, device=qb.device)
    dk = new_empty(*kb.shape, dtype=kb.dtype, device=kb.device)
    dv = new_empty(*vb.shape, dtype=vb.dtype, device=vb.device)
    meta = _meta(D, qb.dtype, cfg)
    splits = triton.cdiv(tiles.max_tile, cfg.block_m)
    _tile_bwd_dq[(tiles.num_tiles * splits, BH)](
        qb, kb, vb, dob, lse, delta, dq, tiles.offsets_i32, lists.table, lists.count,
        lists.chunks.start, lists.chunks.end, S, kb.shape[1], tiles.num_tiles, lists.table.shape[1],
        scale * LOG2E, scale,
        SPLITS=splits, **meta,
    )
    rev = wl.tile_reverse_lists(selection, L, cfg.block_m)
    keys = lists.chunks
    _bwd_dkdv[(keys.start.numel(), BH)](
        qb, kb, vb, dob, lse, delta, dk, dv, keys.start, keys.end, keys.segment, rev.table, rev.count,
        rev.queries.start, rev.queries.length, rev.table, rev.table, S, kb.shape[1], lists.n_seg, rev.table.shape[1],
        scale * LOG2E, scale, GATHER=False, **meta,
    )
    return dq, dk, dv


def _pair_args(lists: wl.PairLists):
    return (lists.seg_offsets, lists.item_group, lists.item_start, lists.item_len, lists.item_slots, lists.pair_row)


# Per-pair partials take pairs x D memory; segments are processed in groups that keep them under this size.
PAIR_BUFFER_BYTES = 2 << 30


def _pair_groups(selection, L, D):
    return wl.segment_groups(selection, L, max(1, PAIR_BUFFER_BYTES // (4 * D + 4)))


def _pair_forward(qb, kb, vb, selection, L, scale, cfg):
    BH, S, D = qb.shape
    meta = _meta(D, qb.dtype, cfg)
    ob = new_empty(BH, S, D, dtype=qb.dtype, device=qb.device)
    lse = new_empty(BH, S, dtype=torch.float32, device=qb.device)
    groups = _pair_groups(selection, L, D)
    state = (lse, lse, ob)  # placeholders: a single group never reads or writes the running state
    if len(groups) > 1:
        state = (torch.empty_like(lse), torch.empty_like(lse), torch.empty(BH, S, D, device=qb.device))
    for g, segments in enumerate(groups):
        lists = wl.pair_lists(selection, L, cfg.block_m, segments)
        partial_o = new_empty(lists.num_pairs, D, dtype=qb.dtype, device=qb.device)
        partial_lse = new_empty(lists.num_pairs, dtype=torch.float32, device=qb.device)
        _pair_fwd[(lists.item_group.numel(),)](
            qb, kb, vb, partial_o, partial_lse, *_pair_args(lists), S, kb.shape[1], lists.n_seg, scale * LOG2E,
            **meta,
        )
        _pair_merge[(triton.cdiv(S, cfg.block_m), BH)](
            partial_o, partial_lse, lists.query_ptr, ob, lse, *state, S,
            D=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=cfg.block_m, FIRST=g == 0, LAST=g == len(groups) - 1,
            num_warps=cfg.num_warps,
        )
    return ob, lse


def _pair_backward(qb, kb, vb, dob, lse, delta, selection, L, scale, cfg):
    BH, S, D = qb.shape
    meta = _meta(D, qb.dtype, cfg)
    dq = new_empty(*qb.shape, dtype=qb.dtype, device=qb.device)
    dk = new_empty(*kb.shape, dtype=kb.dtype, device=kb.device)
    dv = new_empty(*vb.shape, dtype=vb.dtype, device=vb.device)
    groups = _pair_groups(selection, L, D)
    dq_run = dq if len(groups) == 1 else torch.empty(BH, S, D, device=qb.device)
    for g, segments in enumerate(groups):
        lists = wl.pair_lists(selection, L, cfg.block_m, segments)
        partial_dq = new_empty(lists.num_pairs, D, dtype=torch.float32, device=qb.device)
        _pair_bwd_dq[(lists.item_group.numel(),)](
            qb, kb, vb, dob, lse, delta, partial_dq, *_pair_args(lists), S, kb.shape[1], lists.n_seg,
            scale * LOG2E, scale, **meta,
        )
        _pair_sum[(triton.cdiv(S, cfg.block_m), BH)](
            partial_dq, lists.query_ptr, dq, dq_run, S, D=D, BLOCK_D=meta["BLOCK_D"], BLOCK_M=cfg.block_m,
            FIRST=g == 0, LAST=g == len(groups) - 1, num_warps=cfg.num_warps,
        )
        keys = wl.chunks(lists.host_offsets, cfg.block_n, str(qb.device))  # chunks of this group's segments only
        _bwd_dkdv[(keys.start.numel(), BH)](
            qb, kb, vb, dob, lse, delta, dk, dv, keys.start, keys.end, keys.segment, lists.group_items,
            lists.group_items, lists.item_start, lists.item_len, lists.item_slots, lists.pair_row,
            S, kb.shape[1], lists.n_seg, 0, scale * LOG2E, scale, GATHER=True, **meta,
        )
    return dq, dk, dv


# -- the autograd function -------------------------------------------------------------------------------------


def _blocked(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    B, S, H, D = x.shape
    return x.index_select(1, order).transpose(1, 2).reshape(B * H, S, D).contiguous()


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    B, L, H, D = x.shape
    return x.transpose(1, 2).reshape(B * H, L, D)


def _blocked_inputs(q, k, v, text_k, text_v, order):
    """q, k, v in blocked head-major order, the text keys and values appended as the last segment."""
    qb, kb, vb = _blocked(q, order), _blocked(k, order), _blocked(v, order)
    if text_k is not None:
        kb = torch.cat([kb, _heads_first(text_k)], 1).contiguous()
        vb = torch.cat([vb, _heads_first(text_v)], 1).contiguous()
    return qb, kb, vb


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, selection: BlockSelection, scale: float, configs):
        B, S, H, D = q.shape
        part = selection.partition
        L = 0 if text_k is None else text_k.shape[1]
        qb, kb, vb = _blocked_inputs(q, k, v, text_k, text_v, part.order)
        forward = _pair_forward if selection.granularity == "token" else _tile_forward
        ob, lse = forward(qb, kb, vb, selection, L, scale, configs[0])
        ctx.save_for_backward(qb, kb, vb, ob, lse)
        ctx.selection, ctx.scale, ctx.configs, ctx.shape, ctx.L = selection, scale, configs, (B, S, H, D), L
        ctx.set_materialize_grads(False)
        out = ob.view(B, H, S, D).index_select(2, part.inverse).transpose(1, 2)
        return out, lse.view(B, H, S).index_select(2, part.inverse) / LOG2E

    @staticmethod
    def backward(ctx, dout, dlse):
        qb, kb, vb, ob, lse = ctx.saved_tensors
        grads = _backward_blocked(qb, kb, vb, ob, lse, dout, dlse, ctx.selection, ctx.L, ctx.scale, ctx.configs[1],
                                  ctx.shape)
        return (*grads, None, None, None)


def _backward_blocked(qb, kb, vb, ob, lse, dout, dlse, selection, L, scale, cfg, shape):
    """(dq, dk, dv, dtext_k, dtext_v) from the blocked tensors of the forward (``lse`` in the log2 domain)."""
    B, S, H, D = shape
    order = selection.partition.order
    if dout is None:
        dob = torch.zeros_like(qb)
        delta = torch.zeros_like(lse)
    else:
        dob = _blocked(dout.to(qb.dtype), order)
        delta = (dob.float() * ob.float()).sum(-1)  # [B*H, S]
    if dlse is not None:  # d lse / d logits = p, so an lse gradient folds into delta
        delta = delta - _blocked(dlse.transpose(1, 2).unsqueeze(-1), order).squeeze(-1).float()
    backward = _pair_backward if selection.granularity == "token" else _tile_backward
    dq, dk, dv = backward(qb, kb, vb, dob, lse, delta, selection, L, scale, cfg)

    def original(x):
        return x.view(B, H, S, D).index_select(2, selection.partition.inverse).transpose(1, 2)

    dtext_k = dtext_v = None
    if L:
        dtext_k = dk[:, S:].view(B, H, L, D).transpose(1, 2)
        dtext_v = dv[:, S:].view(B, H, L, D).transpose(1, 2)
    return original(dq), original(dk[:, :S]), original(dv[:, :S]), dtext_k, dtext_v


def block_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    selection: BlockSelection,
    scale: float,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    configs: tuple[KernelConfig, KernelConfig] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `block_sparse_attention_torch`: ``(out (B, S, H, D), lse (B, H, S) float32)``."""
    if configs is None:
        configs = default_configs(q.shape[-1], q.dtype, selection.partition.max_block_size)
    return _BlockSparseAttention.apply(q, k, v, text_k, text_v, selection, float(scale), configs)


def block_sparse_attention_triton_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    selection: BlockSelection,
    scale: float,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    configs: tuple[KernelConfig, KernelConfig] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gradients of `block_sparse_attention_triton` from its inputs and outputs, without autograd (for the
    custom op's backward): ``(dq, dk, dv, dtext_k, dtext_v)``, the text gradients None without text keys."""
    if configs is None:
        configs = default_configs(q.shape[-1], q.dtype, selection.partition.max_block_size)
    order = selection.partition.order
    qb, kb, vb = _blocked_inputs(q, k, v, text_k, text_v, order)
    ob = _blocked(out, order)
    lse_b = _blocked(lse.transpose(1, 2).unsqueeze(-1), order).squeeze(-1).float() * LOG2E
    L = 0 if text_k is None else text_k.shape[1]
    return _backward_blocked(qb, kb, vb, ob, lse_b, dout, dlse, selection, L, float(scale), configs[1], tuple(q.shape))
