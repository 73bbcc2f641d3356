"""VMoBA under diffusers' context parallelism on GPUs: time per call and agreement with one device.

    torchrun --nproc_per_node N benchmarks/parallel_gpu.py [--out DIR]   # N GPUs: Ulysses, ring, both (N >= 4)
    python benchmarks/parallel_gpu.py [--out DIR]                        # one GPU: the single-device baseline
    python benchmarks/parallel_gpu.py --device cpu --quick               # checks the script (numbers meaningless)

Shapes: one attention layer of Wan 2.1 1.3B at 480p x 81 frames (B=1, H=12, D=128, grid 21x30x52, 32,760
tokens), bf16, structured inputs (`common.structured_qkv`), default `VMoBAConfig`, every layer scheme. Each
layout times, per call and on the slowest rank, dense attention through diffusers' own context-parallel path
(``dispatch_attention_fn`` with the ``_native_cudnn`` backend on GPU) and VMoBA through
`vmoba.parallel.context_parallel_attention`, forward and forward+backward, and reports the relative L2 error of
the gathered VMoBA output against `vmoba_attention` on the whole sequence on one device. One GPU: the same
two attentions without context parallelism, and the ring form's work emulated there (every shard step of one
rank of a 2-rank ring, run in sequence), since its shard steps run the PyTorch block path, not the Triton
kernels.

Writes ``parallel_gpu_<gpu>_<N>x.json`` under ``--out`` (default benchmarks/results): the machine, commit,
versions, driver, and per row the times, speedups, TFLOP/s on attended pairs (all ranks together) and error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine_info, print_table, rel_l2, structured_qkv, time_call  # noqa: E402

from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig  # noqa: E402
from diffusers.models.attention_dispatch import dispatch_attention_fn  # noqa: E402

from vmoba import VMoBAConfig, select_blocks, vmoba_attention  # noqa: E402
from vmoba.checks import atomic_output  # noqa: E402
from vmoba.parallel import VMoBARing, context_parallel_attention  # noqa: E402


def timed(fn, device, repeat: int) -> float:
    """Median milliseconds of ``fn()`` on the slowest rank (every rank starts together)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        if dist.is_initialized():
            dist.barrier()

    ms = torch.tensor(time_call(fn, warmup=1, repeat=repeat, sync=sync))
    if dist.is_initialized():
        dist.all_reduce(ms, op=dist.ReduceOp.MAX)
    return float(ms)


def forward_backward(fn, q, k, v):
    def run():
        qs, ks, vs = (x.detach().requires_grad_(True) for x in (q, k, v))
        fn(qs, ks, vs).float().square().mean().backward()
    return run


def layouts(world: int) -> list[tuple[str, ContextParallelConfig | None]]:
    if world == 1:
        return [("single", None)]
    found = [("ulysses", ContextParallelConfig(ulysses_degree=world)),
             ("ring", ContextParallelConfig(ring_degree=world))]
    if world >= 4 and world % 2 == 0:
        found.append(("unified", ContextParallelConfig(ring_degree=2, ulysses_degree=world // 2)))
    return found


def parallel_config(cp: ContextParallelConfig, device: torch.device) -> ParallelConfig:
    config = ParallelConfig(context_parallel_config=cp)
    mesh = dist.device_mesh.init_device_mesh(device.type, cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    config.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="small shapes (checks the script)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("no GPU here: pass --device cpu --quick to check the script")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if args.quick:
        grid, heads, head_dim, dtype = (4, 8, 12), 4, 32, torch.float32
        config = VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 3), st_chunk=(2, 4, 4))
    else:
        grid, heads, head_dim = (21, 30, 52), 12, 128
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        config = VMoBAConfig()
    S = math.prod(grid)
    q, k, v = structured_qkv(1, grid, heads, head_dim, seed=0, dtype=dtype, device=device, sharpness=2.0)
    dense_backend = "_native_cudnn" if device.type == "cuda" else "native"

    rows = []
    for layer in range(len(config.layer_schedule)):
        scheme = config.scheme_for_layer(layer)
        whole, stats = vmoba_attention(q, k, v, grid, layer, config, return_stats=True)
        pairs = stats.density * S * S * heads  # attended (query, key) pairs of the layer, every rank together
        for name, cp in layouts(world):
            pc = None if cp is None else parallel_config(cp, device)
            L = S // world
            shard = slice(rank * L, (rank + 1) * L)  # diffusers' split: rank r of the flattened mesh holds chunk r
            ql, kl, vl = (x[:, shard].contiguous() for x in (q, k, v)) if world > 1 else (q, k, v)

            def sparse(q_, k_, v_):
                return context_parallel_attention(
                    lambda a, b, c: vmoba_attention(a, b, c, grid, layer, config, return_stats=True), q_, k_, v_,
                    parallel_config=pc, ring=VMoBARing(grid, layer, config))[0]

            def dense(q_, k_, v_):
                return dispatch_attention_fn(q_, k_, v_, backend=dense_backend, parallel_config=pc)

            out = sparse(ql, kl, vl)
            if world > 1:
                out = torch.cat(list(torch.distributed.nn.functional.all_gather(out.contiguous())), dim=1)
            row = {"scheme": scheme, "layout": name, "ranks": world, "tokens": S,
                   "rel_l2_vs_one_device": rel_l2(out, whole),
                   "vmoba_fwd_ms": timed(lambda: sparse(ql, kl, vl), device, args.repeat),
                   "vmoba_fwd_bwd_ms": timed(forward_backward(sparse, ql, kl, vl), device, args.repeat)}
            row["vmoba_density"] = stats.density
            # all ranks together: 4 * D flops per attended pair forward (two matrix products)
            row["vmoba_tflops_fwd"] = 4 * pairs * head_dim / row["vmoba_fwd_ms"] / 1e9
            if name in ("single", "ulysses") or device.type == "cuda":  # diffusers' native CPU op has no ring form
                row["dense_fwd_ms"] = timed(lambda: dense(ql, kl, vl), device, args.repeat)
                row["dense_fwd_bwd_ms"] = timed(forward_backward(dense, ql, kl, vl), device, args.repeat)
                row["vmoba_speedup_fwd"] = row["dense_fwd_ms"] / row["vmoba_fwd_ms"]
                row["vmoba_speedup_fwd_bwd"] = row["dense_fwd_bwd_ms"] / row["vmoba_fwd_bwd_ms"]
            if world == 1:  # the ring form's work: both shard steps of rank 0 of a 2-rank ring
                ring = VMoBARing(grid, layer, config)
                half = S // 2
                ring.place(half, 0, 2, device)
                ring.rows = select_blocks(q, k, grid, layer, config)[:, :, :half]  # rank 0's rows
                row["ring2_steps_emulated_fwd_ms"] = timed(
                    lambda: [ring.attend_shard(q[:, :half], k[:, c * half:(c + 1) * half],
                                               v[:, c * half:(c + 1) * half], c) for c in (0, 1)], device, args.repeat)
            rows.append(row)

    if rank == 0:
        print_table(rows, [("scheme", "scheme", "{}"), ("layout", "layout", "{}"), ("ranks", "ranks", "{}"),
                           ("dense_fwd_ms", "dense fwd ms", "{:.1f}"), ("vmoba_fwd_ms", "vmoba fwd ms", "{:.1f}"),
                           ("vmoba_speedup_fwd", "x fwd", "{:.2f}"), ("vmoba_speedup_fwd_bwd", "x fwd+bwd", "{:.2f}"),
                           ("vmoba_tflops_fwd", "TFLOP/s", "{:.1f}"),
                           ("rel_l2_vs_one_device", "rel L2 vs 1 device", "{:.1e}")])
        info = machine_info()
        gpu = re.sub(r"[^a-z0-9]+", "_", info.get("gpu", device.type).lower()).strip("_")
        path = Path(args.out) / f"parallel_gpu_{gpu}_{world}x{'_quick' if args.quick else ''}.json"
        payload = {"grid": list(grid), "heads": heads, "head_dim": head_dim, "dtype": str(dtype),
                   "dense_backend": dense_backend, "machine": info, "results": rows}
        if device.type == "cuda":
            payload["cuda"] = torch.version.cuda
            try:
                payload["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                    text=True, check=True).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                payload["driver"] = None
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {path}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
