"""Synthetic attention inputs with the structure of a trained video model's, for benchmarks and demos."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def structured_qkv(batch, grid, heads, head_dim, *, seed=0, dtype=torch.float32, device="cpu", noise=0.5, sharpness=1.0):
    """q, k, v of shape (B, S, H, D) with the locality of a trained video model's attention.

    i.i.d. random tensors make every key block look alike, which no trained video model does. Here a hidden
    state varies smoothly over the (t, h, w) grid (noise on a coarse grid, trilinearly upsampled, plus
    ``noise`` times white noise); per head, q and k are two noisy views of it, so q_i . k_j is large for
    tokens that look alike (near in space and time) and the attention is local but content dependent.
    ``sharpness`` scales the logits. v is an independent field of the same kind.
    """
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    T, H, W = grid
    coarse = (max(1, T // 2), max(1, H // 4), max(1, W // 4))

    def field():
        f = torch.randn(batch, heads * head_dim, *coarse, generator=g, device=device)
        f = F.interpolate(f, size=tuple(grid), mode="trilinear", align_corners=False)
        f = f / f.std()
        f = f + noise * torch.randn(f.shape, generator=g, device=device)
        return f.view(batch, heads, head_dim, -1).permute(0, 3, 1, 2)  # (B, S, H, D)

    x = field()
    q = x + 0.3 * torch.randn(x.shape, generator=g, device=device)
    k = x + 0.3 * torch.randn(x.shape, generator=g, device=device)
    q = q * (sharpness / x.std())
    k = k / x.std()
    v = field()
    return tuple(t.to(dtype).contiguous() for t in (q, k, v))
