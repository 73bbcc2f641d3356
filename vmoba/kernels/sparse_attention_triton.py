"""Triton block-sparse flash attention, forward and backward, over a `BlockSelection`.

Same math and signature as `block_sparse_attention_torch` (sparse_attention.py), which is its reference.

Layout. Queries, keys and values are copied once into *blocked*, head-major order ``[B*H, S, D]`` so that
every key block is a contiguous range; text keys (always attended) are appended to the keys as one more
segment. The kernels never see the partition itself, only three work lists (CSR, built with torch):

* key chunks: runs of at most ``BLOCK_N`` keys inside one segment (``chunk_start/end/segment``);
* forward list: for each ``(batch*head, query tile)``, the key chunks of the segments the tile computes;
* reverse list: for each ``(batch*head, key segment)``, the query chunks (runs of at most ``BLOCK_M`` rows
  of one tile) of the tiles that compute it, for the dK/dV kernel.

A flat loop over key chunks (instead of blocks, then keys) keeps the inner loop long and pipelinable even
when blocks are small. In token granularity a tile computes the union of its queries' blocks and each row
is masked down to its own selection with ``row_mask``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..selection import BlockSelection
from ._triton import INTERPRET, new_empty, tl, triton

LOG2E = 1.4426950408889634


# -- work lists ----------------------------------------------------------------------------------------------


@dataclass
class WorkLists:
    seg_offsets: torch.Tensor  # [n_seg + 1] int32
    chunk_start: torch.Tensor  # [n_chunks] int32
    chunk_end: torch.Tensor
    chunk_seg: torch.Tensor
    fwd_ptr: torch.Tensor  # [B*H*n_tiles + 1] int32
    fwd_chunks: torch.Tensor  # [*] int32 key-chunk ids
    row_mask: torch.Tensor | None  # [B*H, S, n_seg] uint8 (token granularity)
    n_seg: int
    block_n: int


def _csr(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """int32 row pointers for entries sorted by ``groups``."""
    counts = torch.bincount(groups, minlength=n_groups)
    ptr = torch.zeros(n_groups + 1, dtype=torch.int64, device=groups.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr.to(torch.int32)


def _expand_ranges(first: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranges ``[first_i, first_i + count_i)``: (range index of each element, element value)."""
    owner = torch.repeat_interleave(torch.arange(first.numel(), device=first.device), count)
    start_of_owner = torch.cumsum(count, 0) - count
    return owner, first[owner] + torch.arange(owner.numel(), device=first.device) - start_of_owner[owner]


def build_work_lists(selection: BlockSelection, text_len: int, block_n: int) -> WorkLists:
    part, tiles = selection.partition, selection.tiles
    dev = selection.tile_mask.device
    B, H, nt, nb = selection.tile_mask.shape
    S = part.num_tokens
    seg_offsets = part.offsets
    tile_mask = selection.tile_mask
    if text_len:
        seg_offsets = torch.cat([seg_offsets, seg_offsets[-1:] + text_len])
        tile_mask = torch.cat([tile_mask, tile_mask.new_ones(B, H, nt, 1)], -1)
    n_seg = seg_offsets.numel() - 1
    seg_sizes = seg_offsets[1:] - seg_offsets[:-1]
    chunks_per_seg = (seg_sizes + block_n - 1) // block_n
    seg_first_chunk = torch.cumsum(chunks_per_seg, 0) - chunks_per_seg
    chunk_seg, chunk_rank = _expand_ranges(torch.zeros_like(chunks_per_seg), chunks_per_seg)
    chunk_start = seg_offsets[chunk_seg] + chunk_rank * block_n
    chunk_end = torch.minimum(chunk_start + block_n, seg_offsets[chunk_seg + 1])

    pair_tile, pair_seg = tile_mask.view(B * H * nt, n_seg).nonzero(as_tuple=True)  # sorted by tile
    owner, fwd_chunks = _expand_ranges(seg_first_chunk[pair_seg], chunks_per_seg[pair_seg])
    fwd_ptr = _csr(pair_tile[owner], B * H * nt)

    row_mask = None
    if selection.row_mask is not None:
        rm = selection.row_mask
        if text_len:
            rm = torch.cat([rm, rm.new_ones(B, H, S, 1)], -1)
        row_mask = rm.reshape(B * H, S, n_seg).to(torch.uint8).contiguous()
    i32 = lambda x: x.to(torch.int32).contiguous()  # noqa: E731
    return WorkLists(
        seg_offsets=i32(seg_offsets), chunk_start=i32(chunk_start), chunk_end=i32(chunk_end),
        chunk_seg=i32(chunk_seg), fwd_ptr=fwd_ptr, fwd_chunks=i32(fwd_chunks), row_mask=row_mask,
        n_seg=n_seg, block_n=block_n,
    )


def build_reverse_lists(selection: BlockSelection, lists: WorkLists, block_m: int):
    """Query chunks (``q_start, q_end, q_tile``) and, per (batch*head, segment), the chunks computing it."""
    tiles = selection.tiles
    B, H, nt, nb = selection.tile_mask.shape
    tile_sizes = tiles.offsets[1:] - tiles.offsets[:-1]
    per_tile = (tile_sizes + block_m - 1) // block_m
    q_tile, q_rank = _expand_ranges(torch.zeros_like(per_tile), per_tile)
    q_start = tiles.offsets[:-1][q_tile] + q_rank * block_m
    q_end = torch.minimum(q_start + block_m, tiles.offsets[1:][q_tile])
    tile_first_q = torch.cumsum(per_tile, 0) - per_tile

    tile_mask = selection.tile_mask
    if lists.n_seg > nb:
        tile_mask = torch.cat([tile_mask, tile_mask.new_ones(B, H, nt, 1)], -1)
    bh, seg, t = tile_mask.permute(0, 1, 3, 2).reshape(B * H, lists.n_seg, nt).nonzero(as_tuple=True)
    owner, q_chunks = _expand_ranges(tile_first_q[t], per_tile[t])
    rev_ptr = _csr((bh * lists.n_seg + seg)[owner], B * H * lists.n_seg)
    i32 = lambda x: x.to(torch.int32).contiguous()  # noqa: E731
    return i32(q_start), i32(q_end), rev_ptr, i32(q_chunks)


# -- kernels -------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _fwd_kernel(
        Q, K, V, O, LSE,
        TILE_OFF, FWD_PTR, FWD_CHUNKS, CH_START, CH_END, CH_SEG, ROW_MASK,
        S, SK, n_tiles, n_seg, qk_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLITS: tl.constexpr, TOKEN: tl.constexpr, PRECISION: tl.constexpr,
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
            q = tl.load(Q + (bh * S + rows[:, None]) * D + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            lo = tl.load(FWD_PTR + bh * n_tiles + t)
            hi = tl.load(FWD_PTR + bh * n_tiles + t + 1)
            for i in range(lo, hi):
                c = tl.load(FWD_CHUNKS + i)
                cs = tl.load(CH_START + c)
                ce = tl.load(CH_END + c)
                cols = cs + tl.arange(0, BLOCK_N)
                col_ok = cols < ce
                kv_off = (bh * SK + cols[:, None]) * D + d[None, :]
                k = tl.load(K + kv_off, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                valid = col_ok[None, :]
                if TOKEN:
                    seg = tl.load(CH_SEG + c)
                    chosen = tl.load(ROW_MASK + (bh * S + rows) * n_seg + seg, mask=row_ok, other=0)
                    valid = valid & (chosen != 0)[:, None]
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m_i - m_safe)
                p = tl.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(V + kv_off, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
                m_i = m_new
            l_safe = tl.where(l_i == 0.0, 1.0, l_i)
            out = acc / l_safe[:, None]
            tl.store(O + (bh * S + rows[:, None]) * D + d[None, :], out.to(O.dtype.element_ty),
                     mask=row_ok[:, None] & d_ok[None, :])
            tl.store(LSE + bh * S + rows, m_i + tl.log2(l_safe), mask=row_ok)

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ,
        TILE_OFF, FWD_PTR, FWD_CHUNKS, CH_START, CH_END, CH_SEG, ROW_MASK,
        S, SK, n_tiles, n_seg, qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLITS: tl.constexpr, TOKEN: tl.constexpr, PRECISION: tl.constexpr,
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
            lo = tl.load(FWD_PTR + bh * n_tiles + t)
            hi = tl.load(FWD_PTR + bh * n_tiles + t + 1)
            for i in range(lo, hi):
                c = tl.load(FWD_CHUNKS + i)
                cs = tl.load(CH_START + c)
                ce = tl.load(CH_END + c)
                cols = cs + tl.arange(0, BLOCK_N)
                col_ok = cols < ce
                kv_off = (bh * SK + cols[:, None]) * D + d[None, :]
                k = tl.load(K + kv_off, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                v = tl.load(V + kv_off, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                valid = col_ok[None, :] & row_ok[:, None]
                if TOKEN:
                    seg = tl.load(CH_SEG + c)
                    chosen = tl.load(ROW_MASK + (bh * S + rows) * n_seg + seg, mask=row_ok, other=0)
                    valid = valid & (chosen != 0)[:, None]
                p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
                dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
            tl.store(DQ + io, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        CH_START, CH_END, CH_SEG, REV_PTR, REV_CHUNKS, QC_START, QC_END, ROW_MASK,
        S, SK, n_seg, qk_scale, sm_scale,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        TOKEN: tl.constexpr, PRECISION: tl.constexpr,
    ):
        c = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        cs = tl.load(CH_START + c)
        ce = tl.load(CH_END + c)
        seg = tl.load(CH_SEG + c)
        cols = cs + tl.arange(0, BLOCK_N)
        col_ok = cols < ce
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        kv_off = (bh * SK + cols[:, None]) * D + d[None, :]
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        lo = tl.load(REV_PTR + bh * n_seg + seg)
        hi = tl.load(REV_PTR + bh * n_seg + seg + 1)
        for i in range(lo, hi):
            qc = tl.load(REV_CHUNKS + i)
            rs = tl.load(QC_START + qc)
            re = tl.load(QC_END + qc)
            rows = rs + tl.arange(0, BLOCK_M)
            row_ok = rows < re
            io = (bh * S + rows[:, None]) * D + d[None, :]
            io_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + io, mask=io_mask, other=0.0)
            do = tl.load(DO + io, mask=io_mask, other=0.0)
            lse = tl.load(LSE + bh * S + rows, mask=row_ok, other=0.0)
            delta = tl.load(DELTA + bh * S + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
            valid = col_ok[None, :] & row_ok[:, None]
            if TOKEN:
                chosen = tl.load(ROW_MASK + (bh * S + rows) * n_seg + seg, mask=row_ok, other=0)
                valid = valid & (chosen != 0)[:, None]
            p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        tl.store(DK + kv_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)


# -- launch configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_configs(head_dim: int, dtype: torch.dtype):
    """(forward, backward) launch configurations. The interpreter gets small tiles so tests cross them."""
    if INTERPRET or dtype == torch.float32:
        small = KernelConfig(16, 16, 1, 1)
        return small, small
    if head_dim <= 64:
        return KernelConfig(128, 64, 4, 3), KernelConfig(64, 64, 4, 2)
    return KernelConfig(128, 64, 8, 3), KernelConfig(64, 64, 8, 2)


def _precision(dtype: torch.dtype) -> str | None:
    """float32 runs exact (IEEE) products, as the reference does; 16-bit inputs use the default."""
    return "ieee" if dtype == torch.float32 else None


# -- the autograd function -------------------------------------------------------------------------------------


def _blocked(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    B, S, H, D = x.shape
    return x.index_select(1, order).transpose(1, 2).reshape(B * H, S, D).contiguous()


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    B, L, H, D = x.shape
    return x.transpose(1, 2).reshape(B * H, L, D)


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, selection: BlockSelection, scale: float, configs):
        B, S, H, D = q.shape
        part, tiles = selection.partition, selection.tiles
        L = 0 if text_k is None else text_k.shape[1]
        fwd_cfg, bwd_cfg = configs
        qb = _blocked(q, part.order)
        kb, vb = _blocked(k, part.order), _blocked(v, part.order)
        if L:
            kb = torch.cat([kb, _heads_first(text_k)], 1).contiguous()
            vb = torch.cat([vb, _heads_first(text_v)], 1).contiguous()
        lists = build_work_lists(selection, L, fwd_cfg.block_n)
        ob = new_empty(*qb.shape, dtype=qb.dtype, device=qb.device)
        lse = new_empty(B * H, S, device=q.device, dtype=torch.float32)
        _launch_fwd(qb, kb, vb, ob, lse, tiles, lists, scale, fwd_cfg)
        ctx.save_for_backward(qb, kb, vb, ob, lse)
        ctx.selection, ctx.scale, ctx.configs, ctx.lists, ctx.shape, ctx.L = selection, scale, configs, lists, (B, S, H, D), L
        out = ob.view(B, H, S, D).index_select(2, part.inverse).transpose(1, 2)
        return out, lse.view(B, H, S).index_select(2, part.inverse) / LOG2E

    @staticmethod
    def backward(ctx, dout, dlse):
        qb, kb, vb, ob, lse = ctx.saved_tensors
        B, S, H, D = ctx.shape
        selection, L = ctx.selection, ctx.L
        part = selection.partition
        fwd_cfg, bwd_cfg = ctx.configs
        dob = _blocked(dout.to(qb.dtype), part.order)
        delta = (dob.float() * ob.float()).sum(-1)  # [B*H, S]
        if dlse is not None:  # d lse / d logits = p: folds into delta (see FlashAttention's derivation)
            delta = delta - _blocked(dlse.transpose(1, 2).unsqueeze(-1), part.order).squeeze(-1).float()
        lists = ctx.lists if bwd_cfg.block_n == fwd_cfg.block_n else build_work_lists(selection, L, bwd_cfg.block_n)
        dq = new_empty(*qb.shape, dtype=qb.dtype, device=qb.device)
        dk = new_empty(*kb.shape, dtype=kb.dtype, device=kb.device)
        dv = new_empty(*vb.shape, dtype=vb.dtype, device=vb.device)
        _launch_bwd(qb, kb, vb, dob, lse, delta, dq, dk, dv, selection, lists, ctx.scale, bwd_cfg)

        def original(x):
            return x.view(B, H, S, D).index_select(2, part.inverse).transpose(1, 2)

        dtext_k = dtext_v = None
        if L:
            dtext_k = dk[:, S:].view(B, H, L, D).transpose(1, 2)
            dtext_v = dv[:, S:].view(B, H, L, D).transpose(1, 2)
        return original(dq), original(dk[:, :S]), original(dv[:, :S]), dtext_k, dtext_v, None, None, None


def _launch_fwd(qb, kb, vb, ob, lse, tiles, lists: WorkLists, scale, cfg: KernelConfig):
    BH, S, D = qb.shape
    splits = math.ceil(tiles.max_tile / cfg.block_m)
    dummy = lists.row_mask if lists.row_mask is not None else lists.chunk_seg
    _fwd_kernel[(tiles.num_tiles * splits, BH)](
        qb, kb, vb, ob, lse,
        tiles.offsets.to(torch.int32), lists.fwd_ptr, lists.fwd_chunks, lists.chunk_start, lists.chunk_end,
        lists.chunk_seg, dummy,
        S, kb.shape[1], tiles.num_tiles, lists.n_seg, scale * LOG2E,
        D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        SPLITS=splits, TOKEN=lists.row_mask is not None, PRECISION=_precision(qb.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def _launch_bwd(qb, kb, vb, dob, lse, delta, dq, dk, dv, selection, lists: WorkLists, scale, cfg: KernelConfig):
    BH, S, D = qb.shape
    tiles = selection.tiles
    token = lists.row_mask is not None
    dummy = lists.row_mask if token else lists.chunk_seg
    splits = math.ceil(tiles.max_tile / cfg.block_m)
    common = dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  TOKEN=token, PRECISION=_precision(qb.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _bwd_dq_kernel[(tiles.num_tiles * splits, BH)](
        qb, kb, vb, dob, lse, delta, dq,
        tiles.offsets.to(torch.int32), lists.fwd_ptr, lists.fwd_chunks, lists.chunk_start, lists.chunk_end,
        lists.chunk_seg, dummy,
        S, kb.shape[1], tiles.num_tiles, lists.n_seg, scale * LOG2E, scale,
        SPLITS=splits, **common,
    )
    q_start, q_end, rev_ptr, rev_chunks = build_reverse_lists(selection, lists, cfg.block_m)
    _bwd_dkdv_kernel[(lists.chunk_start.numel(), BH)](
        qb, kb, vb, dob, lse, delta, dk, dv,
        lists.chunk_start, lists.chunk_end, lists.chunk_seg, rev_ptr, rev_chunks, q_start, q_end, dummy,
        S, kb.shape[1], lists.n_seg, scale * LOG2E, scale,
        **common,
    )


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
        configs = default_configs(q.shape[-1], q.dtype)
    return _BlockSparseAttention.apply(q, k, v, text_k, text_v, selection, float(scale), configs)
