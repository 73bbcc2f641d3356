"""Synthetic video-caption data: plain shapes moving in a straight line, and a detector that reads them back.

Each clip shows one shape (circle, square or triangle) in one saturated color (red, green, blue or yellow)
moving left, right, up or down at constant speed over a plain dark or light grey background; its caption says
so in plain words ("a red circle moves right"). Every caption word is in the default model's vocabulary.

The detector that reads clips back (colour and area in every frame, shape, direction) is
``vmoba.training.detector``; ``detect_clip`` stays importable from here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .. import checks
from ..video import write_video

COLORS = {"red": (220, 35, 35), "green": (35, 175, 55), "blue": (40, 75, 230), "yellow": (235, 205, 30)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUNDS = ("dark", "light")
VERBS = ("moves", "moves", "moves", "goes", "slides")
SUPERSAMPLE = 4  # sub-pixels per pixel side: smooth edges, which H.264 keeps better than hard ones
RADIUS = (0.11, 0.16)  # the shape's half-extent, drawn uniformly, as a fraction of the frame's side


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


def check_radius(radius) -> tuple[float, float]:
    """``(low, high)`` fractions of the frame's side with ``0 < low <= high <= 0.3``: at most 0.3, so a
    triangle (1.2 radius above its centre) still has room to move within the frame."""
    try:
        low, high = (float(v) for v in radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be two fractions of the frame's side (low, high), got {radius!r}") from None
    if not (0 < low <= high <= 0.3) or not all(map(math.isfinite, (low, high))):
        raise ValueError(f"radius must satisfy 0 < low <= high <= 0.3 (fractions of the frame's side), got "
                         f"({low}, {high})")
    return low, high


def clip_spec(index: int, *, frames: int = 17, size: int = 64, seed: int = 0,
              radius: tuple[float, float] = RADIUS) -> ClipSpec:
    """The ``index``-th clip of a dataset: a function of (seed, index) only. Consecutive indices run through
    every (color, shape, direction, background) combination in a seeded order, so any prefix is balanced.
    ``radius``: the range of the shape's half-extent, as fractions of ``size``; a path longer than the
    frame leaves room for is shortened (never with the default range)."""
    low, high = check_radius(radius)
    combos = _combinations()
    cycle, slot = divmod(index, len(combos))
    order = np.random.default_rng([seed, cycle, 7]).permutation(len(combos))
    color, shape, direction, background = combos[order[slot]]
    rng = np.random.default_rng([seed, index])
    rgb = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255)) for v in COLORS[color])
    level = int(rng.integers(12, 45)) if background == "dark" else int(rng.integers(200, 236))
    radius = size * rng.uniform(low, high)
    margin = 1.2 * radius + 1.0  # the triangle reaches 1.2 radius above its centre
    travel, span = size * rng.uniform(0.35, 0.55), size - 2 * margin
    if travel > span:  # only large shapes: the default range always fits (0.55 size <= span for size >= 32)
        travel = 0.85 * span  # leaves the start some room
    speed = travel / max(frames - 1, 1)
    dx, dy = DIRECTIONS[direction]
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


def prompted_spec(color: str, shape: str, direction: str, *, seed: int = 0, frames: int = 17,
                  size: int = 64, radius: tuple[float, float] = RADIUS) -> ClipSpec:
    """Clip ``seed`` of a dataset (its size, speed, background) showing exactly ``color`` (the palette's RGB),
    ``shape`` and ``direction``, started so that its whole path stays in the frame: centred along the motion,
    at the clip's own position (kept a radius from the border) across it. What the checks render."""
    spec = clip_spec(seed, frames=frames, size=size, seed=seed, radius=radius)
    r, travel = spec.radius + 1, spec.speed * (frames - 1)
    dx, dy = DIRECTIONS[direction]
    x = size / 2 - dx * travel / 2 if dx else float(np.clip(spec.start[0], r, size - r))
    y = size / 2 - dy * travel / 2 if dy else float(np.clip(spec.start[1], r, size - r))
    return replace(spec, color=color, shape=shape, direction=direction, rgb=COLORS[color], start=(x, y))


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


MANIFEST = ".vmoba-shapes-manifest.jsonl"


def write_shapes_dataset(out: str | Path, *, count: int = 1000, frames: int = 17, size: int = 64, seed: int = 0,
                         fps: int = 8, radius: tuple[float, float] = RADIUS, force: bool = False,
                         progress: bool = False) -> Path:
    """Write ``count`` clips as H.264 MP4 (``videos/NNNNNN.mp4``) and ``captions.jsonl`` into ``out``.
    ``radius``: the shapes' half-extent range as fractions of ``size`` (`clip_spec`).

    Refuses a non-empty ``out`` unless ``force``. Every file written is recorded, with its SHA-256, in the
    manifest ``out/.vmoba-shapes-manifest.jsonl``; with ``force`` only files that a previous run recorded there
    and that are unchanged since are replaced or removed. Any other file in the way (a user's own
    ``captions.jsonl`` or video) stops the command before anything is written.
    """

    out = Path(out)
    count = checks.integer("count", count, min=1)
    frames = checks.integer("frames", frames, min=2)
    size = checks.integer("size", size, min=1)
    seed = checks.integer("seed", seed, min=0)
    fps = checks.integer("fps", fps, min=1)
    radius = check_radius(radius)
    force = checks.boolean("force", force)
    progress = checks.boolean("progress", progress)
    if (frames - 1) % 4:
        raise ValueError(f"frames must be 4k+1 and at least 5 (Wan-family VAEs), got {frames}")
    if size < 32 or size % 16:
        raise ValueError(f"size must be a multiple of 16 and at least 32 (H.264 macroblocks), got {size}")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    names = [f"videos/{i:06d}.mp4" for i in range(count)] + ["captions.jsonl"]
    previous: dict[str, str] = {}
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to write the dataset into it anyway")
        previous = _owned_files(out, names)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(out, previous)
    for stale in sorted(set(previous) - set(names)):  # a previous, larger run's clips
        (out / stale).unlink(missing_ok=True)
        manifest.forget(stale)
    rows = []
    indices = range(count)
    if progress:
        indices = tqdm(indices, desc="clips", unit="clip")
    for i in indices:
        spec = clip_spec(i, frames=frames, size=size, seed=seed, radius=radius)
        name = names[i]
        with checks.atomic_output(out / name) as partial:
            write_video(partial, render_clip(spec, frames=frames, size=size), fps=fps, overwrite=True)
            manifest.record(name, partial)
        meta = asdict(spec)
        rows.append({"file": name, "caption": meta.pop("caption"), **meta})
    with checks.atomic_output(out / "captions.jsonl") as partial:
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows))
        manifest.record("captions.jsonl", partial)
    manifest.compact()
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(out: Path) -> dict[str, str]:
    """``{relative name: sha256}`` of the files earlier runs wrote into ``out`` (last entry wins; a line cut
    short by a crash is ignored, which only makes fewer files replaceable)."""
    path = out / MANIFEST
    owned: dict[str, str] = {}
    if not path.is_file():
        return owned
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("file"), str):
            if entry.get("sha256") is None:
                owned.pop(entry["file"], None)
            elif isinstance(entry["sha256"], str):
                owned[entry["file"]] = entry["sha256"]
    return owned


def _owned_files(out: Path, names: list[str]) -> dict[str, str]:
    """The manifest's files still as written; refuses when a file to be written or removed is not one of them."""
    owned = _read_manifest(out)
    root = out.resolve()
    foreign, changed = [], []
    for name in sorted(set(names) | set(owned)):
        path = out / name
        if root not in path.resolve().parents:  # a manifest entry pointing outside the dataset
            foreign.append(name)
        elif not path.is_file():
            if path.exists():
                foreign.append(name)
        elif name not in owned:
            foreign.append(name)
        elif _sha256(path) != owned[name]:
            changed.append(name)
    if foreign or changed:
        what = []
        if foreign:
            what.append(f"{len(foreign)} it did not write ({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''})")
        if changed:
            what.append(f"{len(changed)} changed since it wrote them ({', '.join(changed[:5])}"
                        f"{', ...' if len(changed) > 5 else ''})")
        raise FileExistsError(f"{out}: --force only replaces files that 'vmoba data shapes' wrote there itself "
                              f"(listed in {MANIFEST}), but would replace {' and '.join(what)}; choose another --out "
                              f"or move those files away")
    return {name: digest for name, digest in owned.items() if (out / name).is_file()}


class _Manifest:
    """Append-only record of the files written, so even an interrupted run leaves its files replaceable."""

    def __init__(self, out: Path, previous: dict[str, str]):
        self.out, self.entries = out, dict(previous)
        self.path = out / MANIFEST

    def _append(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def record(self, name: str, written: Path) -> None:
        # recorded just before the rename puts the file in place: the entry may then name a file that never
        # arrived (harmless), but never is a file there without its entry
        self.entries[name] = _sha256(written)
        self._append({"file": name, "sha256": self.entries[name]})

    def forget(self, name: str) -> None:
        self.entries.pop(name, None)
        self._append({"file": name, "sha256": None})

    def compact(self) -> None:
        with checks.atomic_output(self.path) as partial:
            partial.write_text("".join(json.dumps({"file": n, "sha256": d}) + "\n" for n, d in sorted(self.entries.items())))


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
