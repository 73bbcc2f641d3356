"""GPU attention benchmark: dense SDPA (cuDNN and flash) vs FlexAttention vs VMoBA (Triton and PyTorch paths).

    python benchmarks/attention_gpu.py --out benchmarks/results          # on a CUDA machine
    TRITON_INTERPRET=1 python benchmarks/attention_gpu.py --dry-run      # tiny shapes on CPU, checks the script

Shapes: Wan2.1-1.3B 480p x 81 frames (21x30x52 = 32,760 tokens), 576p x 93 frames (24x36x64 = 55,296),
720p x 81 frames (21x45x80 = 75,600) and an 8K grid; B=1, H=12, D=128, bf16. Inputs are structured
(`common.structured_qkv`, sharpness 2): i.i.d. noise makes every block look alike and is not what block
selection meets in a trained model. For each layer scheme the threshold is calibrated so the tile selection
reaches a target density (0.1, 0.25, 0.5 at 32K; 0.25 elsewhere); token granularity reuses that threshold.

Reported per case: forward and forward+backward time of the whole call (selection included), selection and
sparse-kernel time alone (work lists built once, then reused from the selection), speed-up over the
fastest dense backend of the same run, TFLOP/s on the attended pairs, peak memory, relative L2 error
of the output against dense attention.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, rel_l2, structured_qkv, write_json  # noqa: E402

import vmoba  # noqa: E402
from vmoba import VMoBAConfig, get_partition  # noqa: E402
from vmoba.kernels.sparse_attention import block_sparse_attention_torch  # noqa: E402
from vmoba.kernels.sparse_attention_triton import block_sparse_attention_triton  # noqa: E402
from vmoba.selection import compute_selection  # noqa: E402

SHAPES = {
    "8k": (8, 32, 32),
    "wan480p_81f": (21, 30, 52),
    "576p_93f": (24, 36, 64),
    "wan720p_81f": (21, 45, 80),
}


def bench(fn, device):
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def peak_memory(fn, device):
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# Dense baselines measured in every run; speed-ups are quoted against the fastest of them.
DENSE_BACKENDS = ("cudnn", "flash")


def dense_fns(q, k, v, device, name="flash"):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if device.type == "cuda":
        backends = [{"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]]
    else:
        backends = [SDPBackend.MATH]

    def fwd():
        with sdpa_kernel(backends):
            return vmoba.dense_attention(q, k, v)

    def fwd_bwd(dout):
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        with sdpa_kernel(backends):
            vmoba.dense_attention(qg, kg, vg).backward(dout)

    return fwd, fwd_bwd


def dense_baselines(q, k, v, dout, device, name, results):
    """Time every dense backend on these inputs; returns (fastest fwd and fwd+bwd times, an output)."""
    S, heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    rows, out = [], None
    for backend in DENSE_BACKENDS if device.type == "cuda" else ("math",):
        try:
            fwd, fb = dense_fns(q, k, v, device, backend)
            out = fwd()
            ms = dict(fwd=bench(fwd, device), fwd_bwd=bench(lambda: fb(dout), device))
        except Exception as exc:  # a backend this GPU or build lacks
            results["errors"].append(f"dense {backend} on {name}: {exc!r}")
            continue
        rows.append(dict(shape=name, tokens=S, backend=backend, **ms,
                         tflops_fwd=4 * S * S * heads * head_dim / ms["fwd"] / 1e9,
                         peak_mem_mib=peak_memory(lambda: fb(dout), device)))
        print(f"{name} S={S} dense {backend} fwd {ms['fwd']:.2f} ms, fwd+bwd {ms['fwd_bwd']:.2f} ms", flush=True)
    results["dense"] += rows
    best = dict(fwd=min(r["fwd"] for r in rows), fwd_bwd=min(r["fwd_bwd"] for r in rows))
    best["fwd_backend"] = min(rows, key=lambda r: r["fwd"])["backend"]
    best["fwd_bwd_backend"] = min(rows, key=lambda r: r["fwd_bwd"])["backend"]
    results["strongest_dense"].append(dict(shape=name, **best))
    return best, out


def calibrate(q, k, grid, layer, target, backend, steps=10):
    """Threshold whose tile selection has about ``target`` density (bisection; density rises with it)."""
    lo, hi = 0.0, 1.0
    scheme = VMoBAConfig().scheme_for_layer(layer)
    part = get_partition(grid, scheme, VMoBAConfig().chunk_for_scheme(scheme), q.device)
    for _ in range(steps):
        mid = (lo + hi) / 2
        cfg = VMoBAConfig(threshold=mid, granularity="tile", validate_inputs=False)
        density = float(compute_selection(q, k, part, cfg, scheme, backend=backend).density().mean())
        lo, hi = (mid, hi) if density < target else (lo, mid)
    return (lo + hi) / 2


def run_case(shape_name, grid, q, k, v, dout, dense_ms, dense_out, layer, target, granularity, device, backend):
    cfg = VMoBAConfig(granularity=granularity, backend=backend, validate_inputs=False)
    threshold = calibrate(q, k, grid, layer, target, backend)
    cfg = cfg.replace(threshold=threshold)
    scheme = cfg.scheme_for_layer(layer)
    part = get_partition(grid, scheme, cfg.chunk_for_scheme(scheme), device)
    scale = 1 / math.sqrt(q.shape[-1])

    out, stats = vmoba.vmoba_attention(q, k, v, grid, layer, cfg, return_stats=True)
    sel = compute_selection(q, k, part, cfg, scheme, backend=backend)
    attend = block_sparse_attention_triton if backend == "triton" else block_sparse_attention_torch

    fwd_ms = bench(lambda: vmoba.vmoba_attention(q, k, v, grid, layer, cfg), device)
    sel_ms = bench(lambda: compute_selection(q, k, part, cfg, scheme, backend=backend), device)
    kernel_ms = bench(lambda: attend(q, k, v, sel, scale), device)

    def fwd_bwd():
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
        vmoba.vmoba_attention(qg, kg, vg, grid, layer, cfg).backward(dout)

    fb_ms = bench(fwd_bwd, device)
    mem = peak_memory(fwd_bwd, device)
    B, S, H, D = q.shape
    pairs_fwd = stats.density * S * S * B * H
    row = dict(
        shape=shape_name, tokens=S, scheme=scheme, granularity=granularity, target_density=target,
        threshold=round(threshold, 4), density=round(stats.density, 4),
        fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms, selection_ms=sel_ms, kernel_ms=kernel_ms,
        speedup_fwd=dense_ms["fwd"] / fwd_ms, speedup_fwd_bwd=dense_ms["fwd_bwd"] / fb_ms,
        dense_fwd_backend=dense_ms["fwd_backend"], dense_fwd_bwd_backend=dense_ms["fwd_bwd_backend"],
        selection_share=sel_ms / kernel_ms, kernel_tflops=4 * pairs_fwd * D / kernel_ms / 1e9,
        peak_mem_mib=mem, rel_l2_vs_dense=rel_l2(out, dense_out),
    )
    return row


def run_flex(grid, q, k, v, dout, layer, threshold, device):
    """FlexAttention with the BlockMask equivalent to a tile-granularity selection, on blocked-order tensors."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cfg = VMoBAConfig(threshold=threshold, granularity="tile", validate_inputs=False)
    scheme = cfg.scheme_for_layer(layer)
    part = get_partition(grid, scheme, cfg.chunk_for_scheme(scheme), device)
    sel = compute_selection(q, k, part, cfg, scheme, backend="triton")
    tile_of = sel.tiles.token_tile
    block_of = part.blocked_ids()
    tile_mask = sel.mask

    def mask_mod(b, h, q_idx, kv_idx):
        return tile_mask[b, h, tile_of[q_idx], block_of[kv_idx]]

    B, S, H, D = q.shape
    t0 = time.perf_counter()
    block_mask = create_block_mask(mask_mod, B, H, S, S, device=device, _compile=True)
    mask_ms = (time.perf_counter() - t0) * 1e3
    qb, kb, vb = (x.index_select(1, part.order).transpose(1, 2).contiguous() for x in (q, k, v))
    flex = torch.compile(flex_attention, dynamic=False)
    flex(qb, kb, vb, block_mask=block_mask)
    fwd_ms = bench(lambda: flex(qb, kb, vb, block_mask=block_mask), device)
    dob = dout.index_select(1, part.order).transpose(1, 2).contiguous()

    def fwd_bwd():
        qg, kg, vg = (x.detach().requires_grad_() for x in (qb, kb, vb))
        flex(qg, kg, vg, block_mask=block_mask).backward(dob)

    fwd_bwd()
    return dict(scheme=scheme, threshold=threshold, fwd_ms=fwd_ms, fwd_bwd_ms=bench(fwd_bwd, device),
                block_mask_ms=mask_ms, density=float(sel.density().mean()),
                flex_block_density=1 - float(block_mask.sparsity()) / 100)


def config_sweep(grid, q, k, v, dout, layer, threshold, device):
    """Forward and backward launch configurations of the sparse kernel on one case (tile granularity)."""
    from vmoba.kernels.sparse_attention_triton import KernelConfig, default_configs

    cfg = VMoBAConfig(threshold=threshold, granularity="tile", validate_inputs=False)
    scheme = cfg.scheme_for_layer(layer)
    sel = compute_selection(q, k, get_partition(grid, scheme, cfg.chunk_for_scheme(scheme), device), cfg, scheme,
                            backend="triton")
    scale = 1 / math.sqrt(q.shape[-1])
    fwd_default, bwd_default = default_configs(q.shape[-1], q.dtype)
    rows = []
    for f in [fwd_default, KernelConfig(128, 64, 8, 3), KernelConfig(64, 32, 4, 3), KernelConfig(64, 128, 4, 3),
              KernelConfig(32, 32, 4, 3), KernelConfig(64, 64, 4, 4)]:
        try:
            ms = bench(lambda: block_sparse_attention_triton(q, k, v, sel, scale, configs=(f, bwd_default)), device)
            rows.append(dict(scheme=scheme, kind="fwd", config=vars(f), ms=ms))
        except Exception as exc:
            rows.append(dict(scheme=scheme, kind="fwd", config=vars(f), error=repr(exc)))
    for b in [bwd_default, KernelConfig(64, 32, 4, 2), KernelConfig(32, 64, 4, 2), KernelConfig(64, 64, 4, 3),
              KernelConfig(32, 32, 4, 2)]:
        def fb():
            qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
            out, _ = block_sparse_attention_triton(qg, kg, vg, sel, scale, configs=(fwd_default, b))
            out.backward(dout)
        try:
            rows.append(dict(scheme=scheme, kind="fwd+bwd", config=vars(b), ms=bench(fb, device)))
        except Exception as exc:
            rows.append(dict(scheme=scheme, kind="fwd+bwd", config=vars(b), error=repr(exc)))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for attention_gpu.json (default benchmarks/results)")
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on any device, to check the script")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-extras", action="store_true", help="skip the torch path, config sweep and FlexAttention")
    ap.add_argument("--budget-s", type=float, default=330, help="stop starting new cases after this many seconds")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backend = "triton" if device.type == "cuda" or vmoba.kernels._triton.INTERPRET else "torch"
    shapes = {"dry": (3, 6, 8)} if args.dry_run else {n: SHAPES[n] for n in args.shapes}
    heads, head_dim = (2, 16) if args.dry_run else (12, 128)
    start = time.time()
    results = dict(machine=machine_info(), dtype=str(dtype), heads=heads, head_dim=head_dim, dense=[],
                   strongest_dense=[], vmoba=[], flex=[], torch_path=[], config_sweep=[], errors=[])

    def save():
        path = write_json("attention_gpu.json", results, args.out)
        return path

    for name, grid in shapes.items():
        q, k, v = structured_qkv(1, grid, heads, head_dim, dtype=dtype, device=device, sharpness=2.0)
        dout = torch.randn_like(q)
        dense_ms, dense_out = dense_baselines(q, k, v, dout, device, name, results)
        targets = (0.1, 0.25, 0.5) if name in ("wan480p_81f", "dry") else (0.25,)
        for layer in range(3):
            for target in targets:
                for granularity in ("tile", "token"):
                    if time.time() - start > args.budget_s:
                        results["errors"].append(f"time budget reached before {name} L{layer} {target} {granularity}")
                        continue
                    try:
                        row = run_case(name, grid, q, k, v, dout, dense_ms, dense_out, layer, target, granularity,
                                       device, backend)
                        results["vmoba"].append(row)
                        print(f"[{time.time() - start:5.0f}s] {row['scheme']} {granularity:5s} d={row['density']:.3f} "
                              f"fwd {row['fwd_ms']:.2f} ms ({row['speedup_fwd']:.2f}x) fwd+bwd {row['fwd_bwd_ms']:.2f} ms "
                              f"({row['speedup_fwd_bwd']:.2f}x) sel {row['selection_ms']:.2f} kern {row['kernel_ms']:.2f} "
                              f"{row['kernel_tflops']:.0f} TF/s err {row['rel_l2_vs_dense']:.3f}", flush=True)
                    except Exception as exc:  # keep going: one failing case must not cost the whole run
                        results["errors"].append(f"{name} L{layer} {target} {granularity}: {exc!r}")
                        traceback.print_exc()
                    save()
        del q, k, v, dout, dense_out
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # extras on the 32K shape, after every shape had its turn within the budget
    name = "dry" if args.dry_run else "wan480p_81f"
    if name in shapes and not args.no_extras:
        grid = shapes[name]
        q, k, v = structured_qkv(1, grid, heads, head_dim, dtype=dtype, device=device, sharpness=2.0)
        dout = torch.randn_like(q)
        dense_ms = next(d for d in results["strongest_dense"] if d["shape"] == name)
        try:  # the PyTorch path on the same GPU, once, for scale
            cfg = VMoBAConfig(granularity="tile", backend="torch", validate_inputs=False,
                              threshold=calibrate(q, k, grid, 1, 0.25, backend))
            ms = bench(lambda: vmoba.vmoba_attention(q, k, v, grid, 1, cfg), device)
            results["torch_path"].append(dict(shape=name, scheme="2d", granularity="tile", fwd_ms=ms,
                                              speedup_fwd=dense_ms["fwd"] / ms))
        except Exception as exc:
            results["errors"].append(f"torch path: {exc!r}")
        if device.type == "cuda" and time.time() - start < args.budget_s:
            try:
                for layer in (1, 2):
                    results["config_sweep"] += config_sweep(grid, q, k, v, dout, layer,
                                                            calibrate(q, k, grid, layer, 0.25, backend), device)
            except Exception as exc:
                results["errors"].append(f"config sweep: {exc!r}")
                traceback.print_exc()
            save()
        if not args.no_flex and device.type == "cuda" and time.time() - start < args.budget_s:
            try:
                thr = calibrate(q, k, grid, 1, 0.25, backend)
                row = run_flex(grid, q, k, v, dout, 1, thr, device)
                row.update(shape=name, speedup_fwd=dense_ms["fwd"] / row["fwd_ms"],
                           speedup_fwd_bwd=dense_ms["fwd_bwd"] / row["fwd_bwd_ms"])
                results["flex"].append(row)
            except Exception as exc:
                results["errors"].append(f"flex: {exc!r}")
                traceback.print_exc()
        save()

    path = save()
    print()
    print_table(results["dense"], [("shape", "shape", "{}"), ("tokens", "tokens", "{}"), ("backend", "SDPA", "{}"),
                                   ("fwd", "SDPA fwd ms", "{:.2f}"),
                                   ("fwd_bwd", "SDPA fwd+bwd ms", "{:.2f}"), ("tflops_fwd", "TFLOP/s", "{:.0f}")])
    print()
    print_table(results["vmoba"], [
        ("shape", "shape", "{}"), ("scheme", "scheme", "{}"), ("granularity", "gran", "{}"),
        ("density", "density", "{:.3f}"), ("fwd_ms", "fwd ms", "{:.2f}"),
        ("speedup_fwd", "fwd x", "{:.2f}"), ("fwd_bwd_ms", "f+b ms", "{:.2f}"), ("speedup_fwd_bwd", "f+b x", "{:.2f}"),
        ("selection_share", "sel/kern", "{:.2f}"), ("kernel_tflops", "TF/s", "{:.0f}"),
        ("peak_mem_mib", "MiB", "{:.0f}"), ("rel_l2_vs_dense", "rel L2", "{:.3f}"),
    ])
    for key in ("flex", "torch_path", "config_sweep", "errors"):
        if results[key]:
            print(key, results[key])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
