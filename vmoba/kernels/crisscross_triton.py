"""Triton criss-cross attention of the video queries, forward and backward.

Same math and signature as `criss_cross_attention_torch` (crisscross.py), its reference: per head, the video
query at ``(t, h, w)`` attends with one softmax to its w-line ``(t, h, *)``, h-line ``(t, *, w)`` and t-line
``(*, h, w)`` (itself once, on the w-line) and to every valid text key. Recurrence is the caller's loop.

Tensors stay in the ``(B, N, Hn, D)`` layout diffusers hands over (no head-major copies): a program addresses
token ``s`` of head ``n`` of batch element ``b`` at ``b * stride_b + s * Hn * D + n * D``. A program owns
``BLOCK_M`` neighbouring queries of one row ``(t, h)``. They share their w-line, so it runs as
``tl.dot`` tiles, as do the text keys; on the h- and t-lines every query has keys of its own (query ``w``
meets key ``(t, h', w)``), so those run one line position at a time as row-wise products, each query's
online softmax carried through all four parts. Memory: the output, the LSE and, in the backward pass, the
per-split partial text-key gradients (capped at `TEXT_PARTIAL_BYTES`): nothing grows with the line length.

Backward, from the saved LSE: ``_cc_bwd_dq`` walks a query row like the forward pass; ``_cc_bwd_dkdv``
walks, for a run of keys of one row, the queries whose lines hold them (the same three lines, by symmetry);
``_cc_bwd_text_dkdv`` reduces every video query into the text keys, split over query ranges.
The LSE is kept in the log2 domain of the scaled logits inside and returned in natural log.
"""

from __future__ import annotations

import torch

from ._triton import INTERPRET, new_empty, tl, triton
from .sparse_attention_triton import KernelConfig, _meta

LOG2E = 1.4426950408889634

# The partial gradients of the text keys (one per query split) are kept under this size.
TEXT_PARTIAL_BYTES = 64 << 20

if triton is not None:
    from .sparse_attention_triton import _grad_step, _online_step

    @triton.jit
    def _row_run(Hn, H, W, NWB: tl.constexpr, BLOCK: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's run: (batch*head, batch, head, t, h, the BLOCK positions w along row (t, h), which of
        them exist, the feature offsets and which of those exist)."""
        bh = tl.program_id(1).to(tl.int64)
        th = tl.program_id(0).to(tl.int64) // NWB
        w = (tl.program_id(0) % NWB) * BLOCK + tl.arange(0, BLOCK)
        d = tl.arange(0, BLOCK_D)
        return bh, bh // Hn, bh % Hn, th // H, th % H, w, w < W, d, d < D

    # A line through the run: positions j = 0 .. length - 1 of token ``off + j * stride + w``; position
    # ``own`` is the run's own row (the query itself, counted on its w-line instead). The h-line is
    # (off, stride, own) = (t*H*W, W, h), the t-line (h*W, H*W, t).

    @triton.jit
    def _fwd_line(qf, KB, VB, off, stride, length, own, w, w_ok, d, mask, HD, m_i, l_i, acc, qk_scale):
        """Each query meets a key of its own at every position (a row-wise dot product, not a matrix product),
        folded into its online softmax."""
        for j in range(length):
            kv = (off + j * stride + w)[:, None] * HD + d[None, :]
            k = tl.load(KB + kv, mask=mask, other=0.0).to(tl.float32)
            s = tl.where(w_ok & (j != own), tl.sum(qf * k, 1) * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, s)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe)
            v = tl.load(VB + kv, mask=mask, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + p[:, None] * v
            l_i = l_i * alpha + p
            m_i = m_new
        return m_i, l_i, acc

    @triton.jit
    def _line_grad(q, do, lse, delta, k, v, valid, qk_scale):
        """Probabilities and dS of one line position, every query with its own key (row-wise)."""
        s = tl.sum(q * k, 1) * qk_scale
        p = tl.where(valid, tl.exp2(s - lse), 0.0)
        return p, p * (tl.sum(do * v, 1) - delta)

    @triton.jit
    def _dq_line(qf, dof, lse, delta, KB, VB, off, stride, length, own, w, w_ok, d, mask, HD, dq, qk_scale):
        for j in range(length):
            kv = (off + j * stride + w)[:, None] * HD + d[None, :]
            k = tl.load(KB + kv, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(VB + kv, mask=mask, other=0.0).to(tl.float32)
            p, ds = _line_grad(qf, dof, lse, delta, k, v, w_ok & (j != own), qk_scale)
            dq += ds[:, None] * k
        return dq

    @triton.jit
    def _dkdv_line(kf, vf, QB, DOB, LSEB, DELTAB, off, stride, length, own, w, w_ok, d, mask, HD, dk, dv,
                   qk_scale):
        """The queries whose line holds the run's keys: query ``off + j * stride + w`` meets key ``w``."""
        for j in range(length):
            tok = off + j * stride + w
            io = tok[:, None] * HD + d[None, :]
            q = tl.load(QB + io, mask=mask, other=0.0).to(tl.float32)
            do = tl.load(DOB + io, mask=mask, other=0.0).to(tl.float32)
            lse = tl.load(LSEB + tok, mask=w_ok, other=0.0)
            delta = tl.load(DELTAB + tok, mask=w_ok, other=0.0)
            p, ds = _line_grad(q, do, lse, delta, kf, vf, w_ok & (j != own), qk_scale)
            dv += p[:, None] * do
            dk += ds[:, None] * q
        return dk, dv

    @triton.jit
    def _cc_fwd(
        Q, K, V, TK, TV, VALID, O, LSE,
        sq, sk, sv, stk, stv, Hn, T, H, W, L, qk_scale,
        NWB: tl.constexpr, HAS_VALID: tl.constexpr,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        bh, b, n, t, h, w, w_ok, d, d_ok = _row_run(Hn, H, W, NWB, BLOCK_M, D, BLOCK_D)
        HD = Hn * D
        S = T * H * W
        io_mask = w_ok[:, None] & d_ok[None, :]
        row = (t * H + h) * W
        q = tl.load(Q + b * sq + n * D + (row + w)[:, None] * HD + d[None, :], mask=io_mask, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for c0 in range(0, W, BLOCK_N):  # w-line: shared by the run, itself included
            cols = c0 + tl.arange(0, BLOCK_N)
            c_ok = cols < W
            kv = (row + cols)[:, None] * HD + d[None, :]
            m_i, l_i, acc = _online_step(q, K + b * sk + n * D + kv, V + b * sv + n * D + kv,
                                         c_ok[:, None] & d_ok[None, :], c_ok[None, :] & w_ok[:, None],
                                         m_i, l_i, acc, qk_scale, PRECISION)
        KB, VB, qf = K + b * sk + n * D, V + b * sv + n * D, q.to(tl.float32)
        m_i, l_i, acc = _fwd_line(qf, KB, VB, t * H * W, W, H, h, w, w_ok, d, io_mask, HD, m_i, l_i, acc, qk_scale)
        m_i, l_i, acc = _fwd_line(qf, KB, VB, h * W, H * W, T, t, w, w_ok, d, io_mask, HD, m_i, l_i, acc, qk_scale)
        for c0 in range(0, L, BLOCK_N):  # text keys
            cols = c0 + tl.arange(0, BLOCK_N)
            c_ok = cols < L
            if HAS_VALID:
                c_ok = c_ok & (tl.load(VALID + b * L + cols, mask=c_ok, other=0) != 0)
            kv = cols[:, None] * HD + d[None, :]
            m_i, l_i, acc = _online_step(q, TK + b * stk + n * D + kv, TV + b * stv + n * D + kv,
                                         c_ok[:, None] & d_ok[None, :], c_ok[None, :] & w_ok[:, None],
                                         m_i, l_i, acc, qk_scale, PRECISION)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = O + b * S * HD + n * D + (row + w)[:, None] * HD + d[None, :]
        tl.store(out, (acc / l_safe[:, None]).to(O.dtype.element_ty), mask=io_mask)
        tl.store(LSE + bh * S + row + w, m_i + tl.log2(l_safe), mask=w_ok)

    @triton.jit
    def _cc_bwd_dq(
        Q, K, V, TK, TV, VALID, DO, LSE, DELTA, DQ,
        sq, sk, sv, stk, stv, Hn, T, H, W, L, qk_scale, sm_scale,
        NWB: tl.constexpr, HAS_VALID: tl.constexpr,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        bh, b, n, t, h, w, w_ok, d, d_ok = _row_run(Hn, H, W, NWB, BLOCK_M, D, BLOCK_D)
        HD = Hn * D
        S = T * H * W
        io_mask = w_ok[:, None] & d_ok[None, :]
        row = (t * H + h) * W
        own = (row + w)[:, None] * HD + d[None, :]
        q = tl.load(Q + b * sq + n * D + own, mask=io_mask, other=0.0)
        do = tl.load(DO + b * S * HD + n * D + own, mask=io_mask, other=0.0)
        lse = tl.load(LSE + bh * S + row + w, mask=w_ok, other=0.0)
        delta = tl.load(DELTA + bh * S + row + w, mask=w_ok, other=0.0)
        qf, dof = q.to(tl.float32), do.to(tl.float32)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for c0 in range(0, W, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            c_ok = cols < W
            kv = (row + cols)[:, None] * HD + d[None, :]
            k, p, ds = _grad_step(q, do, lse, delta, K + b * sk + n * D + kv, V + b * sv + n * D + kv,
                                  c_ok[:, None] & d_ok[None, :], c_ok[None, :] & w_ok[:, None], qk_scale, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        KB, VB = K + b * sk + n * D, V + b * sv + n * D
        dq = _dq_line(qf, dof, lse, delta, KB, VB, t * H * W, W, H, h, w, w_ok, d, io_mask, HD, dq, qk_scale)
        dq = _dq_line(qf, dof, lse, delta, KB, VB, h * W, H * W, T, t, w, w_ok, d, io_mask, HD, dq, qk_scale)
        for c0 in range(0, L, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            c_ok = cols < L
            if HAS_VALID:
                c_ok = c_ok & (tl.load(VALID + b * L + cols, mask=c_ok, other=0) != 0)
            kv = cols[:, None] * HD + d[None, :]
            k, p, ds = _grad_step(q, do, lse, delta, TK + b * stk + n * D + kv, TV + b * stv + n * D + kv,
                                  c_ok[:, None] & d_ok[None, :], c_ok[None, :] & w_ok[:, None], qk_scale, PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        tl.store(DQ + b * S * HD + n * D + own, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)

    @triton.jit
    def _cc_bwd_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        sq, sk, sv, Hn, T, H, W, qk_scale, sm_scale,
        NWB: tl.constexpr,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """Video keys: the queries that see key (t, h, w) are those on its own three lines."""
        bh, b, n, t, h, w, w_ok, d, d_ok = _row_run(Hn, H, W, NWB, BLOCK_N, D, BLOCK_D)
        HD = Hn * D
        S = T * H * W
        kv_mask = w_ok[:, None] & d_ok[None, :]
        row = (t * H + h) * W
        own = (row + w)[:, None] * HD + d[None, :]
        kf = tl.load(K + b * sk + n * D + own, mask=kv_mask, other=0.0).to(tl.float32)
        vf = tl.load(V + b * sv + n * D + own, mask=kv_mask, other=0.0).to(tl.float32)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for r0 in range(0, W, BLOCK_M):  # queries of the same row: their w-line holds the whole run
            rows = r0 + tl.arange(0, BLOCK_M)
            r_ok = rows < W
            io = (row + rows)[:, None] * HD + d[None, :]
            io_mask = r_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + b * sq + n * D + io, mask=io_mask, other=0.0)
            do = tl.load(DO + b * S * HD + n * D + io, mask=io_mask, other=0.0)
            lse = tl.load(LSE + bh * S + row + rows, mask=r_ok, other=0.0)
            delta = tl.load(DELTA + bh * S + row + rows, mask=r_ok, other=0.0)
            k, p, ds = _grad_step(q, do, lse, delta, K + b * sk + n * D + own, V + b * sv + n * D + own, kv_mask,
                                  w_ok[None, :] & r_ok[:, None], qk_scale, PRECISION)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        QB, DOB, LSEB, DELTAB = Q + b * sq + n * D, DO + b * S * HD + n * D, LSE + bh * S, DELTA + bh * S
        dk, dv = _dkdv_line(kf, vf, QB, DOB, LSEB, DELTAB, t * H * W, W, H, h, w, w_ok, d, kv_mask, HD, dk, dv,
                            qk_scale)
        dk, dv = _dkdv_line(kf, vf, QB, DOB, LSEB, DELTAB, h * W, H * W, T, t, w, w_ok, d, kv_mask, HD, dk, dv,
                            qk_scale)
        tl.store(DK + b * S * HD + n * D + own, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b * S * HD + n * D + own, dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _cc_bwd_text_dkdv(
        Q, TK, TV, VALID, DO, LSE, DELTA, PDK, PDV,
        sq, stk, stv, Hn, S, L, rows_per_split, qk_scale, sm_scale,
        HAS_VALID: tl.constexpr,
        D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """Text keys: every video query sees them. One program reduces one split of the queries into one run
        of text keys and writes a partial dK, dV (summed by the caller)."""
        split = tl.program_id(1)
        bh = tl.program_id(2).to(tl.int64)
        b = bh // Hn
        n = bh % Hn
        HD = Hn * D
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        c_ok = cols < L
        if HAS_VALID:
            c_ok = c_ok & (tl.load(VALID + b * L + cols, mask=c_ok, other=0) != 0)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        kv = cols[:, None] * HD + d[None, :]
        kv_mask = (cols < L)[:, None] & d_ok[None, :]
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        r_end = tl.minimum(S, (split + 1) * rows_per_split)
        for r0 in range(split * rows_per_split, r_end, BLOCK_M):
            rows = r0 + tl.arange(0, BLOCK_M)
            r_ok = rows < r_end
            io = rows[:, None] * HD + d[None, :]
            io_mask = r_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + b * sq + n * D + io, mask=io_mask, other=0.0)
            do = tl.load(DO + b * S * HD + n * D + io, mask=io_mask, other=0.0)
            lse = tl.load(LSE + bh * S + rows, mask=r_ok, other=0.0)
            delta = tl.load(DELTA + bh * S + rows, mask=r_ok, other=0.0)
            k, p, ds = _grad_step(q, do, lse, delta, TK + b * stk + n * D + kv, TV + b * stv + n * D + kv, kv_mask,
                                  c_ok[None, :] & r_ok[:, None], qk_scale, PRECISION)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        part = ((split * tl.num_programs(2) + bh) * L + cols)[:, None] * D + d[None, :]
        tl.store(PDK + part, dk * sm_scale, mask=kv_mask)
        tl.store(PDV + part, dv, mask=kv_mask)


# -- launch configuration --------------------------------------------------------------------------------


def default_config(dtype: torch.dtype) -> KernelConfig:
    """Small tiles in the interpreter and for float32 (so tests cross several); 64-wide rows otherwise (a Wan
    480p row is 52 tokens). Not yet tuned on a GPU: benchmarks/crisscross_gpu.py measures it."""
    if INTERPRET or dtype == torch.float32:
        return KernelConfig(16, 16, 1, 1)
    return KernelConfig(64, 64, 8, 2)


def _batch_stride(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` (B, N, Hn, D) with tokens and heads packed (a slice of a sequence qualifies), and its batch stride."""
    B, N, Hn, D = x.shape
    if x.stride(3) != 1 or x.stride(2) != D or (N > 1 and x.stride(1) != Hn * D):
        x = x.contiguous()
    return x, (x.stride(0) if B > 1 else N * Hn * D)


class _CrissCross(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, text_k, text_v, text_valid, grid, scale: float, cfg: KernelConfig):
        B, S, Hn, D = q.shape
        T, H, W = grid
        L = 0 if text_k is None else text_k.shape[1]
        (q, sq), (k, sk), (v, sv) = _batch_stride(q), _batch_stride(k), _batch_stride(v)
        (tk, stk), (tv, stv) = (_batch_stride(text_k), _batch_stride(text_v)) if L else ((q, 0), (q, 0))
        valid = q if text_valid is None else text_valid.to(torch.int8).contiguous()
        out = new_empty(B, S, Hn, D, dtype=q.dtype, device=q.device)
        lse = new_empty(B * Hn, S, dtype=torch.float32, device=q.device)
        nwb = triton.cdiv(W, cfg.block_m)
        _cc_fwd[(T * H * nwb, B * Hn)](
            q, k, v, tk, tv, valid, out, lse, sq, sk, sv, stk, stv, Hn, T, H, W, L, scale * LOG2E,
            NWB=nwb, HAS_VALID=text_valid is not None, **_meta(D, q.dtype, cfg),
        )
        ctx.save_for_backward(q, k, v, tk, tv, valid, out, lse)
        ctx.strides, ctx.grid, ctx.scale, ctx.cfg, ctx.L = (sq, sk, sv, stk, stv), grid, scale, cfg, L
        ctx.has_valid = text_valid is not None
        ctx.set_materialize_grads(False)
        return out, lse.view(B, Hn, S) / LOG2E

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, tk, tv, valid, out, lse = ctx.saved_tensors
        sq, sk, sv, stk, stv = ctx.strides
        T, H, W = ctx.grid
        B, S, Hn, D = q.shape
        L, cfg, scale = ctx.L, ctx.cfg, ctx.scale
        if dout is None:
            dout = torch.zeros_like(out)
            delta = torch.zeros_like(lse)
        else:
            dout = dout.to(q.dtype).contiguous()
            delta = (dout.float() * out.float()).sum(-1).transpose(1, 2).reshape(B * Hn, S)
        if dlse is not None:  # d lse / d logits = p, so an lse gradient folds into delta
            delta = delta - dlse.reshape(B * Hn, S).float()
        delta = delta.contiguous()
        meta = _meta(D, q.dtype, cfg)
        common = dict(HAS_VALID=ctx.has_valid, **meta)
        dq = new_empty(B, S, Hn, D, dtype=q.dtype, device=q.device)
        dk = new_empty(B, S, Hn, D, dtype=q.dtype, device=q.device)
        dv = new_empty(B, S, Hn, D, dtype=q.dtype, device=q.device)
        nwb_q, nwb_k = triton.cdiv(W, cfg.block_m), triton.cdiv(W, cfg.block_n)
        _cc_bwd_dq[(T * H * nwb_q, B * Hn)](
            q, k, v, tk, tv, valid, dout, lse, delta, dq, sq, sk, sv, stk, stv, Hn, T, H, W, L, scale * LOG2E, scale,
            NWB=nwb_q, **common,
        )
        _cc_bwd_dkdv[(T * H * nwb_k, B * Hn)](
            q, k, v, dout, lse, delta, dk, dv, sq, sk, sv, Hn, T, H, W, scale * LOG2E, scale, NWB=nwb_k, **meta,
        )
        dtk = dtv = None
        if L:
            splits = max(1, min(triton.cdiv(S, cfg.block_m), TEXT_PARTIAL_BYTES // (8 * B * Hn * L * D)))
            rows = triton.cdiv(triton.cdiv(S, splits), cfg.block_m) * cfg.block_m
            splits = triton.cdiv(S, rows)
            pdk = new_empty(splits, B * Hn, L, D, dtype=torch.float32, device=q.device)
            pdv = new_empty(splits, B * Hn, L, D, dtype=torch.float32, device=q.device)
            _cc_bwd_text_dkdv[(triton.cdiv(L, cfg.block_n), splits, B * Hn)](
                q, tk, tv, valid, dout, lse, delta, pdk, pdv, sq, stk, stv, Hn, S, L, rows, scale * LOG2E, scale,
                **common,
            )
            dtk = pdk.sum(0).view(B, Hn, L, D).transpose(1, 2).to(q.dtype)
            dtv = pdv.sum(0).view(B, Hn, L, D).transpose(1, 2).to(q.dtype)
        return dq, dk, dv, dtk, dtv, None, None, None, None


def criss_cross_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    scale: float,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    text_valid: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of `criss_cross_attention_torch`: ``(out (B, S, Hn, D), lse (B, Hn, S) float32)``.
    float16, bfloat16 and float32 inputs."""
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton criss-cross kernel runs float16, bfloat16 and float32, got {q.dtype}; "
                         f"use backend='torch' for {q.dtype}")
    config = default_config(q.dtype) if config is None else config
    return _CrissCross.apply(q, k, v, text_k, text_v, text_valid, tuple(grid), float(scale), config)
