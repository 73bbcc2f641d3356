"""Does the default text-to-video model show what the prompt asks for? Generated clips, read by a detector.

    python benchmarks/default_model_check.py                       # embedded model, 48 prompts x 2 seeds
    python benchmarks/default_model_check.py --model runs/default/final --seeds 1
    python benchmarks/default_model_check.py --ground-truth        # the detector on rendered clips instead
    python benchmarks/default_model_check.py --autoencoder         # rendered clips through the model's VAE
    python benchmarks/default_model_check.py --from-noise 0.7      # rendered clips noised, then denoised

Prompts: every color x shape x direction ("a red circle moves right"). Each clip is read by
`vmoba.training.detector.detect_clip` (colour and area of the shape in every frame, its shape from the angular
harmonics of its outline, its direction from the centroid's motion; docs/training.md, "The detector"). A clip
counts as correct when color, shape and direction all match the prompt. Two more measures per clip: color
stable (every frame shows the shape in the prompt's colour class) and size stable (the shape is seen in every
frame and its area changes by at most 20% from one frame to the next). ``--ground-truth`` renders the clips
with the dataset generator and writes them through H.264, so the detector's own accuracy is measured on the
same path. ``--autoencoder`` sends those rendered clips through the model's VAE (encode, decode): the
accuracy the transformer could reach at best with this VAE. ``--from-noise SIGMA`` encodes those rendered
clips, mixes in seeded noise to noise level SIGMA (``(1 - SIGMA) x + SIGMA noise``, the flow-matching
path) and lets the model denoise from there with the prompt, over the scheduler's steps below SIGMA: what
the model keeps or draws once the layout is given, which tells where in the schedule a property is lost
(SIGMA 1 is plain generation from pure noise). Results written before the detector read shapes
counted color and direction only: ``color_direction_accuracy`` is that measure.
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
from vmoba.training.detector import MAX_ELONGATION  # noqa: E402

MAX_AREA_CHANGE = 0.2  # largest frame-to-frame change of the shape's area that still counts as keeping its size


def ground_truth_clip(item: dict, seed: int, frames: int, size: int, radius=None) -> np.ndarray:
    """A rendered clip with exactly the prompt's color, shape and direction, passed through H.264; ``radius``:
    the dataset's shape-size range (`vmoba.training.shapes.RADIUS` when None)."""
    import tempfile

    from vmoba.training.shapes import RADIUS, prompted_spec, render_clip
    from vmoba.video import read_video, write_video

    spec = prompted_spec(item["color"], item["shape"], item["direction"], seed=seed, frames=frames, size=size,
                         radius=radius or RADIUS)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_video(Path(tmp) / "clip.mp4", render_clip(spec, frames=frames, size=size))
        return read_video(path)


def judge(found, item: dict) -> dict:
    """One clip's row: what the detector read, frame by frame, and whether it is what ``item`` asked for."""
    areas = found.areas
    changes = [abs(b - a) / a for a, b in zip(areas, areas[1:]) if a > 0 and b > 0]
    seen_everywhere = all(a > 0 for a in areas)
    max_change = max(changes) if changes and seen_everywhere else None
    color_ok, shape_ok = found.color == item["color"], found.shape == item["shape"]
    direction_ok = found.direction == item["direction"]
    return {"found_color": found.color, "found_shape": found.shape, "found_direction": found.direction,
            "shape_share": round(found.shape_share, 3), "velocity": found.velocity,
            "frame_colors": found.colors, "frame_shapes": found.shapes,
            "frame_areas": [round(a, 1) for a in areas],
            # the stretch of each frame's shape (0 for the three shapes; over MAX_ELONGATION the frame is none)
            "frame_elongations": [None if f.elongation is None else round(f.elongation, 3) for f in found.frames],
            "max_area_change": None if max_change is None else round(max_change, 4),
            "color_ok": color_ok, "shape_ok": shape_ok, "direction_ok": direction_ok,
            "correct": color_ok and shape_ok and direction_ok, "color_direction_ok": color_ok and direction_ok,
            "color_stable": all(c == item["color"] for c in found.colors),
            "size_stable": max_change is not None and max_change <= MAX_AREA_CHANGE}


def clip_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` -> the VAE's input ``(1, 3, F, H, W)`` in [-1, 1]."""
    return torch.from_numpy(video).float().permute(3, 0, 1, 2)[None] / 127.5 - 1


def clip_uint8(decoded: torch.Tensor) -> np.ndarray:
    """The VAE's output ``(1, 3, F, H, W)`` -> uint8 ``(F, H, W, 3)``."""
    return ((decoded.float().clamp(-1, 1)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


@torch.no_grad()
def denoise_from(pipe, video: np.ndarray, prompt: str, sigma: float, steps: int, guidance_scale: float,
                 seed: int) -> np.ndarray:
    """``video`` encoded, noised to ``sigma`` and denoised by ``pipe`` with ``prompt`` (classifier-free guidance
    as the pipeline applies it) over the scheduler's steps whose noise level is at most ``sigma``."""
    from vmoba.training.objectives import latent_statistics, noised

    vae, transformer, scheduler = pipe.vae, pipe.transformer, pipe.scheduler
    mean, std = latent_statistics(vae)
    clean = (vae.encode(clip_tensor(video).to(vae.dtype)).latent_dist.mean.float() - mean) / std
    scheduler.set_timesteps(steps)
    first = int((scheduler.sigmas[:-1] <= sigma + 1e-6).nonzero()[0]) if sigma < 1 else 0
    scheduler.set_begin_index(first)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    latents = noised(clean, scheduler.sigmas[first : first + 1], noise)
    cond, uncond = pipe.encode_prompt(prompt, "", do_classifier_free_guidance=True, device=clean.device,
                                      max_sequence_length=pipe.config.max_sequence_length)  # the model's own
    for t in scheduler.timesteps[first:]:
        timestep = t.expand(1)
        v = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=cond, return_dict=False)[0]
        v_uncond = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=uncond,
                               return_dict=False)[0]
        latents = scheduler.step(v_uncond + guidance_scale * (v - v_uncond), t, latents, return_dict=False)[0]
    return clip_uint8(vae.decode((latents * std + mean).to(vae.dtype)).sample)


@torch.no_grad()
def reconstruct(vae, video: np.ndarray) -> np.ndarray:
    """uint8 ``(F, H, W, 3)`` through the VAE (posterior mean), back to uint8."""
    return clip_uint8(vae.decode(vae.encode(clip_tensor(video).to(vae.dtype)).latent_dist.mean).sample)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pipeline folder (default: the embedded default model)")
    parser.add_argument("--seeds", type=positive_int, default=2,
                        help="clips per prompt (seeds F..F+N-1, F from --first-seed)")
    parser.add_argument("--first-seed", type=natural_int, default=0,
                        help="first seed; choose settings (guidance, steps) on other seeds than the ones reported")
    parser.add_argument("--steps", type=positive_int, default=20, help="denoising steps (the CLI's default)")
    parser.add_argument("--guidance-scale", type=finite, default=None,
                        help="classifier-free guidance (default: the model's own, as vmoba generate)")
    parser.add_argument("--attention", choices=["vmoba", "dense"], default="vmoba")
    parser.add_argument("--ground-truth", action="store_true", help="measure the detector on rendered clips")
    parser.add_argument("--autoencoder", action="store_true",
                        help="measure the detector on rendered clips reconstructed by the model's VAE")
    parser.add_argument("--from-noise", type=finite, metavar="SIGMA",
                        help="denoise rendered clips noised to this level (0 < SIGMA <= 1) instead of generating")
    parser.add_argument("--radius", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="with --ground-truth, --autoencoder or --from-noise: render shapes of this size range, "
                        "as 'vmoba data shapes --radius' does (default: its default)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts (a quick look)")
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--save-videos", help="also write every clip as MP4 into this folder")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default=None, help="JSON file name (default from the mode)")
    args = parser.parse_args(argv)

    import vmoba
    from vmoba.pipelines import load_pipeline
    from vmoba.pipelines.default import DEFAULT_SIZE
    from vmoba.training.detector import detect_clip
    from vmoba.training.shapes import prompt_grid
    from vmoba.video import write_video

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = prompt_grid()[: args.limit]
    size, frames = DEFAULT_SIZE["height"], DEFAULT_SIZE["num_frames"]
    pipe = vae = None
    if sum(map(bool, (args.ground_truth, args.autoencoder, args.from_noise is not None))) > 1:
        parser.error("--ground-truth, --autoencoder and --from-noise are different measurements: give one")
    if args.from_noise is not None and not 0 < args.from_noise <= 1:
        parser.error(f"--from-noise must be in (0, 1], got {args.from_noise}")
    rendered = args.ground_truth or args.autoencoder or args.from_noise is not None
    if args.radius and not rendered:
        parser.error("--radius sizes rendered clips (--ground-truth, --autoencoder, --from-noise); generated clips "
                     "have the size the model draws")
    if args.radius:
        from vmoba.training.shapes import check_radius

        try:
            check_radius(args.radius)
        except ValueError as exc:
            parser.error(f"--radius: {exc}")
    if not args.ground_truth:
        try:  # the model's own sampling settings (attention config, guidance) come with it: pipe.vmoba_defaults
            pipe = load_pipeline(args.model)
        except (FileNotFoundError, ValueError) as exc:
            parser.error(f"--model {args.model}: {exc}" if args.model else str(exc))
        if not getattr(pipe, "vmoba_trained", True):
            print("note: the default model has random weights; expect chance-level accuracy", file=sys.stderr)
        defaults = pipe.vmoba_defaults
        if args.autoencoder:
            vae, pipe = pipe.vae, None
        else:
            pipe.set_progress_bar_config(disable=True)
            processors = vmoba.enable(pipe, defaults.vmoba_config) if args.attention == "vmoba" else {}
            if args.guidance_scale is None:
                args.guidance_scale = defaults.guidance_scale

    rows, t0 = [], time.perf_counter()
    for item in prompts:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            start = time.perf_counter()
            if pipe is None:
                video = ground_truth_clip(item, seed, frames, size, args.radius)
                if vae is not None:
                    video = reconstruct(vae, video)
            elif args.from_noise is not None:
                video = denoise_from(pipe, ground_truth_clip(item, seed, frames, size, args.radius), item["prompt"],
                                     args.from_noise, args.steps, args.guidance_scale, seed)
            else:
                video = pipe(item["prompt"], height=size, width=size, num_frames=frames,
                             num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                             generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
            seconds = time.perf_counter() - start
            if args.save_videos:
                name = item["prompt"].replace(" ", "-") + f"-{seed}.mp4"
                write_video(Path(args.save_videos) / name, video, overwrite=True)
            rows.append({**item, "seed": seed, "seconds": round(seconds, 2), **judge(detect_clip(video), item)})

    def rate(key, subset=rows):
        return sum(r[key] for r in subset) / len(subset)

    changes = [r["max_area_change"] for r in rows if r["max_area_change"] is not None]
    elongations = [e for r in rows for e in r["frame_elongations"] if e is not None]
    summary = {"clips": len(rows), "accuracy": rate("correct"), "color_accuracy": rate("color_ok"),
               "shape_accuracy": rate("shape_ok"), "direction_accuracy": rate("direction_ok"),
               "color_direction_accuracy": rate("color_direction_ok"), "color_stable": rate("color_stable"),
               "size_stable": rate("size_stable"),
               "median_max_area_change": round(float(np.median(changes)), 4) if changes else None,
               "frames_elongated": round(float(np.mean([e > MAX_ELONGATION for e in elongations])), 4)
               if elongations else None,
               "median_elongation": round(float(np.median(elongations)), 4) if elongations else None,
               "seconds_per_clip": round((time.perf_counter() - t0) / len(rows), 2)}
    if pipe is not None and processors:
        densities = [d for p in processors.values() for d in p.densities]
        summary["vmoba_mean_density"] = round(sum(densities) / len(densities), 4)
    table = []
    for key, values in (("color", ["red", "green", "blue", "yellow"]), ("direction", ["left", "right", "up", "down"]),
                        ("shape", ["circle", "square", "triangle"])):
        for value in values:
            subset = [r for r in rows if r[key] == value]
            if not subset:
                continue
            table.append({"group": f"{key}={value}", "clips": len(subset), "correct": rate("correct", subset),
                          "color": rate("color_ok", subset), "shape": rate("shape_ok", subset),
                          "direction": rate("direction_ok", subset), "color_stable": rate("color_stable", subset),
                          "size_stable": rate("size_stable", subset)})
    print_table(table, [("group", "prompts with", "{}"), ("clips", "clips", "{}"),
                        ("correct", "color+shape+direction", "{:.0%}"), ("color", "color", "{:.0%}"),
                        ("shape", "shape", "{:.0%}"), ("direction", "direction", "{:.0%}"),
                        ("color_stable", "color stable", "{:.0%}"), ("size_stable", "size stable", "{:.0%}")])
    mode = ("ground_truth" if args.ground_truth else "autoencoder" if args.autoencoder
            else f"from_noise_{args.from_noise:g}_{args.attention}" if args.from_noise is not None
            else f"model_{args.attention}")
    print(f"\n{mode}: color, shape and direction all right in {summary['accuracy']:.1%} of {len(rows)} clips "
          f"(color {summary['color_accuracy']:.1%}, shape {summary['shape_accuracy']:.1%}, direction "
          f"{summary['direction_accuracy']:.1%}); color stable in every frame {summary['color_stable']:.1%}, size "
          f"stable (<= {MAX_AREA_CHANGE:.0%} a frame) {summary['size_stable']:.1%}; accuracy (color and direction "
          f"match the prompt) {summary['color_direction_accuracy']:.1%}, the measure of earlier results; "
          f"{summary['seconds_per_clip']} s per clip")
    settings = {"model": args.model or "embedded default", "accuracy": "color, shape and direction all right",
                "seeds": args.seeds, "first_seed": args.first_seed, "steps": args.steps, "radius": args.radius,
                "from_noise": args.from_noise,
                "guidance_scale": args.guidance_scale, "attention": args.attention, "size": size, "frames": frames,
                "command": "python benchmarks/default_model_check.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = write_json(args.name or f"default_model_check_{mode}.json",
                      {"settings": settings, "summary": summary, "groups": table, "clips": rows, "machine": machine_info()},
                      args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
