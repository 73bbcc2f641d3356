"""``vmoba generate``: text to video with the embedded default (or a local) pipeline, VMoBA attention by default."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import torch

from ..pipelines import loading
from ..processors import CrissCrossAttnProcessor, VMoBAProcessor, disable, enable
from ..video import psnr, read_video, write_video
from .arguments import CliError, output_file
from .runtime import require_device, set_threads

PROCESSORS = {"vmoba": VMoBAProcessor, "crisscross": CrissCrossAttnProcessor}
H264_MULTIPLE = 16  # write_video's macro blocks


def _load(model: str | None):
    try:
        return loading.load_pipeline(model)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"--model {model}: {exc}") from None


def _sizes(args: argparse.Namespace, pipe) -> dict[str, int | None]:
    """Requested sizes, else the model's own; checked against the model's rule before anything runs."""
    defaults = pipe.vmoba_defaults
    sizes = {"height": args.height or defaults.height, "width": args.width or defaults.width,
             "num_frames": args.frames or defaults.num_frames}
    try:
        loading.video_size_rule(pipe).check(**sizes, extra_spatial_multiple=H264_MULTIPLE)
    except ValueError as exc:
        option = {"height": "--height", "width": "--width", "num_frames": "--frames"}[str(exc).split()[0]]
        raise CliError(f"{option}: {exc}") from None
    return sizes


def _motion_reference(args: argparse.Namespace, pipe):
    """The model's motion adapter holding the --motion-reference clip, checked before anything is generated;
    None without the option."""
    if args.motion_reference is None:
        return None
    try:
        adapter = loading.load_motion_adapter(args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"--motion-reference needs a motion adapter: {exc}") from None
    try:
        video = read_video(args.motion_reference)
    except FileNotFoundError as exc:
        raise CliError(f"--motion-reference: {exc}") from None
    except Exception as exc:  # imageio's many reader errors: the file is not a video it can decode
        raise CliError(f"--motion-reference {args.motion_reference}: not a readable video ({exc})") from None
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255  # (T, 3, H, W) in [0, 1]
    try:
        adapter.set_reference(frames)
        with adapter.conditioning(pipe):  # the adapter fits this transformer
            pass
    except (TypeError, ValueError) as exc:
        raise CliError(f"--motion-reference {args.motion_reference}: {exc}") from None
    return adapter


def _generate(pipe, args: argparse.Namespace, sizes: dict, mode: str, config,
              reference=None) -> tuple[np.ndarray, float, float | None]:
    """One video with ``mode`` attention (and the motion of ``reference``, a motion adapter holding its
    reference clip): frames, seconds, mean attended density (None when dense)."""
    processors = enable(pipe, config, processor=PROCESSORS[mode]) if mode in PROCESSORS else {}
    motion = reference.conditioning(pipe) if reference is not None else contextlib.nullcontext()
    try:
        with motion:
            generator = torch.Generator(device="cpu").manual_seed(args.seed)
            t0 = time.perf_counter()
            # no --guidance-scale: the pipeline's own default (the embedded model records 2)
            call = {} if args.guidance_scale is None else {"guidance_scale": args.guidance_scale}
            frames = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                          generator=generator, output_type="np", **call, **sizes).frames[0]
            seconds = time.perf_counter() - t0
    finally:
        if processors:
            disable(pipe)
    densities = [d for p in processors.values() for d in p.densities]
    return frames, seconds, (sum(densities) / len(densities) if densities else None)


def run_generate(args: argparse.Namespace) -> int:
    out = output_file(args.out, args.force, suffix=".mp4")
    device = require_device(args.device)
    pipe = _load(args.model)
    defaults = pipe.vmoba_defaults
    sizes = _sizes(args, pipe)
    set_threads(args.threads or defaults.threads)
    if args.model is None and not getattr(pipe, "vmoba_trained", False):
        print("note: the embedded default model has random weights (no trained weights are installed), so the "
              "video shows structured noise, not the prompt", file=sys.stderr)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    config = defaults.vmoba_config.replace(**{name: value for name, value in
                                              (("threshold", args.threshold), ("granularity", args.granularity))
                                              if value is not None})
    mode = args.attention or defaults.attention
    reference = _motion_reference(args, pipe)
    frames, seconds, density = _generate(pipe, args, sizes, mode, config, reference)
    write_video(out, frames, fps=args.fps, overwrite=args.force)  # complete or not at all (atomic_output)
    settings = (f"{mode} attention" + (f" (threshold {config.threshold}, {config.granularity}; settings of "
                                          f"{defaults.source})" if mode == "vmoba" else ""))
    if reference is not None:
        settings += f", the motion of {args.motion_reference}"
    print(f"wrote {out} ({frames.shape[0]} frames {frames.shape[2]}x{frames.shape[1]}, {settings}, {seconds:.1f} s"
          + (f", mean density {density:.3f})" if density is not None else ")"))
    if args.compare:
        dense_frames, dense_seconds, _ = _generate(pipe, args, sizes, "dense", config, reference)
        print(f"compare at seed {args.seed}: dense {dense_seconds:.1f} s, {mode} {seconds:.1f} s "
              f"(time ratio dense/{mode} {dense_seconds / seconds:.2f})"
              + (f", mean density {density:.3f}" if density is not None else "")
              + f", PSNR {mode} vs dense {psnr(frames, dense_frames):.2f} dB")
    return 0
