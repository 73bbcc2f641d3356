"""Does a clip generated with ``--motion-reference`` move the way the reference moves? Read by the detector.

    python benchmarks/motion_reference_check.py                    # embedded model and its motion adapter
    python benchmarks/motion_reference_check.py --model runs/motion_adapter/final --seeds 1
    python benchmarks/motion_reference_check.py --without-adapter  # the same prompts, no reference: chance

Prompts name a colour and a shape but no direction ("a red circle"), every colour x shape. Each prompt is
generated once per direction, with a rendered reference clip (written through H.264, as a user's file would
be) of a shape and a colour other than the prompt's moving that way. A clip counts as following the reference
when the detector reads the reference's direction; as correct when it also shows the prompt's colour and
shape. ``--without-adapter`` generates the same prompts without the adapter: the share of clips that happen to
move in the reference's direction is the chance level the adapter has to beat.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

from vmoba.cli.arguments import finite, natural_int, positive_int  # noqa: E402
from default_model_check import ground_truth_clip, judge  # noqa: E402


def reference_clip(prompt: dict, direction: str, seed: int, frames: int, size: int) -> tuple[np.ndarray, dict]:
    """A rendered clip moving in ``direction``, of a colour and a shape other than the prompt's (picked by
    ``seed``), through H.264 (`ground_truth_clip`); and what it shows."""
    from vmoba.training.shapes import COLORS, DIRECTIONS, SHAPES

    rng = np.random.default_rng([seed, list(DIRECTIONS).index(direction), 11])
    shown = {"color": str(rng.choice([c for c in COLORS if c != prompt["color"]])),
             "shape": str(rng.choice([s for s in SHAPES if s != prompt["shape"]])), "direction": direction}
    return ground_truth_clip(shown, seed, frames, size), shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pipeline folder with its motion_adapter.safetensors (default: the "
                        "embedded model)")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="clips per prompt and direction (seeds F..F+N-1, F from --first-seed)")
    parser.add_argument("--first-seed", type=natural_int, default=0,
                        help="first seed (of the references and the generation): settings chosen on other seeds than "
                             "the reported ones")
    parser.add_argument("--steps", type=positive_int, default=20, help="denoising steps (the CLI's default)")
    parser.add_argument("--guidance-scale", type=finite, default=5.0)
    parser.add_argument("--without-adapter", action="store_true",
                        help="generate without the adapter (the chance level of following the reference)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts (a quick look)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--save-videos", help="also write every clip (and its reference) as MP4 into this folder")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default=None, help="JSON file name (default from the mode)")
    args = parser.parse_args(argv)

    import vmoba
    from vmoba.pipelines import load_motion_adapter, load_pipeline
    from vmoba.training.detector import detect_clip
    from vmoba.training.shapes import COLORS, DIRECTIONS, SHAPES
    from vmoba.video import write_video

    torch.set_num_threads(args.threads)
    try:
        pipe = load_pipeline(args.model)
        adapter = None if args.without_adapter else load_motion_adapter(args.model)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"--model {args.model}: {exc}" if args.model else str(exc))
    defaults = pipe.vmoba_defaults
    size, frames = defaults.height, defaults.num_frames
    pipe.set_progress_bar_config(disable=True)
    processors = vmoba.enable(pipe, defaults.vmoba_config)
    prompts = [{"prompt": f"a {c} {s}", "color": c, "shape": s} for c in COLORS for s in SHAPES][: args.limit]

    rows, t0 = [], time.perf_counter()
    for item in prompts:
        for direction in DIRECTIONS:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                reference, shown = reference_clip(item, direction, seed, frames, size)
                start = time.perf_counter()
                call = dict(height=size, width=size, num_frames=frames, num_inference_steps=args.steps,
                            guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(seed),
                            output_type="np")
                if adapter is None:
                    video = pipe(item["prompt"], **call).frames[0]
                else:
                    ref = torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255
                    with adapter.conditioning(pipe, ref):
                        video = pipe(item["prompt"], **call).frames[0]
                seconds = time.perf_counter() - start
                if args.save_videos:
                    name = f"{item['prompt'].replace(' ', '-')}-{direction}-{seed}"
                    write_video(Path(args.save_videos) / f"{name}.mp4", video, overwrite=True)
                    write_video(Path(args.save_videos) / f"{name}-reference.mp4", reference, overwrite=True)
                row = judge(detect_clip(video), {**item, "direction": direction})
                rows.append({**item, "direction": direction, "reference": shown, "seed": seed,
                             "seconds": round(seconds, 2), **row})

    def rate(key, subset=rows):
        return sum(r[key] for r in subset) / len(subset)

    summary = {"clips": len(rows), "follows_reference": rate("direction_ok"), "correct": rate("correct"),
               "color_accuracy": rate("color_ok"), "shape_accuracy": rate("shape_ok"),
               "color_stable": rate("color_stable"), "size_stable": rate("size_stable"),
               "seconds_per_clip": round((time.perf_counter() - t0) / len(rows), 2),
               "vmoba_mean_density": round(float(np.mean([d for p in processors.values() for d in p.densities])), 4)}
    table = []
    for key, values in (("direction", list(DIRECTIONS)), ("color", list(COLORS)), ("shape", list(SHAPES))):
        for value in values:
            subset = [r for r in rows if r[key] == value]
            if subset:
                table.append({"group": f"{'reference ' if key == 'direction' else 'prompt '}{key}={value}",
                              "clips": len(subset), "follows": rate("direction_ok", subset),
                              "correct": rate("correct", subset), "color": rate("color_ok", subset),
                              "shape": rate("shape_ok", subset)})
    print_table(table, [("group", "clips with", "{}"), ("clips", "clips", "{}"),
                        ("follows", "moves as the reference", "{:.0%}"),
                        ("correct", "and colour and shape", "{:.0%}"),
                        ("color", "colour", "{:.0%}"), ("shape", "shape", "{:.0%}")])
    mode = "without_adapter" if args.without_adapter else "adapter"
    print(f"\n{mode}: moves as the reference in {summary['follows_reference']:.1%} of {len(rows)} clips, and shows the "
          f"prompt's colour and shape too in {summary['correct']:.1%} (colour {summary['color_accuracy']:.1%}, "
          f"shape {summary['shape_accuracy']:.1%}); {summary['seconds_per_clip']} s per clip")
    settings = {"model": args.model or "embedded default", "adapter": not args.without_adapter, "seeds": args.seeds,
                "first_seed": args.first_seed,
                "steps": args.steps, "guidance_scale": args.guidance_scale, "size": size, "frames": frames,
                "attention": "vmoba", "vmoba_config": defaults.vmoba_config.to_dict(),
                "command": "python benchmarks/motion_reference_check.py " + " ".join(argv if argv is not None
                                                                                     else sys.argv[1:])}
    path = write_json(args.name or f"motion_reference_check_{mode}.json",
                      {"settings": settings, "summary": summary, "groups": table, "clips": rows,
                       "machine": machine_info()}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
