"""The PyTorch path of block-sparse attention on its per-head route (larger problems), against float64
dense attention under the selection's mask."""

import math

import torch

from _reference import dense_masked_attention
from vmoba import VMoBAConfig, get_partition
from vmoba.kernels.sparse_attention import block_sparse_attention_torch
from vmoba.selection import compute_selection


def test_per_head_route_matches_dense_and_leaves_the_thread_setting_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # heads spread over two workers
    grid = (4, 6, 9)
    S, B, H, D = math.prod(grid), 1, 3, 8
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(3))
    cfg = VMoBAConfig(layer_schedule=("3d",), st_chunk=(2, 3, 3), threshold=0.3)
    sel = compute_selection(q, k, get_partition(grid, "3d", (2, 3, 3)), cfg, "3d")
    # a 1 MiB budget sends B*H*S*S = 3 * 216**2 logits to the per-head route
    out, _ = block_sparse_attention_torch(q, k, v, sel, 1 / math.sqrt(D), memory_budget_mb=1)
    mask = sel.dense_mask()  # [B, H, S, S]
    want = dense_masked_attention(q, k, v, mask)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert calls == []
