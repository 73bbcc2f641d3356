"""Synthetic event-video sequences from real photographs that ship with scikit-image.

A virtual camera pans, zooms and rotates over a photograph; the frames it sees are rendered by bilinear
resampling, and the events between frames come from `simulate_events` on finer sub-frames (so event
timestamps follow the motion, not the frame clock). Everything is a function of the seed: no download, no
file that is not inside an installed package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .representations import events_to_voxel_windows
from .simulator import simulate_events

# Photographs bundled in scikit-image's wheel (skimage/data/*, no network fetch). Held-out images are never
# seen in training; the evaluation uses only them.
TRAIN_IMAGES = ("astronaut", "camera", "chelsea", "coins", "moon", "hubble_deep_field", "immunohistochemistry",
                "retina", "grass", "gravel", "brick", "page", "text")
HELD_OUT_IMAGES = ("coffee", "rocket", "clock")


@lru_cache(maxsize=None)
def load_photo(name: str) -> torch.Tensor:
    """A bundled scikit-image photograph as grey float64 ``[H, W]`` in [0, 1]."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise ImportError("the synthetic event data uses scikit-image's bundled photographs: pip install scikit-image") from None
    if name not in TRAIN_IMAGES + HELD_OUT_IMAGES:
        raise ValueError(f"unknown photograph {name!r}; use one of {TRAIN_IMAGES + HELD_OUT_IMAGES}")
    image = np.asarray(getattr(skdata, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    return torch.from_numpy(image / 255.0).clamp_(0, 1)


@dataclass(frozen=True)
class SequenceConfig:
    size: int = 64  # output frames are size x size
    num_frames: int = 6  # frames after the first one
    frame_interval: float = 1 / 30  # seconds
    substeps: int = 4  # simulator sub-frames per frame interval
    num_bins: int = 5
    max_shift: float = 2.5  # pixels per frame, each axis
    max_rotation: float = 2.0  # degrees per frame
    max_zoom: float = 0.03  # relative scale change per frame
    contrast_threshold: tuple[float, float] = (0.15, 0.3)
    threshold_noise: float = 0.02


def _camera_frames(image: torch.Tensor, times: torch.Tensor, size: int, rng: np.random.Generator, cfg: SequenceConfig):
    H, W = image.shape
    # source pixels per output pixel: 1..3, so textures range from full detail to 3x minified
    scale0 = rng.uniform(1.0, 3.0)
    half = size * scale0 / 2 * math.sqrt(2) * math.exp(cfg.max_zoom * cfg.num_frames)
    cy = rng.uniform(min(half, H / 2), max(H - half, H / 2))
    cx = rng.uniform(min(half, W / 2), max(W - half, W / 2))
    v = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * scale0
    omega = math.radians(rng.uniform(-cfg.max_rotation, cfg.max_rotation))
    zoom = rng.uniform(-cfg.max_zoom, cfg.max_zoom)
    theta0 = rng.uniform(0, 2 * math.pi)
    k = times.double()  # in frame units
    scale = scale0 * torch.exp(zoom * k)
    theta = theta0 + omega * k
    centre_x, centre_y = cx + v[0] * k, cy + v[1] * k
    u = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    uy, ux = torch.meshgrid(u, u, indexing="ij")
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    s = scale[:, None, None]
    px = centre_x[:, None, None] + s * (cos * ux - sin * uy)
    py = centre_y[:, None, None] + s * (sin * ux + cos * uy)
    grid = torch.stack([px / (W - 1) * 2 - 1, py / (H - 1) * 2 - 1], dim=-1).float()
    src = image.float()[None, None].expand(len(times), 1, H, W)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=True)[:, 0]


def make_sequence(seed: int, cfg: SequenceConfig = SequenceConfig(), images: tuple[str, ...] = TRAIN_IMAGES):
    """One sequence: ``frames [num_frames + 1, size, size]`` and ``voxels [num_frames, num_bins, size, size]``."""
    rng = np.random.default_rng(seed)
    image = load_photo(images[int(rng.integers(len(images)))])
    # contrast and brightness jitter, kept inside [0, 1]
    gain, offset = rng.uniform(0.6, 1.0), rng.uniform(0.0, 0.3)
    image = (image * gain + offset * (1 - gain)).clamp(0, 1)
    steps = cfg.num_frames * cfg.substeps
    sub_times = torch.arange(steps + 1, dtype=torch.float64) / cfg.substeps
    frames_fine = _camera_frames(image, sub_times, cfg.size, rng, cfg).clamp(0, 1)
    seconds = sub_times * cfg.frame_interval
    events = simulate_events(
        frames_fine.double(), seconds, contrast_threshold=rng.uniform(*cfg.contrast_threshold),
        threshold_noise=cfg.threshold_noise, seed=int(rng.integers(2**31)),
    )
    boundaries = np.arange(cfg.num_frames + 1) * cfg.frame_interval
    voxels = events_to_voxel_windows(events, boundaries, cfg.num_bins)
    return frames_fine[:: cfg.substeps].float(), voxels


def make_batch(seeds, cfg: SequenceConfig = SequenceConfig(), images: tuple[str, ...] = TRAIN_IMAGES):
    """Stacked sequences: ``frames [B, N + 1, S, S]``, ``voxels [B, N, bins, S, S]``."""
    pairs = [make_sequence(int(s), cfg, images) for s in seeds]
    return torch.stack([f for f, _ in pairs]), torch.stack([v for _, v in pairs])


class SyntheticBatches(torch.utils.data.IterableDataset):
    """Batches for training steps ``0 .. steps - 1``; step k of process ``rank`` always gets the same seeds,
    however many DataLoader workers share the steps (worker w makes steps w, w + W, ... in order, and the
    loader interleaves workers round-robin, so the order is kept too)."""

    def __init__(self, cfg: SequenceConfig, batch_size: int, base_seed: int, steps: int, rank: int = 0, world: int = 1):
        self.cfg, self.batch_size, self.base_seed, self.steps = cfg, batch_size, base_seed, steps
        self.rank, self.world = rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(worker, self.steps, workers):
            first = self.base_seed + (step * self.world + self.rank) * self.batch_size
            yield make_batch(range(first, first + self.batch_size), self.cfg)
