"""``vmoba bench``: VMoBA against dense attention on one attention-layer shape, every layer scheme."""

from __future__ import annotations

import argparse
import math
import time

import torch

from ..attention import dense_attention, vmoba_attention
from ..config import VMoBAConfig
from ..synthetic import structured_qkv
from .runtime import require_device, set_threads


def _timed(fn, device: torch.device):
    """The second call's result and wall time in ms (the first warms up)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def run_bench(args: argparse.Namespace) -> int:
    device = require_device(args.device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = structured_qkv(1, args.grid, args.heads, args.head_dim, seed=args.seed, dtype=dtype, device=device,
                             sharpness=2.0)
    dense, dense_ms = _timed(lambda: dense_attention(q, k, v), device)
    print(f"grid {args.grid} = {math.prod(args.grid)} tokens, {args.heads} heads x {args.head_dim}, {dtype}, {device}")
    print(f"dense attention (PyTorch SDPA): {dense_ms:.0f} ms")
    print(f"{'layer':5}  {'scheme':6}  {'granularity':11}  {'density':7}  {'ms':>7}  {'speed-up':>8}  {'rel. L2 vs dense':>16}")
    for layer in range(3):
        for granularity in args.granularity:
            config = VMoBAConfig(threshold=args.threshold, granularity=granularity)
            (out, stats), ms = _timed(lambda: vmoba_attention(q, k, v, args.grid, layer, config, return_stats=True),
                                      device)
            err = ((out.double() - dense.double()).norm() / dense.double().norm()).item()
            print(f"{layer:5}  {stats.scheme:6}  {granularity:11}  {stats.density:7.3f}  {ms:7.0f}  "
                  f"{dense_ms / ms:7.2f}x  {err:16.3f}")
    return 0
