"""Per-rank work of VMoBA under context parallelism: attended (query, key) pairs per rank, from the selection
alone (no attention is run, no GPU needed).

    python benchmarks/parallel_imbalance.py            # Wan 1.3B at 480p x 81 frames: grid 21x30x52, H=12, D=128
    python benchmarks/parallel_imbalance.py --quick    # a small grid, checks the script

Ulysses gives rank ``r`` the heads ``r*H/P ... (r+1)*H/P - 1`` over the whole sequence, so its work is the sum
of those heads' pairs; heads differ in density, so ranks differ in work and every rank waits for the slowest
at the next all-to-all. Ring gives rank ``r`` the ``r``-th chunk of the queries over every head. Reported for
each: ``imbalance = max / mean - 1`` over ranks (the time lost to waiting, relative to perfect balance), and
for Ulysses also after balancing (`vmoba.parallel.balance_heads`: heads assigned heaviest first to the
lightest rank with room, each rank keeping ``H / P`` heads). Ring's backward exchanges gradients after every
step, so its step-synchronous cost ``sum_i max_r pairs(r, (r+i) % P) / (total / P) - 1`` is reported too.

Inputs: `vmoba.synthetic.structured_qkv` per head, each head with its own field and noise level (from 0.1, a
smooth field whose gate scores single out a few blocks, to 2.0, mostly white noise, where many blocks look
alike): heads of a trained model differ in how local they are, and min-max normalised gate scores do not
depend on a head's logit scale, so noise is what varies the density. Also reported: every head at noise 0.5,
and half the heads structured, half i.i.d. normal (no structure at all: the extreme of unlike heads).
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
from common import RESULTS, machine_info, print_table, structured_qkv  # noqa: E402

from vmoba import VMoBAConfig, get_partition, select_blocks  # noqa: E402
from vmoba.checks import atomic_output  # noqa: E402
from vmoba.parallel import balance_heads  # noqa: E402


def heads_with_noise(grid, noises, head_dim, seed):
    """q, k (1, S, H, D): one structured field per head; a head of noise None is i.i.d. normal (no structure)."""
    qs, ks = [], []
    for h, noise in enumerate(noises):
        if noise is None:
            g = torch.Generator().manual_seed(seed + h)
            q, k = (torch.randn(1, math.prod(grid), 1, head_dim, generator=g) for _ in range(2))
        else:
            q, k, _ = structured_qkv(1, grid, 1, head_dim, seed=seed + h, noise=noise)
        qs.append(q)
        ks.append(k)
    return torch.cat(qs, 2), torch.cat(ks, 2)


def selection(q, k, grid, layer, config) -> tuple[torch.Tensor, torch.Tensor]:
    """([H, S, nb] selection of batch element 0, [S] block of each token)."""
    mask = select_blocks(q, k, grid, layer, config)[0]
    scheme = config.scheme_for_layer(layer)
    ids = get_partition(grid, scheme, config.chunk_for_scheme(scheme)).block_ids
    return mask, ids


def imbalance(loads) -> float:
    loads = torch.as_tensor(loads, dtype=torch.float64)
    return float(loads.max() / loads.mean() - 1)


def ulysses(per_head: torch.Tensor, ranks: int) -> dict:
    H = per_head.numel()
    contiguous = per_head.view(ranks, H // ranks).sum(1)
    order = balance_heads(per_head, ranks)
    balanced = per_head[order].view(ranks, H // ranks).sum(1)
    return {"ranks": ranks, "imbalance": imbalance(contiguous), "balanced_imbalance": imbalance(balanced),
            "rank_pairs": contiguous.tolist(), "balanced_order": order.tolist()}


def ring(mask: torch.Tensor, ids: torch.Tensor, ranks: int) -> dict:
    H, S, nb = mask.shape
    L = S // ranks
    # keys of each block inside each ring chunk: [ranks, nb]
    chunk_sizes = torch.stack([torch.bincount(ids[c * L:(c + 1) * L], minlength=nb) for c in range(ranks)])
    step = torch.zeros(ranks, ranks, dtype=torch.float64)  # [query rank, key chunk]
    for r in range(ranks):
        rows = mask[:, r * L:(r + 1) * L].to(torch.float64)  # [H, L, nb]
        step[r] = (rows.sum((0, 1)) @ chunk_sizes.T.to(torch.float64))
    totals = step.sum(1)
    synchronous = sum(max(step[r, (r + i) % ranks] for r in range(ranks)) for i in range(ranks))
    return {"ranks": ranks, "imbalance": imbalance(totals), "rank_pairs": totals.tolist(),
            "step_synchronous_imbalance": float(synchronous / (totals.sum() / ranks) - 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (checks the script)")
    parser.add_argument("--out", default=str(RESULTS / "parallel_imbalance.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        grid, heads, head_dim, ring_ranks = (6, 8, 12), 4, 32, (2, 4)
        config = VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 3), st_chunk=(2, 4, 4))
    else:  # Wan 2.1 1.3B at 480p x 81 frames, default VMoBA settings
        grid, heads, head_dim, ring_ranks = (21, 30, 52), 12, 128, (2, 3, 4, 6)
        config = VMoBAConfig()
    ulysses_ranks = [p for p in (2, 3, 4, 6, 12) if heads % p == 0 and p < heads]
    S = math.prod(grid)
    ring_ranks = [p for p in ring_ranks if S % p == 0]
    inputs = {
        "varied": [0.1 * (20 ** (h / (heads - 1))) for h in range(heads)],  # 0.1 ... 2.0, geometric
        "uniform": [0.5] * heads,
        # the first half of the heads structured, the second half without structure: contiguous head groups
        # then put unlike heads on unlike ranks, the worst case for Ulysses
        "mixed": [0.5] * (heads // 2) + [None] * (heads - heads // 2),
    }
    results = []
    for name, noises in inputs.items():
        q, k = heads_with_noise(grid, noises, head_dim, seed=1)
        for layer in range(len(config.layer_schedule)):
            t0 = time.perf_counter()
            mask, ids = selection(q, k, grid, layer, config)
            per_head = (mask.to(torch.float64) @ torch.bincount(ids, minlength=mask.shape[-1]).to(torch.float64)).sum(1)
            row = {"inputs": name, "scheme": config.scheme_for_layer(layer), "density_per_head":
                   (per_head / S**2).tolist(), "seconds": time.perf_counter() - t0,
                   "ulysses": [ulysses(per_head, p) for p in ulysses_ranks],
                   "ring": [ring(mask, ids, p) for p in ring_ranks]}
            results.append(row)
            del mask

    table = []
    for row in results:
        for u in row["ulysses"]:
            table.append({"inputs": row["inputs"], "scheme": row["scheme"], "layout": f"ulysses {u['ranks']}",
                          "imb": 100 * u["imbalance"], "bal": 100 * u["balanced_imbalance"], "sync": None})
        for r in row["ring"]:
            table.append({"inputs": row["inputs"], "scheme": row["scheme"], "layout": f"ring {r['ranks']}",
                          "imb": 100 * r["imbalance"], "bal": None, "sync": 100 * r["step_synchronous_imbalance"]})
    print_table(table, [("inputs", "inputs", "{}"), ("scheme", "scheme", "{}"), ("layout", "layout", "{}"),
                        ("imb", "imbalance %", "{:.1f}"), ("bal", "balanced %", "{:.1f}"),
                        ("sync", "step-sync %", "{:.1f}")])
    payload = {"grid": list(grid), "heads": heads, "head_dim": head_dim, "config": {
        "threshold": config.threshold, "threshold_type": config.threshold_type, "granularity": config.granularity,
        "temporal_chunk": config.temporal_chunk, "spatial_chunk": list(config.spatial_chunk),
        "st_chunk": list(config.st_chunk)}, "noise_per_head": inputs, "machine": machine_info(), "results": results}
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
