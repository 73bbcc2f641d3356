"""Quality cost of tile granularity against token granularity (the paper's per-query rule).

    python benchmarks/granularity_quality.py            # about 10 minutes on 2 cores
    python benchmarks/granularity_quality.py --quick    # small shapes, checks the script

Part 1, attention layers: structured inputs (`common.structured_qkv`, sharpness 2) on two grids, every
scheme, relative L2 error of the output against dense attention (a) at the default threshold 0.25 and
(b) with the tile threshold bisected until tile attends the same density as token: the error at equal
cost, which is what the choice of granularity trades.

Part 2, generation: the embedded default model (`vmoba generate` settings: 20 steps, guidance 5, seed 0)
with dense, VMoBA token and VMoBA tile attention on the same prompts; PSNR of each sparse clip against the
dense clip of the same seed.

Speed is not measured here (see attention_cpu.json and attention_gpu_*.json, which time both
granularities); the JSON goes to benchmarks/results/granularity_quality.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, rel_l2, structured_qkv, write_json  # noqa: E402

import vmoba  # noqa: E402
from vmoba.pipelines import DEFAULT_VMOBA_CONFIG, load_default_pipeline  # noqa: E402
from vmoba.video import psnr  # noqa: E402

GRIDS = [("4k", (5, 24, 34), 4, 64), ("8k", (8, 30, 34), 2, 64)]
PROMPTS = ["a red circle moves right", "a blue square moves up", "a green triangle moves left",
           "a yellow circle moves down"]


def density_and_error(q, k, v, grid, layer, config, dense):
    out, stats = vmoba.vmoba_attention(q, k, v, grid, layer, config, return_stats=True)
    return stats.density, rel_l2(out, dense)


def matched_tile_threshold(q, k, v, grid, layer, base, target, steps):
    """Bisect the tile threshold until the tile density matches ``target`` (density grows with threshold)."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        cfg = base.replace(granularity="tile", threshold=mid)
        mask = vmoba.select_blocks(q, k, grid, layer, cfg)
        sizes = torch.bincount(vmoba.partition_blocks(grid, cfg.scheme_for_layer(layer),
                                                      cfg.chunk_for_scheme(cfg.scheme_for_layer(layer))))
        density = float((mask.float() @ sizes.float()).mean() / q.shape[1])
        lo, hi = (mid, hi) if density < target else (lo, mid)
    return (lo + hi) / 2


def attention_rows(grids, steps):
    rows = []
    base = vmoba.VMoBAConfig(validate_inputs=False)
    for name, grid, heads, dim in grids:
        q, k, v = structured_qkv(1, grid, heads, dim, seed=0, sharpness=2.0)
        dense = vmoba.dense_attention(q.double(), k.double(), v.double()).float()
        for layer, scheme in enumerate(base.layer_schedule):
            token_density, token_err = density_and_error(q, k, v, grid, layer, base.replace(granularity="token"), dense)
            tile_density, tile_err = density_and_error(q, k, v, grid, layer, base.replace(granularity="tile"), dense)
            threshold = matched_tile_threshold(q, k, v, grid, layer, base, token_density, steps)
            matched_density, matched_err = density_and_error(
                q, k, v, grid, layer, base.replace(granularity="tile", threshold=threshold), dense)
            rows.append(dict(shape=name, tokens=q.shape[1], scheme=scheme, token_density=token_density,
                             token_rel_l2=token_err, tile_density=tile_density, tile_rel_l2=tile_err,
                             matched_threshold=threshold, matched_tile_density=matched_density,
                             matched_tile_rel_l2=matched_err))
    return rows


def generation_rows(prompts, steps):
    pipe = load_default_pipeline(quiet=True)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for prompt in prompts:
        clips = {}
        for mode in ("dense", "token", "tile"):
            processors = {} if mode == "dense" else vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG.replace(granularity=mode))
            t0 = time.perf_counter()
            frames = pipe(prompt, height=64, width=64, num_frames=17, num_inference_steps=steps, guidance_scale=5.0,
                          generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
            seconds = time.perf_counter() - t0
            densities = [d for p in processors.values() for d in p.densities]
            clips[mode] = (frames, seconds, sum(densities) / len(densities) if densities else 1.0)
            if processors:
                vmoba.disable(pipe)
        for mode in ("token", "tile"):
            frames, seconds, density = clips[mode]
            rows.append(dict(prompt=prompt, granularity=mode, mean_density=density, seconds=seconds,
                             dense_seconds=clips["dense"][1], psnr_vs_dense_db=psnr(frames, clips["dense"][0])))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and two prompts: checks the script")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grids = [("quick", (3, 8, 12), 2, 32)] if args.quick else GRIDS
    attention = attention_rows(grids, steps=6 if args.quick else 14)
    print_table(attention, [("shape", "shape", "{}"), ("scheme", "scheme", "{}"),
                            ("token_density", "token dens", "{:.3f}"), ("token_rel_l2", "token err", "{:.4f}"),
                            ("tile_density", "tile dens", "{:.3f}"), ("tile_rel_l2", "tile err", "{:.4f}"),
                            ("matched_tile_density", "tile dens (matched)", "{:.3f}"),
                            ("matched_tile_rel_l2", "tile err (matched)", "{:.4f}")])
    generation = generation_rows(PROMPTS[:2] if args.quick else PROMPTS, steps=4 if args.quick else 20)
    print()
    print_table(generation, [("prompt", "prompt", "{}"), ("granularity", "granularity", "{}"),
                             ("mean_density", "density", "{:.3f}"), ("psnr_vs_dense_db", "PSNR vs dense", "{:.2f}"),
                             ("seconds", "s", "{:.1f}"), ("dense_seconds", "dense s", "{:.1f}")])
    if not args.quick:
        path = write_json("granularity_quality.json", dict(machine=machine_info(), attention=attention,
                                                           generation=generation))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
