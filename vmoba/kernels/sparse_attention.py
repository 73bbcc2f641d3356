"""Block-sparse attention over a `BlockSelection`: the PyTorch path (this file) and the Triton kernels
(`sparse_attention_triton.py`).

The math: each video query attends, with one exact softmax at scale ``scale``, to the keys of the blocks
its selection lists plus every always-on (text) key. Identical to dense attention under that mask.

The PyTorch path groups queries by key block: for every (batch*head, key block), the queries that selected
it are gathered and attend to the block's keys (a contiguous slice in blocked order: no key copies, no
padding), giving a partial output normalised over that block and the block's log-sum-exp. Partials of one
query are merged with the usual running-max rescaling. Work is exactly the selected pairs in both
granularities (a tile's queries simply share a list), and memory stays within ``memory_budget_mb`` per
flush instead of growing like ``S x S``. Autograd works through it: it is the CPU training path.
"""

from __future__ import annotations

import torch

from .._parallel import parallel_map
from ..layout import BlockSelection

# PyTorch's fused CPU flash-attention kernel returns the log-sum-exp the merge needs, but not as a
# differentiable output: it serves calls without autograd (inference), the matrix products the rest.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

# Up to this many logits (16 MiB in float32) one masked product beats the per-block loop, whose cost there
# is the number of small operations rather than arithmetic.
SMALL_PROBLEM_LOGITS = 1 << 22


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

    def blocked(x: torch.Tensor) -> torch.Tensor:  # [B*H, S, D] in blocked order
        return x.index_select(1, part.order).transpose(1, 2).to(cdt).reshape(B * H, S, D)

    def heads_first(x):
        return None if x is None else x.transpose(1, 2).to(cdt).reshape(B * H, x.shape[1], D)

    qb, vb = blocked(q * scale), blocked(v)
    tk, tv = heads_first(text_k), heads_first(text_v)
    chosen = selection.query_mask().reshape(B * H, S, part.num_blocks)
    L = 0 if tk is None else tk.shape[1]
    if B * H * S * (S + L) <= min(SMALL_PROBLEM_LOGITS, (memory_budget_mb << 20) // 16):
        out, lse = _attend_masked(qb, blocked(k), vb, tk, tv, chosen.index_select(2, part.blocked_ids()))
        return _original_order(out, lse, part, B, H, S, D, q.dtype)
    offsets = part.offsets.tolist()
    differentiable = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, text_k, text_v))
    flash = not differentiable and _FLASH_CPU is not None and q.device.type == "cpu"
    kb = blocked(k) if flash else blocked(k).transpose(1, 2).contiguous()  # [B*H, S, D] or [B*H, D, S]

    def one_head(bh):
        text = None if tk is None else ((tk[bh], tv[bh]) if flash else (tk[bh].t().contiguous(), tv[bh]))
        return _attend_one_head(qb[bh], kb[bh], vb[bh], text, chosen[bh], offsets, memory_budget_mb << 20,
                                differentiable, flash)

    results = parallel_map(one_head, B * H, q.device)
    outs, lses = zip(*results)
    return _original_order(torch.stack(outs), torch.stack(lses), part, B, H, S, D, q.dtype)


def _original_order(out, lse, part, B, H, S, D, dtype):
    out = out.reshape(B, H, S, D).index_select(2, part.inverse)
    lse = lse.reshape(B, H, S).index_select(2, part.inverse)
    return out.transpose(1, 2).to(dtype), lse.float()


def _attend_masked(qb, kb, vb, tk, tv, allowed):
    """Small problems: every (query, key) logit at once under the selection's [B*H, S, S] mask. Exact, and
    far fewer operations than the per-block path when those are tiny."""
    cdt = qb.dtype
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    logits = (qb @ kb.transpose(1, 2)).masked_fill(~allowed, float("-inf"))
    values = vb
    if tk is not None:
        logits = torch.cat([logits, qb @ tk.transpose(1, 2)], -1)
        values = torch.cat([vb, tv], 1)
    p, lse = _softmax_stats(logits, acc, cdt)
    return p @ values, lse


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype in (torch.float32, torch.float64):
        return x.dtype
    return x.dtype if x.is_cuda else torch.float32  # half-precision CPU matmuls are slow; use float32


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


class _RunningMerge:
    """Per-query running (max, sum of weights, weighted output) over partial results.

    Without autograd each partial is merged in place right away (its rows are distinct). With autograd,
    partials are kept and merged out of place in a few large steps; the running max is then a constant
    for autograd, which is exact: the merged output and LSE do not depend on it."""

    def __init__(self, S: int, D: int, device, acc: torch.dtype, differentiable: bool):
        self.m = torch.full((S,), float("-inf"), device=device, dtype=acc)
        self.z = torch.zeros(S, device=device, dtype=acc)
        self.o = torch.zeros(S, D, device=device, dtype=acc)
        self.differentiable = differentiable
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pending_bytes = 0

    def add(self, rows: torch.Tensor, lse: torch.Tensor, out: torch.Tensor, budget: int) -> None:
        if not self.differentiable:
            m_old = self.m[rows]
            m_new = torch.maximum(m_old, lse)
            keep = torch.exp(m_old - m_new).nan_to_num_(0.0)  # -inf - -inf before a query's first partial
            w = torch.exp(lse - m_new)
            self.z[rows] = self.z[rows] * keep + w
            self.o[rows] = self.o[rows] * keep[:, None] + w[:, None] * out.to(self.o.dtype)
            self.m[rows] = m_new
            return
        self.pending.append((rows, lse, out))
        self.pending_bytes += out.numel() * out.element_size()
        if self.pending_bytes > budget:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows, lse, out = (torch.cat(x) for x in zip(*self.pending))
        self.pending, self.pending_bytes = [], 0
        m_new = self.m.scatter_reduce(0, rows, lse.detach(), reduce="amax", include_self=True)
        keep = torch.exp(self.m - m_new).nan_to_num_(0.0)
        w = torch.exp(lse - m_new[rows])
        self.z = (self.z * keep).index_add(0, rows, w)
        self.o = (self.o * keep[:, None]).index_add(0, rows, w[:, None] * out.to(self.o.dtype))
        self.m = m_new

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.flush()
        return self.o / self.z[:, None], self.m + torch.log(self.z)


def _attend_one_head(q, k, v, text, chosen, offsets, budget, differentiable, flash):
    """q, v: [S, D] in blocked order; k: [S, D] with ``flash``, else transposed [D, S] and contiguous (a block
    is then a column slice, which BLAS multiplies at full speed where a transposed row slice can be several
    times slower); chosen: [S, n_blocks]; text: (keys, values) laid out like k and v, or None."""
    S, D = q.shape
    cdt = q.dtype
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    merge = _RunningMerge(S, D, q.device, acc, differentiable)
    block, query = chosen.t().nonzero(as_tuple=True)  # grouped by block, queries ascending
    counts = torch.bincount(block, minlength=len(offsets) - 1).tolist()

    def attend(rows, keys, values):
        if flash:
            out, lse = _FLASH_CPU(q.index_select(0, rows)[None, None], keys[None, None], values[None, None],
                                  0.0, False, scale=1.0)
            merge.add(rows, lse[0, 0].to(acc), out[0, 0], budget // 4)
            return
        p, lse = _softmax_stats(q.index_select(0, rows) @ keys, acc, cdt)
        merge.add(rows, lse, p @ values, budget // 4)

    start = 0
    for j, count in enumerate(counts):
        keys = k[offsets[j] : offsets[j + 1]] if flash else k[:, offsets[j] : offsets[j + 1]]
        values = v[offsets[j] : offsets[j + 1]]
        # rows per product: the fused kernel tiles itself; otherwise logits and softmax fit budget/4
        run = count if flash else max(1, budget // (4 * values.shape[0] * 16))
        for r0 in range(start, start + count, max(1, run)):
            attend(query[r0 : min(start + count, r0 + run)], keys, values)
        start += count
    if text is not None:
        run = S if flash else max(1, budget // (4 * text[1].shape[0] * 16))
        for r0 in range(0, S, run):
            attend(torch.arange(r0, min(S, r0 + run), device=q.device), *text)
    return merge.result()


def block_sparse_attention_torch_backward(
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
    memory_budget_mb: int = 256,
) -> tuple[torch.Tensor, ...]:
    """Gradients of `block_sparse_attention_torch` from its outputs ``out, lse``, without autograd (for the
    custom op's backward, which runs below autograd): ``(dq, dk, dv, dtext_k, dtext_v)``, the text gradients
    None without text keys.

    With ``p = exp(scale * q.k - lse)`` over the attended keys: ``dv = p^T dout``, ``ds = p * (dout.v - delta)``
    with ``delta = rowsum(dout * out) - dlse``, ``dq = scale * ds k``, ``dk = scale * ds^T q``; key block by
    key block, over the queries that selected it, as the forward."""
    B, S, H, D = q.shape
    part = selection.partition
    cdt = _compute_dtype(q)
    acc = torch.float64 if cdt == torch.float64 else torch.float32

    def blocked(x: torch.Tensor, dtype=cdt) -> torch.Tensor:  # [B*H, S, ...] in blocked order
        x = x.index_select(1, part.order).transpose(1, 2).to(dtype)
        return x.reshape(B * H, S, *x.shape[3:])

    def heads_first(x):
        return None if x is None else x.transpose(1, 2).to(cdt).reshape(B * H, x.shape[1], D)

    qb, kb, vb, dob = blocked(q), blocked(k), blocked(v), blocked(dout)
    delta = (dob.to(acc) * blocked(out, acc)).sum(-1)
    if dlse is not None:
        delta = delta - blocked(dlse.transpose(1, 2), acc)
    lseb = blocked(lse.transpose(1, 2), acc)
    tk, tv = heads_first(text_k), heads_first(text_v)
    chosen = selection.query_mask().reshape(B * H, S, part.num_blocks)
    offsets = part.offsets.tolist()
    budget = memory_budget_mb << 20

    def one_head(bh):
        dq = torch.zeros(S, D, dtype=acc, device=q.device)
        dk = torch.zeros(S, D, dtype=acc, device=q.device)
        dv = torch.zeros(S, D, dtype=acc, device=q.device)
        block, query = chosen[bh].t().nonzero(as_tuple=True)  # grouped by block, queries ascending
        counts = torch.bincount(block, minlength=part.num_blocks).tolist()

        def attend(rows, keys, values):
            """Gradient contributions of ``rows`` attending ``keys``: (dq rows, dk, dv) of those keys."""
            qr, dor = qb[bh].index_select(0, rows), dob[bh].index_select(0, rows)
            p = torch.exp((qr @ keys.t()).to(acc) * scale - lseb[bh, rows, None])
            ds = p * ((dor @ values.t()).to(acc) - delta[bh, rows, None])
            return ((ds @ keys.to(acc)) * scale, (ds.t() @ qr.to(acc)) * scale, p.t() @ dor.to(acc))

        start = 0
        for j, count in enumerate(counts):
            lo, hi = offsets[j], offsets[j + 1]
            run = max(1, budget // (8 * (hi - lo) * 16))
            for r0 in range(start, start + count, run):
                rows = query[r0 : min(start + count, r0 + run)]
                dq_rows, dk_j, dv_j = attend(rows, kb[bh, lo:hi], vb[bh, lo:hi])
                dq.index_add_(0, rows, dq_rows)
                dk[lo:hi] += dk_j
                dv[lo:hi] += dv_j
            start += count
        if tk is None:
            return dq, dk, dv, None, None
        dtk, dtv = torch.zeros_like(tk[bh], dtype=acc), torch.zeros_like(tv[bh], dtype=acc)
        run = max(1, budget // (8 * tk.shape[1] * 16))
        for r0 in range(0, S, run):
            rows = torch.arange(r0, min(S, r0 + run), device=q.device)
            dq_rows, dk_t, dv_t = attend(rows, tk[bh], tv[bh])
            dq[r0 : r0 + rows.numel()] += dq_rows
            dtk += dk_t
            dtv += dv_t
        return dq, dk, dv, dtk, dtv

    grads = list(zip(*parallel_map(one_head, B * H, q.device)))

    def original(parts, dtype, length=S, blocked_order=True):
        x = torch.stack(parts).reshape(B, H, length, D)
        if blocked_order:
            x = x.index_select(2, part.inverse)
        return x.transpose(1, 2).to(dtype)

    dq, dk, dv = (original(g, x.dtype) for g, x in zip(grads[:3], (q, k, v)))
    if text_k is None:
        return dq, dk, dv, None, None
    L = text_k.shape[1]
    return (dq, dk, dv, original(grads[3], text_k.dtype, L, False), original(grads[4], text_v.dtype, L, False))
