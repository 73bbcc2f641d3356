"""GPU benchmark: the fused Triton criss-cross kernel beside its PyTorch path and dense SDPA (flash).

    python benchmarks/crisscross_gpu.py --out benchmarks/results          # on a CUDA machine
    TRITON_INTERPRET=1 python benchmarks/crisscross_gpu.py --dry-run      # tiny shapes on CPU, checks the script

Shapes: an 8K grid and Wan2.1-1.3B 480p x 81 frames (21 x 30 x 52 = 32,760 video tokens); B=1, H=12, D=128,
bf16; without text and with 512 text tokens (text first). Per case: forward and forward+backward time of
`criss_cross_attention` with 1 and 2 loops on the Triton backend, the same on the PyTorch backend (float32
compute, one loop), dense SDPA, peak memory of the forward+backward call, relative L2 error of the Triton
output against the PyTorch path, and the bandwidth the kernel reaches on the video keys and values it reads
(each query reads T + H + W - 2 + L keys and values of D elements).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_gpu import bench, peak_memory  # noqa: E402
from common import machine_info, print_table, rel_l2, write_json  # noqa: E402

import vmoba  # noqa: E402

SHAPES = {"8k": (8, 32, 32), "wan480p_81f": (21, 30, 52)}
TEXT = 512


def timings(attend, q, k, v, dout, device):
    """(forward ms, forward+backward ms, peak MiB of forward+backward) of ``attend(q, k, v)``."""

    def fwd():
        with torch.no_grad():
            attend(q, k, v)

    def fwd_bwd():
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        attend(qg, kg, vg).backward(dout)

    return bench(fwd, device), bench(fwd_bwd, device), peak_memory(fwd_bwd, device)


def run_shape(name, grid, text_len, heads, dim, dtype, device, with_torch):
    S = math.prod(grid) + text_len
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(1, S, heads, dim, generator=gen).to(device, dtype) for _ in range(4))
    T, H, W = grid
    rows = []

    def row(label, attend, recurrence=1):
        fwd_ms, fb_ms, mem = timings(attend, q, k, v, dout, device)
        r = dict(shape=name, grid=list(grid), text_len=text_len, attention=label, recurrence=recurrence,
                 fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, peak_mib=mem)
        if label.startswith("criss-cross triton"):
            keys = math.prod(grid) * heads * (T + H + W - 2 + text_len) * recurrence
            r["read_gbs"] = 2 * keys * dim * q.element_size() / (fwd_ms * 1e-3) / 1e9  # keys and values read
        rows.append(r)
        print(f"{name} L={text_len} {label} R={recurrence}: fwd {fwd_ms:.2f} ms, fwd+bwd {fb_ms:.2f} ms, "
              f"peak {mem if mem is None else round(mem)} MiB", flush=True)
        return r

    def criss_cross(backend, recurrence):
        return lambda q, k, v: vmoba.criss_cross_attention(q, k, v, grid, text_len=text_len, recurrence=recurrence,
                                                           backend=backend)

    dense = row("dense SDPA", lambda q, k, v: vmoba.dense_attention(q, k, v))
    for r in (1, 2):
        tri = row("criss-cross triton", criss_cross("triton", r), r)
        tri["vs_dense_fwd"] = dense["fwd_ms"] / tri["fwd_ms"]
        tri["vs_dense_fwd_bwd"] = dense["fwd_bwd_ms"] / tri["fwd_bwd_ms"]
    with torch.no_grad():
        out = criss_cross("triton", 1)(q, k, v)
        ref = criss_cross("torch", 1)(q.float(), k.float(), v.float())
    rows[1]["rel_l2_vs_torch"] = rel_l2(out, ref)
    if with_torch:
        torch_row = row("criss-cross torch", criss_cross("torch", 1))
        rows[1]["vs_torch_fwd"] = torch_row["fwd_ms"] / rows[1]["fwd_ms"]
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for crisscross_gpu.json (default benchmarks/results)")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on any device, to check the script")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch path (slow at 32K tokens)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        sys.exit("crisscross_gpu.py needs a CUDA GPU (use --dry-run with TRITON_INTERPRET=1 to check the script)")
    shapes = {"dry": (2, 3, 5)} if args.dry_run else {n: SHAPES[n] for n in args.shapes}
    heads, dim, text = (2, 16, 4) if args.dry_run else (12, 128, TEXT)
    dtype = torch.float32 if device.type != "cuda" else torch.bfloat16
    rows = []
    for name, grid in shapes.items():
        for text_len in (0, text):
            try:
                rows += run_shape(name, grid, text_len, heads, dim, dtype, device, not args.no_torch)
            except Exception as exc:  # one failing shape must not lose the others' numbers
                print(f"{name} L={text_len} failed: {type(exc).__name__}: {exc}", flush=True)
                rows.append(dict(shape=name, text_len=text_len, error=f"{type(exc).__name__}: {exc}"))
    print()
    print_table([r for r in rows if "error" not in r], [
        ("shape", "shape", "{}"), ("text_len", "text", "{}"), ("attention", "attention", "{}"),
        ("recurrence", "R", "{}"), ("fwd_ms", "fwd ms", "{:.2f}"), ("fwd_bwd_ms", "fwd+bwd ms", "{:.2f}"),
        ("vs_dense_fwd", "fwd vs SDPA", "{:.1f}x"), ("peak_mib", "peak MiB", "{:.0f}"),
        ("read_gbs", "K/V read GB/s", "{:.0f}"), ("rel_l2_vs_torch", "rel L2 vs torch", "{:.1e}"),
    ])
    info = machine_info()
    if device.type == "cuda":
        import triton

        info.update(triton=triton.__version__, cuda=torch.version.cuda)
    payload = dict(machine=info, heads=heads, head_dim=dim, dtype=str(dtype), rows=rows)
    if not args.dry_run:
        print("wrote", write_json("crisscross_gpu.json", payload, args.out))


if __name__ == "__main__":
    main()
