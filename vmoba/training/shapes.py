"""Synthetic video-caption data: plain shapes moving in a straight line, and a detector that reads them back.

Each clip shows one shape (circle, square or triangle) in one saturated color (red, green, blue or yellow)
moving left, right, up or down at constant speed over a plain dark or light grey background; its caption says
so in plain words ("a red circle moves right"). Every caption word is in the default model's vocabulary.

The detector is the measuring stick for generated clips (``benchmarks/default_model_check.py``): foreground =
strongly coloured pixels (the backgrounds are grey), color = nearest palette hue of their mean, direction = sign
of the dominant axis of the foreground centroid's motion, shape = triangle when the upper half of its bounding
box holds much less of it than the lower half, else square or circle by how much of the box it fills.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 35, 35), "green": (35, 175, 55), "blue": (40, 75, 230), "yellow": (235, 205, 30)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUNDS = ("dark", "light")
VERBS = ("moves", "moves", "moves", "goes", "slides")
SUPERSAMPLE = 4  # sub-pixels per pixel side: smooth edges, which H.264 keeps better than hard ones
MIN_CHROMA = 80  # max - min channel (0-255) above which a pixel counts as foreground; greys stay far below


@dataclass(frozen=True)
class ClipSpec:
    """Everything that defines one synthetic clip."""

    color: str
    shape: str
    direction: str
    background: str
    caption: str
    rgb: tuple[int, int, int]
    background_level: int
    radius: float  # half the shape's extent, pixels
    start: tuple[float, float]  # centre (x, y) at the first frame, pixels
    speed: float  # pixels per frame


def _combinations() -> list[tuple[str, str, str, str]]:
    return [(c, s, d, b) for c in COLORS for s in SHAPES for d in DIRECTIONS for b in BACKGROUNDS]


def clip_spec(index: int, *, frames: int = 17, size: int = 64, seed: int = 0) -> ClipSpec:
    """The ``index``-th clip of a dataset: a function of (seed, index) only. Consecutive indices run through
    every (color, shape, direction, background) combination in a seeded order, so any prefix is balanced."""
    combos = _combinations()
    cycle, slot = divmod(index, len(combos))
    order = np.random.default_rng([seed, cycle, 7]).permutation(len(combos))
    color, shape, direction, background = combos[order[slot]]
    rng = np.random.default_rng([seed, index])
    rgb = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255)) for v in COLORS[color])
    level = int(rng.integers(12, 45)) if background == "dark" else int(rng.integers(200, 236))
    radius = size * rng.uniform(0.11, 0.16)
    travel = size * rng.uniform(0.35, 0.55)
    speed = travel / max(frames - 1, 1)
    dx, dy = DIRECTIONS[direction]
    margin = 1.2 * radius + 1.0  # the triangle reaches 1.2 radius above its centre
    # the whole path stays inside the frame: start so that start + travel still leaves a margin
    lo_x = margin + (travel if dx < 0 else 0.0)
    hi_x = size - margin - (travel if dx > 0 else 0.0)
    lo_y = margin + (travel if dy < 0 else 0.0)
    hi_y = size - margin - (travel if dy > 0 else 0.0)
    start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
    verb = VERBS[int(rng.integers(len(VERBS)))]
    caption = f"a {color} {shape} {verb} {direction}"
    if rng.random() < 0.5:
        caption += f" on a {background} background"
    return ClipSpec(color, shape, direction, background, caption, rgb, level, float(radius), start, float(speed))


def _coverage(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = r * 0.9  # about the circle's area, so the shapes differ in outline rather than in size
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # equilateral triangle pointing up, centred on its centroid, circumradius 1.2 r
    R = 1.2 * r
    top, base = cy - R, cy + R / 2
    half_width = (dy + R) / (1.5 * R) * (R * math.sqrt(3) / 2)
    return (y >= top) & (y <= base) & (np.abs(dx) <= half_width)


def render_clip(spec: ClipSpec, *, frames: int = 17, size: int = 64) -> np.ndarray:
    """uint8 frames ``(frames, size, size, 3)`` of one clip, anti-aliased by supersampling."""
    n = size * SUPERSAMPLE
    sub = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(sub, sub)
    dx, dy = DIRECTIONS[spec.direction]
    background = np.full(3, spec.background_level, dtype=np.float64)
    color = np.asarray(spec.rgb, dtype=np.float64)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for f in range(frames):
        cx = spec.start[0] + dx * spec.speed * f
        cy = spec.start[1] + dy * spec.speed * f
        cover = _coverage(spec.shape, x, y, cx, cy, spec.radius).astype(np.float64)
        alpha = cover.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
        out[f] = np.round(background * (1 - alpha) + color * alpha).astype(np.uint8)
    return out


def write_shapes_dataset(out: str | Path, *, count: int = 1000, frames: int = 17, size: int = 64, seed: int = 0,
                         fps: int = 8, force: bool = False, progress: bool = False) -> Path:
    """Write ``count`` clips as H.264 MP4 (``videos/NNNNNN.mp4``) and ``captions.jsonl`` into ``out``.

    Refuses a non-empty ``out`` unless ``force``; with ``force`` the files a previous run listed in its
    ``captions.jsonl`` are replaced, nothing else there is touched.
    """
    from ..video import write_video

    out = Path(out)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if frames < 2 or (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1 and at least 5 (Wan-family VAEs), got {frames}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and at least 32 (H.264 macroblocks), got {size}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to write the dataset into it anyway")
        _remove_previous(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = []
    indices = range(count)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="clips", unit="clip")
    for i in indices:
        spec = clip_spec(i, frames=frames, size=size, seed=seed)
        name = f"videos/{i:06d}.mp4"
        write_video(out / name, render_clip(spec, frames=frames, size=size), fps=fps, overwrite=True)
        meta = asdict(spec)
        rows.append({"file": name, "caption": meta.pop("caption"), **meta})
    with open(out / "captions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return out


def _remove_previous(out: Path) -> None:
    index = out / "captions.jsonl"
    if not index.is_file():
        return
    for line in index.read_text().splitlines():
        try:
            name = json.loads(line).get("file")
        except (json.JSONDecodeError, AttributeError):
            continue
        path = (out / name).resolve() if isinstance(name, str) else None
        if path is not None and path.is_file() and out.resolve() in path.parents:
            path.unlink()
    index.unlink()


# -- the detector ---------------------------------------------------------------------------------------


def __getattr__(name: str):
    # The detector lives in .detector, which reads this module's palette; importing it lazily keeps
    # `from vmoba.training.shapes import detect_clip` working without an import cycle.
    if name in ("detect_clip", "Detection"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prompt_grid(colors=None, shapes=None, directions=None) -> list[dict[str, str]]:
    """Prompts for every (color, shape, direction), each with what it asks for."""
    return [{"prompt": f"a {c} {s} moves {d}", "color": c, "shape": s, "direction": d}
            for c in (colors or COLORS) for s in (shapes or SHAPES) for d in (directions or DIRECTIONS)]
