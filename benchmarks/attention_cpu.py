"""CPU benchmark: dense SDPA vs the VMoBA PyTorch path, and the selection step alone.

    python benchmarks/attention_cpu.py                 # full run (about 10 minutes on 2 cores)
    python benchmarks/attention_cpu.py --quick         # tiny shapes, checks the script

Attention: video grids of about 4K, 8K and 16K tokens (Wan-like aspect, ragged against the default
chunks), structured inputs (`common.structured_qkv`, sharpness 2), every layer scheme in both
granularities at the default threshold 0.25. Selection: the Wan 480p grid 20x30x52 with H=12, D=128,
token granularity, `query_head` threshold 0.25, on i.i.d. normal and on structured inputs.

Every case runs twice, each time in a fresh process that loads its inputs from disk: once for time, with
the default allocator, and once for memory, with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_) so
freed buffers go back to the system and the peak resident memory the call adds (VmHWM after a reset
through /proc/self/clear_refs) counts live tensors rather than allocator caching. (The fixed threshold
makes every large allocation fault its pages in again, which would distort the timings.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    machine_info, peak_rss_mib, print_table, rel_l2, spawn, structured_qkv, time_call, write_json)

ATTENTION_SHAPES = [  # (name, grid, heads, head_dim)
    ("4k", (5, 24, 34), 12, 128),
    ("8k", (8, 30, 34), 4, 128),
    ("16k", (16, 30, 34), 2, 64),
]
SELECTION_GRID, SELECTION_HEADS, SELECTION_DIM = (20, 30, 52), 12, 128
PUBLISHED_SELECTION = {"2d": (3.8, 2.9), "3d": (11.7, 6.0)}  # seconds, GB on a 2-core CPU


def run_case(case: dict) -> dict:
    """Executed in a child process: one measurement, returned as a dict."""
    import vmoba
    from vmoba.selection import compute_selection

    q, k, v = torch.load(case["inputs"])
    repeat = case.get("repeat", 2)
    if case["kind"] == "dense":
        fn = lambda: vmoba.dense_attention(q, k, v)  # noqa: E731
    elif case["kind"] == "vmoba":
        cfg = vmoba.VMoBAConfig(granularity=case["granularity"], validate_inputs=False)
        fn = lambda: vmoba.vmoba_attention(q, k, v, case["grid"], case["layer"], cfg)  # noqa: E731
    else:
        cfg = vmoba.VMoBAConfig(validate_inputs=False)
        scheme = cfg.scheme_for_layer(case["layer"])
        part = vmoba.get_partition(case["grid"], scheme, cfg.chunk_for_scheme(scheme))
        fn = lambda: compute_selection(q, k, part, cfg, scheme)  # noqa: E731
    if case.get("measure") == "memory":
        return dict(peak_mib=peak_rss_mib(fn))
    t0 = time.perf_counter()
    result = fn()
    first_ms = (time.perf_counter() - t0) * 1e3
    ms = time_call(fn, warmup=0, repeat=repeat) if repeat else first_ms
    out = dict(ms=ms)
    if case["kind"] == "dense" and case.get("save"):
        torch.save(result, case["save"])
    if case["kind"] == "vmoba":
        _, stats = vmoba.vmoba_attention(q, k, v, case["grid"], case["layer"], cfg, return_stats=True)
        out.update(density=stats.density, scheme=stats.scheme)
        if case.get("reference"):
            out["rel_l2_vs_dense"] = rel_l2(result, torch.load(case["reference"]))
    if case["kind"] == "select":
        out.update(density=float(result.density().mean()))
    return out


def measure(case: dict) -> dict:
    """Time and peak memory of one case; the memory run neither saves nor compares the output."""
    return spawn(__file__, case, time_only=("save", "reference"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for attention_cpu.json (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: check that the script runs")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    shapes = [("tiny", (2, 6, 8), 2, 16)] if args.quick else ATTENTION_SHAPES
    sel_grid, sel_heads, sel_dim = ((4, 6, 8), 2, 16) if args.quick else (SELECTION_GRID, SELECTION_HEADS, SELECTION_DIM)
    repeat = 0 if args.quick else 2
    results = dict(machine=machine_info(), attention=[], selection=[])
    with tempfile.TemporaryDirectory() as tmp:
        for name, grid, heads, dim in shapes:
            S = math.prod(grid)
            inputs, dense_out = f"{tmp}/{name}.pt", f"{tmp}/{name}_dense.pt"
            torch.save(structured_qkv(1, grid, heads, dim, sharpness=2.0), inputs)
            dense = measure(dict(kind="dense", inputs=inputs, save=dense_out, repeat=repeat))
            logits_mib = S * S * heads * 4 / 2**20
            results["attention"].append(dict(shape=name, tokens=S, grid=grid, heads=heads, head_dim=dim, method="sdpa",
                                             ms=dense["ms"], peak_mib=dense["peak_mib"], dense_logits_mib=logits_mib))
            print(f"{name}: S={S} H={heads} D={dim} dense {dense['ms']:.0f} ms, peak +{dense['peak_mib']:.0f} MiB",
                  flush=True)
            for layer in range(3):
                for granularity in ("token", "tile"):
                    r = measure(dict(kind="vmoba", inputs=inputs, reference=dense_out, grid=grid, layer=layer,
                                   granularity=granularity, repeat=repeat))
                    row = dict(shape=name, tokens=S, grid=grid, heads=heads, head_dim=dim, method="vmoba",
                               granularity=granularity, speedup=dense["ms"] / r["ms"], dense_logits_mib=logits_mib, **r)
                    results["attention"].append(row)
                    print(f"  {row['scheme']} {granularity:5s} {r['ms']:.0f} ms ({row['speedup']:.2f}x) "
                          f"density {r['density']:.3f} peak +{r['peak_mib']:.0f} MiB err {r['rel_l2_vs_dense']:.3f}",
                          flush=True)
        for data in ("random", "structured"):
            inputs = f"{tmp}/select_{data}.pt"
            if data == "random":
                g = torch.Generator().manual_seed(0)
                S = math.prod(sel_grid)
                qkv = tuple(torch.randn(1, S, sel_heads, sel_dim, generator=g) for _ in range(3))
            else:
                qkv = structured_qkv(1, sel_grid, sel_heads, sel_dim, sharpness=2.0)
            torch.save(qkv, inputs)
            del qkv
            for layer in range(3):
                r = measure(dict(kind="select", inputs=inputs, grid=sel_grid, layer=layer, repeat=repeat))
                scheme = ("1d", "2d", "3d")[layer]
                pub = PUBLISHED_SELECTION.get(scheme)
                row = dict(grid=sel_grid, heads=sel_heads, head_dim=sel_dim, data=data, scheme=scheme, **r,
                           published_s=pub[0] if pub else None, published_gb=pub[1] if pub else None)
                results["selection"].append(row)
                print(f"select {data} {scheme}: {r['ms'] / 1e3:.2f} s, peak +{r['peak_mib']:.0f} MiB, "
                      f"density {r['density']:.3f}", flush=True)

    path = write_json("attention_cpu_quick.json" if args.quick else "attention_cpu.json", results, args.out)
    print()
    print_table([r for r in results["attention"] if r["method"] == "vmoba"], [
        ("shape", "shape", "{}"), ("tokens", "tokens", "{}"), ("heads", "H", "{}"), ("head_dim", "D", "{}"),
        ("scheme", "scheme", "{}"), ("granularity", "gran", "{}"), ("density", "density", "{:.3f}"),
        ("ms", "ms", "{:.0f}"), ("speedup", "vs SDPA", "{:.2f}x"), ("peak_mib", "peak MiB", "{:.0f}"),
        ("dense_logits_mib", "S*S logits MiB", "{:.0f}"), ("rel_l2_vs_dense", "rel L2", "{:.3f}"),
    ])
    print()
    print_table(results["selection"], [
        ("data", "inputs", "{}"), ("scheme", "scheme", "{}"), ("ms", "ms", "{:.0f}"), ("peak_mib", "peak MiB", "{:.0f}"),
        ("density", "density", "{:.3f}"), ("published_s", "published s", "{}"), ("published_gb", "published GB", "{}"),
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
