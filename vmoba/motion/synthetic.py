"""Clips with known optical flow: real images under affine motion, random dots, drifting gratings and plaids.

Everything is rendered from closed forms, so the flow is exact rather than estimated: an affine motion of the
image plane about the clip centre (translation ``v``, rotation rate ``omega``, zoom rate ``z``) has the flow
``v + z (p - c) + omega (-(p_y - c_y), p_x - c_x)`` at the middle frame. Frames are indexed so that the
middle frame (``(T - 1) / 2``, possibly between two frames) is time zero. Coordinates: x right, y down.

Real images come from scikit-image's bundled samples (installed with the package; nothing is downloaded).
Held-out images are never used for training.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .clip import GREY_WEIGHTS

TRAIN_IMAGES = (
    "astronaut", "camera", "chelsea", "coins", "moon", "page", "text", "immunohistochemistry",
    "hubble_deep_field", "retina", "brick", "grass", "gravel", "clock", "cell",
)
HELDOUT_IMAGES = ("rocket", "coffee", "motorcycle")

# Largest side kept per image: crops of a few dozen pixels should still see structure, not a flat patch.
MAX_SIDE = 512


@functools.lru_cache(maxsize=None)
def load_image(name: str) -> torch.Tensor:
    """One scikit-image sample as a grey float32 tensor in [0, 1], at most ``MAX_SIDE`` on its longer side."""
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("synthetic training images need scikit-image: pip install 'vmoba[motion]'") from exc
    if name == "motorcycle":
        array = skimage.data.stereo_motorcycle()[0]
    else:
        array = getattr(skimage.data, name)()
    image = torch.from_numpy(np.asarray(array, dtype=np.float32))
    if np.asarray(array).dtype == np.uint8:
        image = image / 255.0
    if image.dim() == 3:
        image = (image[..., :3] * torch.tensor(GREY_WEIGHTS)).sum(-1)
    image = image.clamp(0, 1)
    longest = max(image.shape)
    if longest > MAX_SIDE:
        size = [round(s * MAX_SIDE / longest) for s in image.shape]
        image = F.interpolate(image[None, None], size=size, mode="area")[0, 0]
    # A light blur keeps bicubic resampling at sub-pixel offsets from flickering on pixel-level noise.
    return _blur(image, 0.5)


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    u = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(u**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(image[None, None], (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return x[0, 0]


@dataclass(frozen=True)
class AffineMotion:
    """Motion of the image plane about the clip centre: pixels/frame, radians/frame, log-scale/frame."""

    vx: float = 0.0
    vy: float = 0.0
    rotation: float = 0.0
    zoom: float = 0.0

    def flow(self, size: tuple[int, int]) -> torch.Tensor:
        """Exact flow ``(2, H, W)`` at the middle frame."""
        dx, dy = _offsets(size)
        fx = self.vx + self.zoom * dx - self.rotation * dy
        fy = self.vy + self.zoom * dy + self.rotation * dx
        return torch.stack([fx, fy])

    def source_points(self, size: tuple[int, int], times: torch.Tensor) -> torch.Tensor:
        """Where each output pixel of each frame was at time zero: ``(T, H, W, 2)`` offsets from the centre.

        Inverse of ``x(t) = c + exp(z t) R(omega t) (p - c) + v t``.
        """
        dx, dy = _offsets(size)
        t = times.view(-1, 1, 1)
        ux, uy = dx - self.vx * t, dy - self.vy * t
        cos, sin = torch.cos(self.rotation * t), torch.sin(self.rotation * t)
        scale = torch.exp(-self.zoom * t)
        return torch.stack([scale * (cos * ux + sin * uy), scale * (-sin * ux + cos * uy)], dim=-1)


def _offsets(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return xs - (w - 1) / 2, ys - (h - 1) / 2


def frame_times(num_frames: int) -> torch.Tensor:
    return torch.arange(num_frames, dtype=torch.float32) - (num_frames - 1) / 2


def image_clip(
    image: torch.Tensor,
    size: tuple[int, int],
    num_frames: int,
    motion: AffineMotion,
    *,
    scale: float = 1.0,
    angle: float = 0.0,
    position: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``(T, H, W)`` of ``image`` under ``motion`` and the flow ``(2, H, W)`` at the middle frame.

    At time zero, output pixel offset ``d`` from the clip centre shows source pixel
    ``position + scale * R(angle) d`` (``position`` in source pixels, x then y; ``None`` centres the clip in the
    image). Raises ``ValueError`` if any frame would sample outside the image: mirrored or clamped borders
    would move differently from the flow.
    """
    pts = motion.source_points(size, frame_times(num_frames))
    cos, sin = math.cos(angle), math.sin(angle)
    sx = scale * (cos * pts[..., 0] - sin * pts[..., 1])
    sy = scale * (sin * pts[..., 0] + cos * pts[..., 1])
    hs, ws = image.shape
    if position is None:
        position = ((ws - 1) / 2, (hs - 1) / 2)
    sx, sy = sx + position[0], sy + position[1]
    margin = 2.0  # bicubic reads two pixels on each side
    if sx.min() < margin or sy.min() < margin or sx.max() > ws - 1 - margin or sy.max() > hs - 1 - margin:
        raise ValueError("the motion leaves the source image; use a smaller motion, scale or clip")
    return _sample(image, sx, sy), motion.flow(size)


def _sample(image: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    hs, ws = image.shape
    grid = torch.stack([sx / (ws - 1) * 2 - 1, sy / (hs - 1) * 2 - 1], dim=-1)
    out = F.grid_sample(image.expand(grid.shape[0], 1, hs, ws), grid, mode="bicubic", align_corners=True)
    return out[:, 0].clamp(0, 1)


def random_image_clip(
    rng: np.random.Generator, image: torch.Tensor, size: tuple[int, int], num_frames: int, motion: AffineMotion
) -> tuple[torch.Tensor, torch.Tensor]:
    """`image_clip` at a random scale, angle and position that keeps every frame inside the image."""
    for _ in range(20):
        scale = float(np.exp(rng.uniform(np.log(0.6), np.log(1.5))))
        angle = float(rng.uniform(-math.pi, math.pi))
        pts = motion.source_points(size, frame_times(num_frames))
        cos, sin = math.cos(angle), math.sin(angle)
        sx = scale * (cos * pts[..., 0] - sin * pts[..., 1])
        sy = scale * (sin * pts[..., 0] + cos * pts[..., 1])
        hs, ws = image.shape
        lo_x, hi_x = 3 - float(sx.min()), ws - 4 - float(sx.max())
        lo_y, hi_y = 3 - float(sy.min()), hs - 4 - float(sy.max())
        if lo_x < hi_x and lo_y < hi_y:
            position = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
            return image_clip(image, size, num_frames, motion, scale=scale, angle=angle, position=position)
    raise ValueError("could not fit the motion inside the image; use a smaller motion or clip")


def dots_clip(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_frames: int,
    motion: AffineMotion,
    *,
    density: float = 0.03,
    dot_sigma: float = 1.0,
    contrast: float = 0.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random-dot kinematogram: Gaussian dots of random polarity on grey, moving with ``motion``."""
    h, w = size
    times = frame_times(num_frames)
    reach = float(abs(times[0])) * (math.hypot(motion.vx, motion.vy) + (abs(motion.rotation) + abs(motion.zoom))
                                    * math.hypot(h, w)) + 4 * dot_sigma
    n = max(1, int(density * (h + 2 * reach) * (w + 2 * reach)))
    px = torch.from_numpy(rng.uniform(-(w - 1) / 2 - reach, (w - 1) / 2 + reach, n).astype(np.float32))
    py = torch.from_numpy(rng.uniform(-(h - 1) / 2 - reach, (h - 1) / 2 + reach, n).astype(np.float32))
    amp = torch.from_numpy((rng.choice([-1.0, 1.0], n) * contrast).astype(np.float32))
    t = times.view(-1, 1)
    cos, sin, grow = torch.cos(motion.rotation * t), torch.sin(motion.rotation * t), torch.exp(motion.zoom * t)
    x = grow * (cos * px - sin * py) + motion.vx * t  # (T, n) offsets from the centre
    y = grow * (sin * px + cos * py) + motion.vy * t
    xs = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    ys = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    gx = torch.exp(-((xs[None, None] - x[..., None]) ** 2) / (2 * dot_sigma**2))  # (T, n, W)
    gy = torch.exp(-((ys[None, None] - y[..., None]) ** 2) / (2 * dot_sigma**2))  # (T, n, H)
    frames = 0.5 + torch.bmm((gy * amp[None, :, None]).transpose(1, 2), gx)
    return frames.clamp(0, 1), motion.flow(size)


def grating_clip(
    size: tuple[int, int],
    num_frames: int,
    direction: float,
    speed: float,
    *,
    frequency: float = 0.1,
    contrast: float = 0.4,
    phase: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sinusoidal grating drifting along ``direction`` (radians) at ``speed`` pixels/frame.

    ``0.5 + contrast/2 * cos(2 pi f (n . d - speed t) + phase)``: a grating only defines the velocity normal
    to its stripes, which is the velocity it drifts with, so that is its flow.
    """
    return plaid_clip(size, num_frames, [(direction, speed, frequency, contrast, phase)],
                      (speed * math.cos(direction), speed * math.sin(direction)))


def plaid_clip(
    size: tuple[int, int],
    num_frames: int,
    components: list[tuple[float, float, float, float, float]],
    flow: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of drifting gratings ``(direction, speed, frequency, contrast, phase)``; ``flow`` is the pattern velocity."""
    h, w = size
    dx, dy = _offsets(size)
    t = frame_times(num_frames).view(-1, 1, 1)
    frames = torch.full((num_frames, h, w), 0.5)
    for direction, speed, freq, contrast, phase in components:
        along = dx * math.cos(direction) + dy * math.sin(direction)
        frames = frames + 0.5 * contrast * torch.cos(2 * math.pi * freq * (along - speed * t) + phase)
    flow_map = torch.stack([torch.full((h, w), float(flow[0])), torch.full((h, w), float(flow[1]))])
    return frames.clamp(0, 1), flow_map


def random_plaid(rng: np.random.Generator, size: tuple[int, int], num_frames: int, velocity: tuple[float, float],
                 components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One grating (flow = its normal velocity) or a plaid whose components all move with ``velocity``."""
    vx, vy = velocity
    speed = math.hypot(vx, vy)
    heading = math.atan2(vy, vx) if speed > 0 else float(rng.uniform(-math.pi, math.pi))
    parts = []
    if components == 1:
        # Temporal aliasing sets a ceiling on frequency * speed; stay below 0.4 cycles per frame.
        freq = float(rng.uniform(0.03, min(0.22, 0.4 / max(speed, 1e-3))))
        parts.append((heading, speed, freq, float(rng.uniform(0.1, 0.8)), float(rng.uniform(0, 2 * math.pi))))
    else:
        for _ in range(components):
            direction = heading + float(rng.uniform(-1.3, 1.3))
            normal_speed = vx * math.cos(direction) + vy * math.sin(direction)
            freq = float(rng.uniform(0.03, min(0.22, 0.4 / max(abs(normal_speed), 1e-3))))
            parts.append((direction, normal_speed, freq, float(rng.uniform(0.1, 0.5)),
                          float(rng.uniform(0, 2 * math.pi))))
    return plaid_clip(size, num_frames, parts, (vx, vy))


def random_velocity(rng: np.random.Generator, max_speed: float) -> tuple[float, float]:
    """Direction uniform; speed mostly small (where precision matters most), up to ``max_speed``."""
    u = rng.uniform()
    speed = max_speed * (u**2 if rng.uniform() < 0.6 else u)
    angle = rng.uniform(-math.pi, math.pi)
    return float(speed * math.cos(angle)), float(speed * math.sin(angle))


PATTERNS = ("image", "dots", "grating")


def random_pattern(rng: np.random.Generator, kind: str, size: tuple[int, int], num_frames: int, motion: AffineMotion,
                   images: tuple[str, ...] = TRAIN_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip of ``kind`` (`PATTERNS`) under ``motion``, its appearance drawn from ``rng``: a crop of one of
    ``images``, random dots of random density, size and contrast, or a grating or plaid (which ignores rotation
    and zoom: it drifts with the translation). Frames and flow as `dots_clip` gives them."""
    if kind == "image":
        image = load_image(images[int(rng.integers(len(images)))])
        return random_image_clip(rng, image, size, num_frames, motion)
    if kind == "dots":
        return dots_clip(rng, size, num_frames, motion, density=float(rng.uniform(0.01, 0.08)),
                         dot_sigma=float(rng.uniform(0.6, 1.6)), contrast=float(rng.uniform(0.15, 0.5)))
    if kind == "grating":
        return random_plaid(rng, size, num_frames, (motion.vx, motion.vy), int(rng.integers(1, 3)))
    raise ValueError(f"pattern kind must be one of {', '.join(PATTERNS)}, got {kind!r}")


def random_clip(
    rng: np.random.Generator,
    size: tuple[int, int],
    num_frames: int,
    images: tuple[str, ...] = TRAIN_IMAGES,
    max_speed: float = 8.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training clip: 60% real image, 20% random dots, 20% gratings and plaids; noise and contrast jitter."""
    kind = rng.uniform()
    vx, vy = random_velocity(rng, max_speed)
    affine = rng.uniform() < 0.5
    motion = AffineMotion(vx, vy, float(rng.uniform(-0.04, 0.04)) if affine else 0.0,
                          float(rng.uniform(-0.04, 0.04)) if affine else 0.0)
    kind = "image" if kind < 0.6 else "dots" if kind < 0.8 else "grating"
    frames, flow = random_pattern(rng, kind, size, num_frames, motion, images)
    gain = float(rng.uniform(0.3, 1.0))
    frames = 0.5 + gain * (frames - 0.5) + float(rng.uniform(-0.15, 0.15))
    noise = float(rng.uniform(0, 0.02))
    if noise:
        frames = frames + noise * torch.from_numpy(rng.standard_normal(frames.shape).astype(np.float32))
    return frames.clamp(0, 1), flow


def random_batch(rng: np.random.Generator, batch: int, size: tuple[int, int], num_frames: int,
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, H, W)`` frames and ``(B, 2, H, W)`` flows from `random_clip`."""
    clips = [random_clip(rng, size, num_frames, **kwargs) for _ in range(batch)]
    return torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips])
