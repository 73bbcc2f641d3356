"""Motion energy for the demo: energy maps per direction and speed, the estimated flow drawn as colours and
arrows, and the dominant motion in words. Plain functions on clips; example clips from closed forms."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from .. import checks
from ..motion import flow_to_rgb, load_flow_model
from ..motion.render import vectors_to_rgb
from ..motion.synthetic import AffineMotion, dots_clip, grating_clip, image_clip, load_image
from ..pipelines import DEFAULT_VMOBA_CONFIG, load_motion_adapter
from .generation import Generation, VideoRequest, generate
from .limits import Limits
from .media import fit_side, read_clip, resize_clip

COMPASS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")  # y points down


@functools.lru_cache(maxsize=1)
def flow_model():
    """The shipped flow model (its energy stage is the motion-energy bank shown), loaded once."""
    model = load_flow_model()
    model.requires_grad_(False)
    return model


def example_clips(size: int = 96, frames: int = 9) -> dict[str, np.ndarray]:
    """Clips with known motion, ``(T, H, W, 3)`` float in [0, 1]."""
    rng = np.random.default_rng(0)
    photo, _ = image_clip(load_image("coffee"), (size, size), frames, AffineMotion(vx=2.0, vy=-1.0))
    dots, _ = dots_clip(rng, (size, size), frames, AffineMotion(vx=0.0, vy=1.5))
    grating, _ = grating_clip((size, size), frames, direction=math.pi, speed=1.0)
    clips = {"photo moving right and up, 2.2 px/frame": photo,
             "random dots moving down, 1.5 px/frame": dots,
             "grating drifting left, 1 px/frame": grating}
    out = {name: np.repeat(c.clamp(0, 1).numpy()[..., None], 3, axis=-1).astype(np.float32) for name, c in clips.items()}
    # the default model's own kind of clip (64 x 64, 16 frames): a reference for "Generate with this motion"
    triangle, speed = shape_clip("blue", "triangle", "up")
    out[f"blue triangle moving up, {speed:.1f} px/frame"] = triangle
    return out


def shape_clip(color: str, shape: str, direction: str, *, size: int = 64, frames: int = 16) -> tuple[np.ndarray, float]:
    """A clip of the default model's training kind (a shape moving over plain grey) whose path stays in the
    frame (`vmoba.training.shapes.prompted_spec`): ``(T, H, W, 3)`` float in [0, 1], and its speed in pixels
    per frame."""
    from ..training.shapes import prompted_spec, render_clip

    spec = prompted_spec(color, shape, direction, frames=frames, size=size)
    return render_clip(spec, frames=frames, size=size).astype(np.float32) / 255, spec.speed


@dataclass
class MotionAnalysis:
    energy: np.ndarray  # (C, h, w) normalised motion energy
    directions: np.ndarray  # (C,) radians, x right, y down
    speeds: np.ndarray  # (C,) preferred speed, pixels per frame
    num_orientations: int
    flow: np.ndarray  # (2, H, W) pixels per frame at the middle frame
    middle: np.ndarray  # (H, W, 3) the middle frame
    summary: str


def load_clip(path: str | os.PathLike | None, limits: Limits, *, frames: int) -> np.ndarray:
    """An uploaded clip's first ``frames`` frames at most ``limits.motion_max_side`` pixels, ``(T, H, W, 3)``."""
    model = flow_model()
    frames = checks.integer("frames", frames, min=model.min_frames, max=limits.max_clip_frames)
    clip, _ = read_clip(path, limits, max_frames=frames)
    if len(clip) < model.min_frames:
        raise ValueError(f"the video has {len(clip)} frames; motion energy needs at least {model.min_frames}")
    size = fit_side(clip.shape[1], clip.shape[2], limits.motion_max_side)
    return resize_clip(clip, size)


def analyse(clip: np.ndarray, on_progress: Callable[[int, int, str], None] | None = None) -> MotionAnalysis:
    model = flow_model()
    frames = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    with torch.no_grad():
        if on_progress:
            on_progress(0, 2, "motion energy")
        energy = model.energy(frames)
        if on_progress:
            on_progress(1, 2, "flow")
        flow = model(frames)
        if on_progress:
            on_progress(2, 2, "done")
    t = len(clip)
    middle = 0.5 * (clip[(t - 1) // 2] + clip[t // 2])
    return MotionAnalysis(energy.numpy(), model.energy.channel_directions().numpy(),
                          model.energy.channel_speeds().numpy(), model.energy.num_orientations, flow.numpy(), middle, describe(flow.numpy()))


def describe(flow: np.ndarray) -> str:
    """The dominant motion in words: the direction of the mean flow vector and the median speed."""
    vx, vy = flow[0], flow[1]
    speed = np.hypot(vx, vy)
    median = float(np.median(speed))
    mx, my = float(vx.mean()), float(vy.mean())
    coherence = math.hypot(mx, my) / max(float(speed.mean()), 1e-9)
    if median < 0.1:
        return f"Hardly any motion: median speed {median:.2f} px/frame."
    angle = math.degrees(math.atan2(my, mx)) % 360
    word = COMPASS[int(((angle + 22.5) % 360) // 45)]
    text = (f"Mostly moving **{word}** (mean flow ({mx:+.2f}, {my:+.2f}) px/frame, {360 - angle:.0f} degrees "
            f"counter-clockwise from right) at a median speed of **{median:.2f} px/frame**.")
    if coherence < 0.5:
        text += f" The motion is not coherent (mean vector {coherence:.0%} of the mean speed): several directions at once."
    return text


def energy_panel(energy: np.ndarray, directions: np.ndarray, speeds: np.ndarray, num_orientations: int, *,
                 tile: int = 40) -> np.ndarray:
    """Energy maps in a table: one column per preferred direction, one row per preferred speed (temporal
    frequency x pyramid level), all on one brightness scale so the strongest channels stand out.

    Channel ``c`` of `MotionEnergy` is ``((scale * units) + unit) * 2 + d`` with ``unit = frequency *
    num_orientations + orientation``: its direction is ``(orientation, d)``, its speed ``(scale, frequency)``."""
    channels = np.arange(energy.shape[0])
    unit_index, d = np.divmod(channels, 2)
    orientation = unit_index % num_orientations
    row_of = unit_index // num_orientations  # (scale, frequency) pairs in channel order
    col_of = orientation * 2 + d
    n_rows, n_cols = int(row_of.max()) + 1, int(col_of.max()) + 1
    # columns sorted by the preferred direction, rows by the preferred speed
    col_angle = np.array([np.degrees(directions[col_of == c]).mean() % 360 for c in range(n_cols)])
    row_speed = np.array([speeds[row_of == r].mean() for r in range(n_rows)])
    col_order, row_order = np.argsort(np.argsort(col_angle)), np.argsort(np.argsort(row_speed))
    top = float(energy.max()) or 1.0
    head, left = 18, 70
    image = Image.new("RGB", (left + n_cols * (tile + 2), head + n_rows * (tile + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for c in range(n_cols):
        x0 = left + col_order[c] * (tile + 2) + tile // 2
        a = math.radians(col_angle[c])
        dx, dy = math.cos(a) * 7, math.sin(a) * 7
        draw.line([(x0 - dx, 9 - dy), (x0 + dx, 9 + dy)], fill=(0, 0, 0), width=2)
        draw.ellipse([x0 + dx - 2.5, 9 + dy - 2.5, x0 + dx + 2.5, 9 + dy + 2.5], fill=(200, 0, 0))
    for r in range(n_rows):
        draw.text((2, head + row_order[r] * (tile + 2) + tile // 2 - 6), f"{row_speed[r]:.2f} px/f", fill=(0, 0, 0))
    for ch in channels:
        x = left + col_order[col_of[ch]] * (tile + 2)
        y = head + row_order[row_of[ch]] * (tile + 2)
        tile_img = Image.fromarray((np.clip(energy[ch] / top, 0, 1) * 255).astype(np.uint8)).resize((tile, tile), Image.NEAREST)
        image.paste(tile_img.convert("RGB"), (x, y))
    return np.asarray(image)


def flow_picture(flow: np.ndarray, middle: np.ndarray, *, scale: int = 3, spacing: int = 12) -> np.ndarray:
    """The flow in the usual colour code (hue = direction, saturation = speed) with arrows every ``spacing``
    pixels and a colour-wheel key in the corner, beside the middle frame."""
    H, W = flow.shape[1:]
    speed_max = max(float(np.hypot(flow[0], flow[1]).max()), 1e-6)
    colours = Image.fromarray(flow_to_rgb(flow)).resize((W * scale, H * scale), Image.NEAREST)
    draw = ImageDraw.Draw(colours)
    arrow = spacing * scale * 0.45 / speed_max
    for y in range(spacing // 2, H, spacing):
        for x in range(spacing // 2, W, spacing):
            fx, fy = float(flow[0, y, x]), float(flow[1, y, x])
            x0, y0 = x * scale, y * scale
            x1, y1 = x0 + fx * arrow, y0 + fy * arrow
            draw.line([(x0, y0), (x1, y1)], fill=(0, 0, 0), width=2)
            draw.ellipse([x1 - 2, y1 - 2, x1 + 2, y1 + 2], fill=(0, 0, 0))
    wheel = colour_wheel(min(64, W * scale // 3))
    colours.paste(Image.fromarray(wheel), (colours.width - wheel.shape[1] - 4, 4))
    frame = Image.fromarray((np.clip(middle, 0, 1) * 255).astype(np.uint8)).resize(colours.size, Image.BILINEAR)
    out = Image.new("RGB", (colours.width * 2 + 6, colours.height), (255, 255, 255))
    out.paste(frame, (0, 0))
    out.paste(colours, (colours.width + 6, 0))
    return np.asarray(out)


def colour_wheel(size: int) -> np.ndarray:
    """The key of the colour code: direction as hue, speed (0 at the centre) as saturation."""
    u = (np.arange(size) - (size - 1) / 2) / ((size - 1) / 2)
    vx, vy = np.meshgrid(u, u)
    rgb = vectors_to_rgb(vx, vy, max_magnitude=1.0)
    rgb[np.hypot(vx, vy) > 1] = 255
    return rgb


@functools.lru_cache(maxsize=1)
def motion_adapter():
    """The embedded model's motion adapter, loaded once (FileNotFoundError when the package ships none)."""
    adapter = load_motion_adapter()
    adapter.requires_grad_(False)
    return adapter


def generate_with_motion(pipe, clip: np.ndarray, request: VideoRequest, *,
                         on_step: Callable[[int, int], None] | None = None) -> Generation:
    """A clip of the embedded model for ``request`` (a prompt without a direction) that moves as ``clip``
    (``(T, H, W, 3)`` in [0, 1], e.g. from `load_clip`) moves, through the shipped motion adapter."""
    adapter = motion_adapter()
    reference = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2).float()
    with adapter.conditioning(pipe, reference):
        return generate(pipe, request, "vmoba", DEFAULT_VMOBA_CONFIG, on_step=on_step, capture=False)
