"""``vmoba data shapes``: the synthetic moving-shapes video-caption dataset."""

from __future__ import annotations

import argparse

from ..training.shapes import RADIUS, write_shapes_dataset
from .arguments import CliError


def run_data_shapes(args: argparse.Namespace) -> int:
    try:
        out = write_shapes_dataset(args.out, count=args.count, frames=args.frames, size=args.size, seed=args.seed,
                                   fps=args.fps, radius=args.radius or RADIUS, force=args.force, progress=True)
    except (ValueError, FileExistsError, NotADirectoryError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {args.count} clips ({args.frames} frames, {args.size}x{args.size}) and captions.jsonl to {out}")
    return 0
