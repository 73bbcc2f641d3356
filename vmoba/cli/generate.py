"""``vmoba generate``: text to video with the embedded default (or a local) pipeline, VMoBA attention by default."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ..config import VMoBAConfig
from ..pipelines import DEFAULT_VMOBA_CONFIG, load_default_pipeline
from ..processors import disable, enable
from ..video import psnr, write_video
from .arguments import CliError
from .runtime import set_threads


def _load_pipeline(model: str | None):
    if model is None:
        return load_default_pipeline(quiet=True), True
    path = Path(model)
    index = path / "model_index.json"
    if not index.is_file():
        raise CliError(f"--model {model}: not a diffusers pipeline folder (no model_index.json there)")
    if json.loads(index.read_text()).get("_class_name") == "VMoBAWanPipeline":
        return load_default_pipeline(path), False
    try:
        return DiffusionPipeline.from_pretrained(str(path), local_files_only=True), False
    except Exception as exc:  # a broken or partial checkpoint: say which and why
        raise CliError(f"--model {model}: could not load the pipeline: {exc}") from exc


def _generate_once(pipe, args, seed: int):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    t0 = time.perf_counter()
    frames = pipe(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                  num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                  generator=generator, output_type="np").frames[0]
    return frames, time.perf_counter() - t0


def run_generate(args: argparse.Namespace) -> int:
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
    # the embedded model is tiny: a second intra-op thread only adds synchronisation, and on a busy
    # 2-core machine it made sampling several times slower
    set_threads(args.threads, 1 if embedded else None)
    if embedded and not getattr(pipe, "vmoba_trained", False):
        print("note: the embedded default model has random weights (no trained weights are installed), so the "
              "video shows structured noise, not the prompt", file=sys.stderr)
    if args.device:
        pipe.to(args.device)
    base = DEFAULT_VMOBA_CONFIG if embedded else VMoBAConfig()
    config = base.replace(threshold=args.threshold, granularity=args.granularity)

    results = {}
    for mode in (["dense", "vmoba"] if args.compare else [args.attention]):
        processors = enable(pipe, config) if mode == "vmoba" else {}
        frames, seconds = _generate_once(pipe, args, args.seed)
        densities = [d for p in processors.values() for d in p.densities]
        results[mode] = (frames, seconds, sum(densities) / len(densities) if densities else None)
        if processors:
            disable(pipe)
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
