"""CPU benchmark: token-level criss-cross attention beside dense SDPA and VMoBA at about 16K tokens.

    python benchmarks/crisscross_cpu.py            # 16K tokens (a few minutes on 2 cores)
    python benchmarks/crisscross_cpu.py --quick    # tiny shapes, checks the script

The grid is the 16K grid of attention_cpu.py (16 x 30 x 34 = 16,320 video tokens), 4 heads of 64, no text
(and one criss-cross row with 256 text tokens). Rows: dense SDPA (PyTorch's fused CPU kernel); VMoBA
(`vmoba.vmoba_attention`, default config, its three layer schemes); criss-cross (`criss_cross_attention`,
PyTorch path) with 1 and 2 loops at the default `memory_budget_mb`, with an unlimited budget (every logit of
every head at once, as the path worked before it was budgeted) and with a 32 MiB budget.

Every case uses one torch thread unless --threads says otherwise (on a shared 2-core machine two threads
mostly wait on each other). As in attention_cpu.py, each case runs in fresh processes: one for time (median
of repeats, after a first call), one for memory with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_)
so freed buffers go back to the system; peak memory is the resident-set high-water mark the call adds (VmHWM after a reset through
/proc/self/clear_refs), so it counts the output and every temporary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, peak_rss_mib, print_table, spawn, time_call, write_json  # noqa: E402

import vmoba  # noqa: E402

GRID, HEADS, DIM, TEXT = (16, 30, 34), 4, 64, 256
QUICK_GRID, QUICK_TEXT = (4, 6, 8), 8
UNLIMITED_MB = 1 << 20


def run_case(case: dict) -> dict:
    """Executed in a child process: one measurement, returned as a dict."""
    torch.set_num_threads(case["threads"])
    grid, text_len = tuple(case["grid"]), case.get("text_len", 0)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, math.prod(grid) + text_len, HEADS, DIM, generator=gen) for _ in range(3))
    if case["kind"] == "dense":
        fn = lambda: vmoba.dense_attention(q, k, v)  # noqa: E731
    elif case["kind"] == "vmoba":
        cfg = vmoba.VMoBAConfig(validate_inputs=False)
        fn = lambda: vmoba.vmoba_attention(q, k, v, grid, case["layer"], cfg)  # noqa: E731
    else:
        fn = lambda: vmoba.criss_cross_attention(  # noqa: E731
            q, k, v, grid, text_len=text_len, recurrence=case["recurrence"], backend="torch",
            memory_budget_mb=case["budget_mb"])
    with torch.no_grad():
        if case.get("measure") == "memory":
            return dict(peak_mib=peak_rss_mib(fn))
        t0 = time.perf_counter()
        fn()
        first_ms = (time.perf_counter() - t0) * 1e3
        out = dict(ms=time_call(fn, warmup=0, repeat=case["repeat"]) if case["repeat"] else first_ms)
        if case["kind"] == "vmoba":
            out["density"] = vmoba.vmoba_attention(q, k, v, grid, case["layer"], cfg, return_stats=True)[1].density
        return out


def cases(text_len):
    yield "dense SDPA", dict(kind="dense")
    for layer, scheme in enumerate(("1d", "2d", "3d")):
        yield f"VMoBA {scheme}", dict(kind="vmoba", layer=layer)
    budget = vmoba.VMoBAConfig.memory_budget_mb
    for r in (1, 2):
        yield f"criss-cross R={r}", dict(kind="crisscross", recurrence=r, budget_mb=budget)
    yield "criss-cross R=1, unlimited budget", dict(kind="crisscross", recurrence=1, budget_mb=UNLIMITED_MB)
    yield f"criss-cross R=1, {text_len} text", dict(kind="crisscross", recurrence=1, budget_mb=budget,
                                                    text_len=text_len)
    yield f"criss-cross R=1, {text_len} text, unlimited", dict(kind="crisscross", recurrence=1,
                                                               budget_mb=UNLIMITED_MB, text_len=text_len)
    yield f"criss-cross R=1, {text_len} text, 32 MiB", dict(kind="crisscross", recurrence=1, budget_mb=32,
                                                            text_len=text_len)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks that the script runs")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls per case after the first")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of every case (1 by default: steadier timings on a shared machine)")
    ap.add_argument("--out", default=None, help="folder for crisscross_cpu.json (default benchmarks/results)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    grid, text_len = (QUICK_GRID, QUICK_TEXT) if args.quick else (GRID, TEXT)
    rows = []
    for name, case in cases(text_len):
        case = dict(case, grid=list(grid), repeat=args.repeat, threads=args.threads)
        r = dict(name=name, tokens=math.prod(grid) + case.get("text_len", 0), **spawn(__file__, case))
        r["recurrence"], r["budget_mb"] = case.get("recurrence"), case.get("budget_mb")
        rows.append(r)
        print(f"{name}: {r['ms']:.0f} ms, peak +{r['peak_mib']:.0f} MiB", flush=True)
    dense_ms = rows[0]["ms"]
    for r in rows:
        r["vs_dense"] = dense_ms / r["ms"]
    print()
    print_table(rows, [("name", "attention", "{}"), ("tokens", "tokens", "{}"), ("ms", "ms", "{:.0f}"),
                       ("vs_dense", "speed-up vs SDPA", "{:.1f}x"), ("peak_mib", "peak MiB", "{:.0f}"),
                       ("density", "VMoBA density", "{:.3f}")])
    torch.set_num_threads(args.threads)
    info = machine_info()  # torch_threads: the cases' thread count
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    payload = dict(machine=info, grid=list(grid), heads=HEADS, head_dim=DIM, batch=1, dtype="float32",
                   repeat=args.repeat, rows=rows)
    if not args.quick:
        print("wrote", write_json("crisscross_cpu.json", payload, args.out))


if __name__ == "__main__":
    main()
