"""Synthetic motion references for training a motion adapter (``motion_adapter.synthetic_references``).

A motion adapter trained only with each clip's own motion energy as its reference learns what the training
clips' motion looks like: one coloured shape on a plain background. Given a photo, random dots or a grating
moving the same way, whose energy is spread over other orientations and frequencies, it may read another
direction. With ``synthetic_references: p``, a clip whose caption names a direction (left, right, up or down)
gets, with probability ``p``, the energy of a different clip moving that way instead of its own: a real
image (the motion model's training images, `vmoba.motion.synthetic.TRAIN_IMAGES`), random dots or a
grating or plaid, translating at a random speed, its heading jittered a little around the axis. The
references are rendered and their energy computed once, when training starts (``per_direction`` of them for
each direction), then drawn from the training generator, so a step stays a pure function of its seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..motion import synthetic
from .shapes import DIRECTIONS

KINDS = synthetic.PATTERNS
HEADING_JITTER = math.radians(15)  # the heading's spread around the named axis


def caption_direction(caption: str) -> str | None:
    """The direction word of ``caption`` (``left``, ``right``, ``up`` or ``down``), or None when it has none
    or more than one."""
    found = {w.lower().strip(".,;:!?") for w in caption.split()} & DIRECTIONS.keys()
    return found.pop() if len(found) == 1 else None


def render_reference(rng: np.random.Generator, direction: str, *, frames: int, height: int, width: int,
                     speed: tuple[float, float], kind: str | None = None) -> torch.Tensor:
    """One grey reference clip ``(T, H, W)`` in [0, 1] moving toward ``direction`` (a key of
    `vmoba.training.shapes.DIRECTIONS`) at a speed drawn from ``speed`` (pixels per frame)."""
    dx, dy = DIRECTIONS[direction]
    heading = math.atan2(dy, dx) + float(rng.uniform(-HEADING_JITTER, HEADING_JITTER))
    v = float(rng.uniform(*speed))
    motion = synthetic.AffineMotion(v * math.cos(heading), v * math.sin(heading))
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    clip, _ = synthetic.random_pattern(rng, kind, (height, width), frames, motion)
    gain = float(rng.uniform(0.4, 1.0))
    return (0.5 + gain * (clip - 0.5) + float(rng.uniform(-0.1, 0.1))).clamp(0, 1)


class SyntheticReferences:
    """Reference energies per direction, and the rule that swaps them in for a batch's own
    (`FlowMatchingLoss` calls `mix`)."""

    def __init__(self, energies: dict[str, torch.Tensor], share: float):
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share}")
        missing = DIRECTIONS.keys() - energies.keys()
        if missing:
            raise ValueError(f"energies lack the directions {sorted(missing)}")
        self.energies, self.share = energies, share

    @classmethod
    @torch.no_grad()
    def build(cls, adapter, grid: tuple[int, int, int], *, share: float, frames: int, height: int, width: int,
              speed: tuple[float, float], per_direction: int, seed: int, chunk: int = 16) -> "SyntheticReferences":
        """Render ``per_direction`` references for each direction and keep the energy ``adapter`` computes for
        them on the latent token grid ``grid`` (what the cache stores for a clip)."""
        rng = np.random.default_rng([seed, 31])
        energies = {}
        for direction in DIRECTIONS:
            clips = torch.stack([render_reference(rng, direction, frames=frames, height=height, width=width,
                                                  speed=speed) for _ in range(per_direction)])
            rgb = clips[:, :, None].expand(-1, -1, 3, -1, -1)  # (N, T, 3, H, W)
            energies[direction] = torch.cat([adapter.reference_energy(rgb[i:i + chunk], grid)
                                             for i in range(0, per_direction, chunk)]).float()
        return cls(energies, share)

    def mix(self, energy: torch.Tensor, directions: list[str | None], generator: torch.Generator) -> torch.Tensor:
        """``energy`` (one row per clip) with each clip whose direction is known replaced, with probability
        ``share``, by a reference of that direction drawn at random."""
        swap = (torch.rand(len(directions), generator=generator) < self.share).tolist()
        picks = torch.randint(0, 1 << 30, (len(directions),), generator=generator).tolist()
        rows = []
        for row, direction, s, pick in zip(energy, directions, swap, picks):
            if s and direction is not None:
                bank = self.energies[direction]
                row = bank[pick % bank.shape[0]].to(row.device, row.dtype)
            rows.append(row)
        return torch.stack(rows)
