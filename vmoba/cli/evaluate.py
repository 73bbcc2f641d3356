"""``vmoba eval events``: event-to-video reconstruction on held-out sequences, written as JSON."""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ..checks import atomic_output
from ..events.data import SequenceConfig
from ..events.evaluate import evaluate, format_table
from ..pipelines.event_to_video import EventToVideoPipeline
from .arguments import CliError, output_file
from .runtime import set_threads


def run_eval_events(args: argparse.Namespace) -> int:
    out = output_file(args.out, args.force, suffix=".json")
    set_threads(args.threads, 1)
    try:
        pipe = (EventToVideoPipeline.from_pretrained(args.weights) if args.weights
                else EventToVideoPipeline.from_default_weights())
    except (OSError, ValueError) as exc:
        raise CliError(f"--weights {args.weights or '(shipped)'}: could not load the pipeline: {exc}") from None
    pipe.set_progress_bar_config(disable=True)
    start = time.time()
    result = evaluate(pipe, args.sequences, config=SequenceConfig(num_frames=args.frames),
                      num_inference_steps=args.steps, first=args.first, use_lpips=not args.no_lpips)
    result["weights"] = args.weights or "shipped (vmoba/weights/events)"
    result["seconds"] = round(time.time() - start, 1)
    result["machine"] = f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    with atomic_output(out) as partial:
        partial.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    print(f"LPIPS: {result['lpips']}; {args.sequences} sequences in {result['seconds']} s -> {out}")
    return 0
