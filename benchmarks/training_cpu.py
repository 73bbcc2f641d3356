"""Training throughput on CPU: optimizer steps per second of a Wan-architecture transformer, dense attention
against VMoBA, at long sequences.

    python benchmarks/training_cpu.py                 # the default transformer at 4K and 8K tokens
    python benchmarks/training_cpu.py --quick         # tiny shapes, checks the script
    python benchmarks/training_cpu.py --device cuda   # 16K and 32K tokens, bf16 (run by gpu_check.sh)

Each step is what `vmoba.train` runs per micro-batch minus data loading: the flow-matching loss on random
latents and text embeddings, backward, gradient clipping, AdamW. The transformer is the embedded default's
architecture (6 layers, 4 heads of 32), so attention is a large share of the work at these lengths, as in the
big models at theirs. VMoBA uses the model's DEFAULT_VMOBA_CONFIG blocks scaled to the grid (see
``vmoba_config``), threshold 0.25; the reported density is the fraction of query-key pairs attended.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

SHAPES = [("4k", (4, 32, 32)), ("8k", (8, 32, 32))]  # post-patch token grids (T, H, W)
QUICK_SHAPES = [("quick", (2, 8, 8))]
GPU_SHAPES = [("16k", (16, 32, 32)), ("32k", (21, 30, 52))]  # 32K: the Wan 480p 81-frame grid


def vmoba_config(grid, granularity: str):
    """Blocks of about 1/8 of the grid per scheme axis, the proportion the defaults have at Wan 480p."""
    import vmoba

    T, H, W = grid
    return vmoba.VMoBAConfig(temporal_chunk=max(1, T // 4), spatial_chunk=(max(1, H // 4), max(1, W // 4)),
                             st_chunk=(max(1, T // 2), max(1, H // 4), max(1, W // 4)), threshold=0.25,
                             granularity=granularity)


def measure(grid, mode: str, steps: int, warmup: int, seed: int = 0, device: str = "cpu") -> dict:
    import vmoba
    from diffusers import WanTransformer3DModel

    from vmoba.pipelines.default import _TRANSFORMER
    from vmoba.training.objectives import sample_sigmas

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**_TRANSFORMER).to(device)
    processors = vmoba.enable(model, vmoba_config(grid, mode.split("-")[1])) if mode.startswith("vmoba") else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pt, ph, pw = _TRANSFORMER["patch_size"]
    T, H, W = grid
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, _TRANSFORMER["in_channels"], T * pt, H * ph, W * pw, generator=g).to(device)
    context = torch.randn(1, 16, _TRANSFORMER["text_dim"], generator=g).to(device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        s = sample_sigmas(1, g, shift=3.0).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        noisy = (1 - s) * x0 + s * noise
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):  # bf16 on GPU, as vmoba.train runs
            pred = model(hidden_states=noisy, timestep=s * 1000, encoder_hidden_states=context, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise - x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    for p in processors.values():
        p.reset_stats()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / steps
    densities = [d for p in processors.values() for d in p.densities]
    return {"tokens": math.prod(grid), "grid": list(grid), "mode": mode, "seconds_per_step": round(seconds, 3),
            "steps_per_s": round(1 / seconds, 4),
            "density": round(sum(densities) / len(densities), 4) if densities else 1.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    shapes = QUICK_SHAPES if args.quick else GPU_SHAPES if gpu else SHAPES
    steps = args.steps or (2 if args.quick else 10 if gpu else 3)
    rows = []
    for name, grid in shapes:
        dense = None
        for mode in ("dense", "vmoba-token", "vmoba-tile"):
            row = {"shape": name, **measure(grid, mode, steps, warmup=2 if gpu else 1, device=args.device)}
            dense = dense or row["seconds_per_step"]
            row["speedup_vs_dense"] = round(dense / row["seconds_per_step"], 3)
            rows.append(row)
            print(f"{name} {mode}: {row['seconds_per_step']} s/step", flush=True)
    print()
    print_table(rows, [("shape", "shape", "{}"), ("tokens", "tokens", "{}"), ("mode", "attention", "{}"),
                       ("density", "density", "{:.3f}"), ("seconds_per_step", "s/step", "{:.2f}"),
                       ("steps_per_s", "steps/s", "{:.3f}"), ("speedup_vs_dense", "vs dense", "{:.2f}x")])
    name = f"training_{'gpu' if gpu else 'cpu'}{'_quick' if args.quick else ''}.json"
    path = write_json(name, {"rows": rows, "steps": steps, "device": args.device, "machine": machine_info()}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
