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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class CliError(Exception):
    """A problem with the user's request, reported in one line with exit status 2."""


def _load_pipeline(model: str | None):
    from pathlib import Path

    from .pipelines import load_default_pipeline

    if model is None:
        return load_default_pipeline(quiet=True), True
    path = Path(model)
    index = path / "model_index.json"
    if not index.is_file():
        raise CliError(f"--model {model}: not a diffusers pipeline folder (no model_index.json there)")
    import json

    if json.loads(index.read_text()).get("_class_name") == "VMoBAWanPipeline":
        return load_default_pipeline(path), False
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(path), local_files_only=True), False
    except Exception as exc:  # a broken or partial checkpoint: say which and why
        raise CliError(f"--model {model}: could not load the pipeline: {exc}") from exc


def _generate_once(pipe, args, seed: int):
    import torch

    generator = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    frames = pipe(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                  num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                  generator=generator, output_type="np").frames[0]
    return frames, time.perf_counter() - t0


def cmd_generate(args: argparse.Namespace) -> int:
    """Text to video with the embedded default (or a local) pipeline, VMoBA attention by default."""
    from pathlib import Path

    import vmoba
    from vmoba.pipelines import DEFAULT_VMOBA_CONFIG
    from vmoba.video import psnr, write_video

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise CliError(f"--out {out}: the video is written as H.264 MP4, give a .mp4 path")
    if out.exists() and not args.force:
        raise CliError(f"--out {out} exists; pass --force to replace it")
    if args.height % 16 or args.width % 16:
        raise CliError(f"--height and --width must be multiples of 16, got {args.height}x{args.width}")
    if (args.frames - 1) % 4:
        raise CliError(f"--frames must be 4k+1 (1, 5, 9, 13, 17, ...) for Wan-family VAEs, got {args.frames}")

    pipe, embedded = _load_pipeline(args.model)
    if args.threads or embedded:
        import torch

        # the embedded model is tiny: a second intra-op thread only adds synchronisation, and on a busy
        # 2-core machine it made sampling several times slower
        torch.set_num_threads(args.threads or 1)
    if embedded and not getattr(pipe, "vmoba_trained", False):
        print("note: the embedded default model has random weights (no trained weights are installed), so the "
              "video shows structured noise, not the prompt", file=sys.stderr)
    if args.device:
        pipe.to(args.device)
    base = DEFAULT_VMOBA_CONFIG if embedded else vmoba.VMoBAConfig()
    config = base.replace(threshold=args.threshold, granularity=args.granularity)

    results = {}
    for mode in (["dense", "vmoba"] if args.compare else [args.attention]):
        processors = vmoba.enable(pipe, config) if mode == "vmoba" else {}
        frames, seconds = _generate_once(pipe, args, args.seed)
        densities = [d for p in processors.values() for d in p.densities]
        results[mode] = (frames, seconds, sum(densities) / len(densities) if densities else None)
        if processors:
            vmoba.disable(pipe)
    mode = "vmoba" if args.compare else args.attention
    frames, seconds, density = results[mode]
    write_video(out, frames, fps=args.fps, overwrite=args.force)
    summary = f"wrote {out} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, {mode} attention, {seconds:.1f} s"
    print(summary + (f", mean density {density:.3f})" if density is not None else ")"))
    if args.compare:
        dense_frames, dense_seconds, _ = results["dense"]
        print(f"compare at seed {args.seed}: dense {dense_seconds:.1f} s, vmoba {seconds:.1f} s "
              f"(time ratio dense/vmoba {dense_seconds / seconds:.2f}), mean density {density:.3f}, "
              f"PSNR vmoba vs dense {psnr(frames, dense_frames):.2f} dB")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune in this process; ``accelerate launch -m vmoba.train`` runs the same on several."""
    from .train import run_config

    return run_config(args.config, prog="vmoba train")


def cmd_data_shapes(args: argparse.Namespace) -> int:
    """Write the synthetic moving-shapes video-caption dataset."""
    from .training.shapes import write_shapes_dataset

    try:
        out = write_shapes_dataset(args.out, count=args.count, frames=args.frames, size=args.size, seed=args.seed,
                                   fps=args.fps, force=args.force, progress=True)
    except (ValueError, FileExistsError, NotADirectoryError) as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {args.count} clips ({args.frames} frames, {args.size}x{args.size}) and captions.jsonl to {out}")
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

    gen = sub.add_parser(
        "generate",
        help="text to video with the embedded default model (or --model PATH), VMoBA attention",
        description="Generate a video from a prompt and write it as H.264 MP4. Uses the embedded default "
        "text-to-video model unless --model names a local diffusers pipeline folder.",
    )
    gen.add_argument("prompt", help='what to show, e.g. "a red circle moves right"')
    gen.add_argument("--out", required=True, help="output .mp4 file (not replaced unless --force)")
    gen.add_argument("--attention", choices=["vmoba", "dense"], default="vmoba", help="attention in the transformer")
    gen.add_argument("--model", help="a local diffusers pipeline folder (Wan, CogVideoX, HunyuanVideo, LTX-Video)")
    gen.add_argument("--frames", type=_positive, default=17, help="number of frames, 4k+1 (default 17)")
    gen.add_argument("--height", type=_positive, default=64, help="frame height, a multiple of 16 (default 64)")
    gen.add_argument("--width", type=_positive, default=64, help="frame width, a multiple of 16 (default 64)")
    gen.add_argument("--steps", type=_positive, default=20, help="denoising steps (default 20)")
    gen.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance (default 5)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--threshold", type=_fraction, default=0.25, help="VMoBA selection threshold (default 0.25)")
    gen.add_argument("--granularity", choices=["token", "tile"], default="token")
    gen.add_argument("--fps", type=_positive, default=8)
    gen.add_argument("--device", help="torch device, e.g. cuda (default: where the pipeline loads, the CPU)")
    gen.add_argument("--threads", type=_positive, help="CPU threads for PyTorch (default: 1 for the embedded model)")
    gen.add_argument("--force", action="store_true", help="replace --out if it exists")
    gen.add_argument("--compare", action="store_true",
                     help="run dense and VMoBA at the same seed; print the time ratio, mean density and PSNR")
    gen.set_defaults(func=cmd_generate)

    train = sub.add_parser(
        "train",
        help="fine-tune a video DiT with VMoBA attention (YAML config; see docs/training.md)",
        description="Fine-tune a diffusers video DiT (Wan architecture) with VMoBA attention, in this process. "
        "For several processes or GPUs run: accelerate launch -m vmoba.train --config FILE.",
    )
    train.add_argument("--config", required=True, help="training configuration (YAML)")
    train.set_defaults(func=cmd_train)

    data = sub.add_parser("data", help="make training data", description="Make training datasets.")
    data_sub = data.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    shapes = data_sub.add_parser(
        "shapes",
        help="synthetic clips of colored shapes moving left, right, up or down, with captions",
        description="Write a synthetic video-caption dataset: circles, squares and triangles in red, green, blue "
        "or yellow moving left, right, up or down over a dark or light background, as H.264 MP4 files under "
        "OUT/videos with OUT/captions.jsonl (\"a red circle moves right\").",
    )
    shapes.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    shapes.add_argument("--count", type=_positive, default=1000, help="number of clips (default 1000)")
    shapes.add_argument("--frames", type=_positive, default=17, help="frames per clip, 4k+1 (default 17)")
    shapes.add_argument("--size", type=_positive, default=64, help="frame side in pixels, a multiple of 16 (default 64)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--fps", type=_positive, default=8)
    shapes.add_argument("--force", action="store_true",
                        help="write into a non-empty folder (replaces the clips a previous run listed there)")
    shapes.set_defaults(func=cmd_data_shapes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CliError as exc:
        print(f"vmoba {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
