"""The attention-speed panel: one attention layer timed dense against VMoBA (every scheme) and criss-cross,
on structured inputs at a latent grid the user picks (what ``vmoba bench`` measures), and the partition of
each scheme drawn over the grid."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw

from .. import checks
from ..cli.bench import time_attention_layer
from ..config import SCHEMES, VMoBAConfig
from ..partition import partition_blocks
from .limits import Limits, whole


def check_grid(t: Any, h: Any, w: Any, limits: Limits) -> tuple[int, int, int]:
    grid = tuple(checks.integer(name, whole(v), min=1, max=256)
                 for name, v in (("frames T", t), ("height H", h), ("width W", w)))
    if math.prod(grid) > limits.speed_max_tokens:
        raise ValueError(f"grid {grid[0]}x{grid[1]}x{grid[2]} holds {math.prod(grid):,} tokens; the limit here is "
                         f"{limits.speed_max_tokens:,}")
    return grid


_METHOD_NAMES = {"dense": "dense (PyTorch SDPA)", "vmoba": "VMoBA", "crisscross": "criss-cross"}


def time_layer(grid: tuple[int, int, int], config: VMoBAConfig, *, heads: int = 2, head_dim: int = 64,
               seed: int = 0, repeats: int = 1, on_progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Rows {method, scheme, ms, speedup, density, rel_l2}: dense SDPA, VMoBA at layers 0, 1, 2 of the schedule
    and criss-cross attention, all on the same float32 CPU inputs; the fastest of ``repeats`` timed calls
    (`time_attention_layer`, the measurement ``vmoba bench`` prints)."""

    def label(row: dict) -> str:
        name = _METHOD_NAMES[row["method"]]
        return f"{name}, layer {row['layer']}" if row["layer"] is not None else name

    def progress(row: dict, done: int, total: int) -> None:
        if on_progress is not None:
            on_progress(done, total, f"VMoBA {row['scheme']}" if row["method"] == "vmoba" else
                        "criss-cross" if row["method"] == "crisscross" else "dense")

    layers = range(min(3, len(config.layer_schedule)))
    rows = time_attention_layer(grid, [(layer, config) for layer in layers], heads=heads, head_dim=head_dim, seed=seed,
                                repeats=repeats, crisscross=True, on_row=progress)
    return [dict(method=label(r), scheme=r["scheme"], ms=r["ms"], speedup=r["speedup"], density=r["density"],
                 rel_l2=r["rel_l2"]) for r in rows]


def _palette(n: int) -> np.ndarray:
    """``n`` distinguishable colours (golden-ratio hues), neighbouring block ids far apart in hue."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    v, s = 0.92, 0.55
    p, q_, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack(c, -1) for c in
                      [(np.full(n, v), t, np.full(n, p)), (q_, np.full(n, v), np.full(n, p)),
                       (np.full(n, p), np.full(n, v), t), (np.full(n, p), q_, np.full(n, v)),
                       (t, np.full(n, p), np.full(n, v)), (np.full(n, v), np.full(n, p), q_)]])
    return (table[i, np.arange(n)] * 255).astype(np.uint8)


def partition_image(grid: tuple[int, int, int], config: VMoBAConfig, *, max_frames: int = 8,
                    panel_px: int = 96) -> np.ndarray:
    """One row per scheme (1d, 2d, 3d): the first ``max_frames`` latent frames of the grid, each token
    coloured by its block."""
    T, H, W = grid
    shown = min(T, max_frames)
    cell = max(1, panel_px // max(H, W))
    rows = []
    for scheme in SCHEMES:
        ids = partition_blocks(grid, scheme, config.chunk_for_scheme(scheme)).numpy().reshape(grid)
        colours = _palette(int(ids.max()) + 1)[ids[:shown]]  # (t, H, W, 3)
        tiles = colours.repeat(cell, axis=1).repeat(cell, axis=2)
        gap = np.full((tiles.shape[1], 3, 3), 255, np.uint8)
        strip = np.concatenate([x for t in range(shown) for x in ((tiles[t], gap) if t < shown - 1 else (tiles[t],))],
                               axis=1)
        label = Image.new("RGB", (strip.shape[1], 14), (255, 255, 255))
        chunk = "x".join(str(c) for c in config.chunk_for_scheme(scheme))
        more = f", first {shown} of {T} frames" if shown < T else ""
        ImageDraw.Draw(label).text((2, 1), f"{scheme}: blocks of {chunk} ({ids.max() + 1} blocks{more})", fill=(0, 0, 0))
        rows.append(np.concatenate([np.asarray(label), strip], axis=0))
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        pad = np.full((r.shape[0] + 6, max(width, 260), 3), 255, np.uint8)
        pad[: r.shape[0], : r.shape[1]] = r
        padded.append(pad)
    return np.concatenate(padded, axis=0)
