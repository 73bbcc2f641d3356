"""The ``vmoba`` command line."""

from __future__ import annotations

import argparse
import math
import sys
import time


def _grid(text: str) -> tuple[int, int, int]:
    try:
        grid = tuple(int(x) for x in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 8x30x34, got {text!r}") from None
    if len(grid) != 3 or min(grid) < 1:
        raise argparse.ArgumentTypeError(f"grid must be three positive integers like 8x30x34, got {text!r}")
    return grid  # type: ignore[return-value]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def cmd_bench(args: argparse.Namespace) -> int:
    """VMoBA against dense attention on one attention-layer shape, every layer scheme."""
    import torch

    import vmoba
    from vmoba.synthetic import structured_qkv

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    S = math.prod(args.grid)
    q, k, v = structured_qkv(1, args.grid, args.heads, args.head_dim, seed=args.seed, dtype=dtype, device=device,
                             sharpness=2.0)

    def timed(fn):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, (time.perf_counter() - t0) * 1e3

    dense, dense_ms = timed(lambda: vmoba.dense_attention(q, k, v))
    print(f"grid {args.grid} = {S} tokens, {args.heads} heads x {args.head_dim}, {dtype}, {device}")
    print(f"dense attention (PyTorch SDPA): {dense_ms:.0f} ms")
    print(f"{'layer':5}  {'scheme':6}  {'granularity':11}  {'density':7}  {'ms':>7}  {'speed-up':>8}  {'rel. L2 vs dense':>16}")
    for layer in range(3):
        for granularity in args.granularity:
            cfg = vmoba.VMoBAConfig(threshold=args.threshold, granularity=granularity)
            (out, stats), ms = timed(lambda: vmoba.vmoba_attention(q, k, v, args.grid, layer, cfg, return_stats=True))
            err = ((out.double() - dense.double()).norm() / dense.double().norm()).item()
            print(f"{layer:5}  {stats.scheme:6}  {granularity:11}  {stats.density:7.3f}  {ms:7.0f}  "
                  f"{dense_ms / ms:7.2f}x  {err:16.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmoba",
        description="VMoBA block-sparse attention for diffusers video models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="time VMoBA against dense attention on one layer shape",
        description="Time VMoBA attention against dense PyTorch SDPA for every layer scheme (1d, 2d, 3d) on "
        "structured inputs, and report the attended density and the relative L2 error of the output.",
    )
    bench.add_argument("--grid", type=_grid, default=(8, 30, 34), help="latent grid TxHxW (default 8x30x34)")
    bench.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    bench.add_argument("--head-dim", type=int, default=64, help="head dimension (default 64)")
    bench.add_argument("--threshold", type=_fraction, default=0.25, help="selection threshold (default 0.25)")
    bench.add_argument("--granularity", nargs="+", choices=["token", "tile"], default=["token", "tile"])
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    bench.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
