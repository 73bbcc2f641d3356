"""Token-level criss-cross attention of the video queries: the PyTorch path (this file) and the Triton kernels
(`crisscross_triton.py`), same signature, tested against each other.

The math: video tokens lie frame-major on a ``(T, H, W)`` grid. Per head, the video query at ``(t, h, w)``
attends, with one exact softmax at ``scale``, to the video keys on its t-line ``(*, h, w)``, h-line
``(t, *, w)`` and w-line ``(t, h, *)`` (itself once: it is dropped from the t- and h-lines) and to every
valid text key. Text queries are not handled here (they attend densely: `vmoba.criss_cross_attention` runs
them through SDPA).

The PyTorch path computes the logits of a run of whole frames of a few heads at a time, sized so that the
working memory of one run (head-major copies of its heads' inputs, the logits, their softmax and the
products' temporaries) stays within ``memory_budget_mb``: peak memory is then the inputs, the output and
one budget, whatever the sequence length (a run is at least one frame of one head). Autograd works through
it (it is the CPU training path) and then keeps each run's probabilities for the backward pass
(``S x (T + H + W + L)`` per head).
"""

from __future__ import annotations

import torch

from .sparse_attention import _compute_dtype, _softmax_stats

# Working bytes per logit in one run: the four line/text logit blocks and their concatenation in float32,
# the softmax, and the contiguous copies einsum makes of the probability slices (measured at 16K tokens).
BYTES_PER_LOGIT = 24


def criss_cross_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: tuple[int, int, int],
    scale: float,
    text_k: torch.Tensor | None = None,
    text_v: torch.Tensor | None = None,
    text_valid: torch.Tensor | None = None,
    memory_budget_mb: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q, k, v``: video tokens ``(B, T*H*W, Hn, D)`` frame-major over ``grid``; ``text_k/v``: ``(B, L, Hn, D)``
    keys every video query sees, ``text_valid`` ``[B, L]`` bool (None: all valid). Returns ``(out (B, S, Hn, D)
    in q's dtype, lse (B, Hn, S) float32)``, natural-log lse of each query's logits."""
    B, S, Hn, D = q.shape
    T, H, W = grid
    L = 0 if text_k is None else text_k.shape[1]
    cdt = _compute_dtype(q)
    item = torch.finfo(cdt).bits // 8
    heads, frames = _run_shape(Hn, T, H * W * (T + H + W + L), (3 * S + 2 * L) * D * item, memory_budget_mb)
    differentiable = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, text_k, text_v))
    # without autograd, runs write straight into the output; with it, their results are concatenated
    out = None if differentiable else torch.empty(B, Hn, S, D, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, Hn, S, dtype=torch.float32, device=q.device)
    per_batch = []
    for b in range(B):
        per_heads = []
        for n0 in range(0, Hn, heads):
            hs = slice(n0, n0 + heads)

            def head_major(x, scaled=1.0):  # (N, n, D) of batch element b -> (n, N, D), compute dtype
                return (x[b, :, hs].to(cdt) * scaled).transpose(0, 1).contiguous()

            n = len(range(Hn)[hs])
            qg = head_major(q, scale).view(n, T, H, W, D)
            kg, vg = head_major(k).view(n, T, H, W, D), head_major(v).view(n, T, H, W, D)
            text = None
            if L:
                valid = None if text_valid is None else text_valid[b].expand(n, L)
                text = (head_major(text_k), head_major(text_v), valid)
            per_frames = []
            for t0 in range(0, T, frames):
                rows = slice(t0 * H * W, min(T, t0 + frames) * H * W)
                o, lse[b, hs, rows] = _attend_frames(qg[:, t0 : t0 + frames], kg, vg, t0, text)
                if out is None:
                    per_frames.append(o)
                else:
                    out[b, hs, rows] = o
            per_heads.append(per_frames)
        per_batch.append(per_heads)
    if out is None:
        out = torch.stack([torch.cat([torch.cat(frames_out, 1) for frames_out in h]) for h in per_batch])
    return out.transpose(1, 2).to(q.dtype), lse


def _run_shape(heads: int, frames: int, logits_per_frame: int, copy_bytes_per_head: int,
               memory_budget_mb: int) -> tuple[int, int]:
    """(heads, frames) of one run within the budget: a run holds head-major copies of its heads' q, k, v and
    text keys and values, and the logits of its frames. Whole heads when every frame of one fits, else whole
    frames of one head (at least one frame, whatever the budget)."""
    budget = memory_budget_mb << 20
    frame_bytes = BYTES_PER_LOGIT * logits_per_frame
    head_bytes = copy_bytes_per_head + frames * frame_bytes
    if head_bytes > budget:
        return 1, min(frames, max(1, (budget - copy_bytes_per_head) // frame_bytes))
    return min(heads, budget // head_bytes), frames


def _attend_frames(q, k, v, t0, text):
    """q: ``(n, tc, H, W, D)`` scaled queries of frames ``t0 .. t0 + tc``; k, v: ``(n, T, H, W, D)`` every frame;
    text: (keys ``(n, L, D)``, values, valid ``[n, L]`` or None) or None. Returns ``(n, tc*H*W, D)`` and lse."""
    n, tc, H, W, D = q.shape
    T = k.shape[1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    k_here, v_here = k[:, t0 : t0 + tc], v[:, t0 : t0 + tc]
    dev = q.device
    # a query meets itself on all three lines; it is kept on the w-line only
    same_t = (torch.arange(tc, device=dev)[:, None] + t0 == torch.arange(T, device=dev)).view(1, tc, 1, 1, T)
    same_h = torch.eye(H, dtype=torch.bool, device=dev).view(1, 1, H, 1, H)
    logits = [
        torch.einsum("nthwd,nkhwd->nthwk", q, k).masked_fill(same_t, float("-inf")),
        torch.einsum("nthwd,ntkwd->nthwk", q, k_here).masked_fill(same_h, float("-inf")),
        torch.einsum("nthwd,nthkd->nthwk", q, k_here),
    ]
    if text is not None:
        text_k, text_v, valid = text
        e_text = torch.einsum("nthwd,nld->nthwl", q, text_k)
        if valid is not None:
            e_text = e_text.masked_fill(~valid.view(n, 1, 1, 1, -1), float("-inf"))
        logits.append(e_text)
    p, lse = _softmax_stats(torch.cat(logits, -1), acc, q.dtype)
    p_t, p_h, p_w, *p_text = p.split([T, H, W] + ([text[0].shape[1]] if text is not None else []), -1)
    out = (torch.einsum("nthwk,nkhwd->nthwd", p_t, v) + torch.einsum("nthwk,ntkwd->nthwd", p_h, v_here)
           + torch.einsum("nthwk,nthkd->nthwd", p_w, v_here))
    if text is not None:
        out = out + torch.einsum("nthwl,nld->nthwd", p_text[0], text[1])
    return out.reshape(n, tc * H * W, D), lse.reshape(n, tc * H * W)
