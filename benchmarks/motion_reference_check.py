"""Does a clip generated with ``--motion-reference`` move the way the reference moves? Read by the detector.

    python benchmarks/motion_reference_check.py                    # embedded model and its motion adapter
    python benchmarks/motion_reference_check.py --model runs/motion_adapter/final --seeds 1
    python benchmarks/motion_reference_check.py --without-adapter  # the same prompts, no reference: chance
    python benchmarks/motion_reference_check.py --references patterns  # photos, dots and gratings as references

Prompts name a colour and a shape but no direction ("a red circle"), every colour x shape. Each prompt is
generated once per direction, with a rendered reference clip (written through H.264, as a user's file would
be) of a shape and a colour other than the prompt's moving that way. A clip counts as following the reference
when the detector reads the reference's direction; as correct when it also shows the prompt's colour and
shape. ``--references patterns`` uses references that are not shapes instead, in turn a photo (an image the
motion models never train on, `vmoba.motion.synthetic.HELDOUT_IMAGES`), random dots and a drifting grating,
grey, at 1 or 2 pixels per frame. ``--without-adapter`` generates the same prompts without the adapter: the share of clips that happen to
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


PATTERNS = ("photo", "dots", "grating")


def reference_pattern(index: int, direction: str, seed: int, frames: int, size: int) -> tuple[np.ndarray, dict]:
    """A grey clip that is not a shape moving in ``direction``, through H.264: pattern ``index % 3`` of
    `PATTERNS` (a held-out photo, random dots, a grating of 10 pixels per cycle) at 1 or 2 pixels per frame;
    and what it shows."""
    import math
    import tempfile

    from vmoba.motion import synthetic
    from vmoba.training.shapes import DIRECTIONS
    from vmoba.video import read_video, write_video

    dx, dy = DIRECTIONS[direction]
    rng = np.random.default_rng([seed, index, list(DIRECTIONS).index(direction), 13])
    kind, speed = PATTERNS[index % len(PATTERNS)], (1.0, 2.0)[(index // len(PATTERNS) + seed) % 2]
    motion = synthetic.AffineMotion(dx * speed, dy * speed)
    if kind == "photo":
        image = synthetic.load_image(synthetic.HELDOUT_IMAGES[int(rng.integers(len(synthetic.HELDOUT_IMAGES)))])
        clip, _ = synthetic.random_image_clip(rng, image, (size, size), frames, motion)
    elif kind == "dots":
        clip, _ = synthetic.dots_clip(rng, (size, size), frames, motion)
    else:
        clip, _ = synthetic.grating_clip((size, size), frames, direction=math.atan2(dy, dx), speed=speed,
                                         phase=float(rng.uniform(0, 2 * math.pi)))
    video = np.repeat((clip.clamp(0, 1).numpy() * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    with tempfile.TemporaryDirectory() as tmp:
        video = read_video(write_video(Path(tmp) / "reference.mp4", video))
    return video, {"pattern": kind, "speed": speed, "direction": direction}


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
    parser.add_argument("--guidance-scale", type=finite, default=None,
                        help="classifier-free guidance (default: the model's own, as vmoba generate)")
    parser.add_argument("--references", choices=("shapes", "patterns"), default="shapes",
                        help="shapes of another colour and shape than the prompt's (default), or patterns: photos, "
                             "random dots and gratings")
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
    if args.guidance_scale is None:
        args.guidance_scale = defaults.guidance_scale
    size, frames = defaults.height, defaults.num_frames
    pipe.set_progress_bar_config(disable=True)
    processors = vmoba.enable(pipe, defaults.vmoba_config)
    prompts = [{"prompt": f"a {c} {s}", "color": c, "shape": s} for c in COLORS for s in SHAPES][: args.limit]

    rows, t0 = [], time.perf_counter()
    for index, item in enumerate(prompts):
        for direction in DIRECTIONS:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if args.references == "patterns":
                    reference, shown = reference_pattern(index, direction, seed, frames, size)
                else:
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
    if args.references == "patterns":
        for pattern in PATTERNS:
            subset = [r for r in rows if r["reference"]["pattern"] == pattern]
            if subset:
                table.append({"group": f"reference pattern={pattern}", "clips": len(subset),
                              "follows": rate("direction_ok", subset), "correct": rate("correct", subset),
                              "color": rate("color_ok", subset), "shape": rate("shape_ok", subset)})
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
    mode = ("without_adapter" if args.without_adapter else "adapter") + (
        "_patterns" if args.references == "patterns" else "")
    print(f"\n{mode}: moves as the reference in {summary['follows_reference']:.1%} of {len(rows)} clips, and shows the "
          f"prompt's colour and shape too in {summary['correct']:.1%} (colour {summary['color_accuracy']:.1%}, "
          f"shape {summary['shape_accuracy']:.1%}); {summary['seconds_per_clip']} s per clip")
    settings = {"model": args.model or "embedded default", "adapter": not args.without_adapter,
                "references": args.references, "seeds": args.seeds,
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
