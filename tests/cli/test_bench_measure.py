"""`time_attention_layer`, the measurement behind ``vmoba bench`` and the demo's attention-speed panel."""

import math

import torch
from _reference import dense_masked_attention, naive_criss_cross

from vmoba import VMoBAConfig
from vmoba.cli.bench import time_attention_layer
from vmoba.synthetic import structured_qkv


def test_rows_measure_each_method_on_the_same_inputs():
    torch.manual_seed(0)
    grid, heads, head_dim = (2, 3, 4), 2, 8
    configs = [(0, VMoBAConfig(threshold=0.25, granularity="token")), (2, VMoBAConfig(threshold=0.25, granularity="tile"))]
    seen = []
    rows = time_attention_layer(grid, configs, heads=heads, head_dim=head_dim, seed=3, crisscross=True,
                                on_row=lambda row, done, total: seen.append((row["method"], done, total)))
    assert seen == [("dense", 1, 4), ("vmoba", 2, 4), ("vmoba", 3, 4), ("crisscross", 4, 4)]
    assert [(r["layer"], r["granularity"]) for r in rows[1:3]] == [(0, "token"), (2, "tile")]
    assert [r["scheme"] for r in rows[1:3]] == ["1d", "3d"]

    # the criss-cross row's error, recomputed in float64 from the same structured inputs
    q, k, v = structured_qkv(1, grid, heads, head_dim, seed=3, sharpness=2.0)
    S = math.prod(grid)
    dense = dense_masked_attention(q, k, v, torch.ones(1, heads, S, S, dtype=torch.bool))
    lines = naive_criss_cross(q, k, v, grid)
    expected = ((lines - dense).norm() / dense.norm()).item()
    assert abs(rows[3]["rel_l2"] - expected) < 1e-4
    T, H, W = grid
    assert rows[3]["density"] == (T + H + W - 2) / S
    assert rows[0]["rel_l2"] == 0.0 and rows[0]["speedup"] == 1.0
    for r in rows[1:]:
        assert r["ms"] > 0 and math.isclose(r["speedup"], rows[0]["ms"] / r["ms"])
        assert 0 < r["density"] <= 1 and 0 <= r["rel_l2"] < 1
