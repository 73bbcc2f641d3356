"""``vmoba bench``: VMoBA against dense attention on one attention-layer shape, every layer scheme.

`time_attention_layer` is the measurement itself; the demo's attention-speed panel runs it too, so the
command and the panel report the same numbers for the same grid."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Callable, Iterable

import torch

from ..attention import dense_attention, vmoba_attention
from ..config import VMoBAConfig
from ..crisscross import criss_cross_attention
from ..synthetic import structured_qkv
from .runtime import require_device, set_threads


def timed(fn: Callable[[], Any], *, repeats: int = 1, device: torch.device | None = None) -> tuple[Any, float]:
    """The last call's result and the fastest of ``repeats`` calls in ms, after one warm-up call (first calls
    allocate and pick kernels); on CUDA the clock waits for the queued kernels."""

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return out, best * 1e3


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def time_attention_layer(grid: tuple[int, int, int], configs: Iterable[tuple[int, VMoBAConfig]], *, heads: int,
                         head_dim: int, seed: int = 0, repeats: int = 1, dtype: torch.dtype = torch.float32,
                         device: torch.device | str = "cpu", crisscross: bool = False,
                         on_row: Callable[[dict, int, int], None] | None = None) -> list[dict]:
    """One attention layer on structured inputs (`structured_qkv`): dense SDPA, then VMoBA for each
    ``(layer, config)`` of ``configs``, then criss-cross attention when ``crisscross``, all on the same inputs.

    Returns rows {method, layer, scheme, granularity, ms, speedup, density, rel_l2} (speed-up and relative L2
    error against the dense row); ``on_row(row, done, total)`` is called as each row is measured."""
    device = torch.device(device)
    configs = list(configs)
    total = 1 + len(configs) + int(crisscross)
    q, k, v = structured_qkv(1, grid, heads, head_dim, seed=seed, dtype=dtype, device=device, sharpness=2.0)
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row, len(rows), total)

    with torch.no_grad():
        dense, dense_ms = timed(lambda: dense_attention(q, k, v), repeats=repeats, device=device)
        add(dict(method="dense", layer=None, scheme="-", granularity="-", ms=dense_ms, speedup=1.0, density=1.0,
                 rel_l2=0.0))
        for layer, config in configs:
            (out, stats), ms = timed(lambda: vmoba_attention(q, k, v, grid, layer, config, return_stats=True),
                                     repeats=repeats, device=device)
            add(dict(method="vmoba", layer=layer, scheme=stats.scheme, granularity=config.granularity, ms=ms,
                     speedup=dense_ms / ms, density=float(stats.density), rel_l2=relative_l2(out, dense)))
        if crisscross:
            out, ms = timed(lambda: criss_cross_attention(q, k, v, grid), repeats=repeats, device=device)
            T, H, W = grid
            add(dict(method="crisscross", layer=None, scheme="lines", granularity="-", ms=ms, speedup=dense_ms / ms,
                     density=(T + H + W - 2) / (T * H * W), rel_l2=relative_l2(out, dense)))
    return rows


def run_bench(args: argparse.Namespace) -> int:
    device = require_device(args.device) or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"grid {args.grid} = {math.prod(args.grid)} tokens, {args.heads} heads x {args.head_dim}, {dtype}, {device}")

    def show(row: dict, done: int, total: int) -> None:
        if row["method"] == "dense":
            print(f"dense attention (PyTorch SDPA): {row['ms']:.0f} ms")
            print(f"{'layer':5}  {'scheme':6}  {'granularity':11}  {'density':7}  {'ms':>7}  {'speed-up':>8}  "
                  f"{'rel. L2 vs dense':>16}")
        else:
            print(f"{row['layer']:5}  {row['scheme']:6}  {row['granularity']:11}  {row['density']:7.3f}  "
                  f"{row['ms']:7.0f}  {row['speedup']:7.2f}x  {row['rel_l2']:16.3f}", flush=True)

    configs = [(layer, VMoBAConfig(threshold=args.threshold, granularity=granularity))
               for layer in range(3) for granularity in args.granularity]
    time_attention_layer(args.grid, configs, heads=args.heads, head_dim=args.head_dim, seed=args.seed, dtype=dtype,
                         device=device, on_row=show)
    return 0
