"""Flow and motion-energy maps as RGB images (uint8 arrays, or PIL images through `to_pil`).

Colour code (the usual one for optical flow): hue is the direction of motion, saturation its strength; no
motion is white. With x right and y down, rightward motion is red, downward yellow-green, leftward cyan and
upward blue-violet. The same code renders motion energy, from the vector sum of each channel's energy along
its preferred direction, so a flow image and an energy image of one clip can be compared at a glance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks


def _as_array(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return x.astype(np.float32)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; hue wraps."""
    h6 = (h % 1.0) * 6
    i = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,), dtype=np.float32)
    for k, (r, g, b) in enumerate(table):
        m = i == k
        rgb[m] = np.stack([r[m], g[m], b[m]], axis=-1)
    return rgb


def vectors_to_rgb(vx: np.ndarray, vy: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    mag = np.hypot(vx, vy)
    top = float(mag.max()) if max_magnitude is None else checks.real("max_magnitude", max_magnitude, min=0)
    if top <= 0:
        top = 1.0
    hue = (np.arctan2(vy, vx) / (2 * math.pi)) % 1.0
    sat = np.clip(mag / top, 0, 1)
    rgb = _hsv_to_rgb(hue, sat, np.ones_like(sat))
    return np.round(rgb * 255).astype(np.uint8)


def flow_to_rgb(flow: Any, max_magnitude: float | None = None) -> np.ndarray:
    """``(2, H, W)`` flow (x, y) -> ``(H, W, 3)`` uint8; full saturation at ``max_magnitude`` (default: the max)."""
    f = _as_array(flow, "flow")
    if f.ndim != 3 or f.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, H, W), got {f.shape}")
    return vectors_to_rgb(f[0], f[1], max_magnitude)


def energy_to_rgb(energy: Any, directions: Any, size: tuple[int, int] | None = None,
                  max_magnitude: float | None = None) -> np.ndarray:
    """``(C, h, w)`` motion energy -> ``(H, W, 3)`` uint8 by the flow colour code.

    ``directions`` ``(C,)`` is each channel's preferred direction (`MotionEnergy.channel_directions`). Each
    place is coloured by ``sum_c E_c (cos d_c, sin d_c)``: opposite channels cancel, so only net motion shows.
    ``size`` resizes (nearest neighbour) to the frame size.
    """
    e = _as_array(energy, "energy")
    d = _as_array(directions, "directions")
    if e.ndim != 3 or d.shape != (e.shape[0],):
        raise ValueError(f"energy must be (C, h, w) with one direction per channel, got {e.shape} and {d.shape}")
    vx = np.tensordot(np.cos(d), e, axes=1)
    vy = np.tensordot(np.sin(d), e, axes=1)
    if size is not None:
        size = checks.int_tuple("size", size, 2, min=1)
        v = F.interpolate(torch.from_numpy(np.stack([vx, vy]))[None], size=size, mode="nearest")[0].numpy()
        vx, vy = v[0], v[1]
    return vectors_to_rgb(vx, vy, max_magnitude)


def energy_grid(energy: Any, columns: int) -> np.ndarray:
    """Every channel as a grey tile, ``columns`` tiles per row (channel order), each scaled to its own max."""
    e = _as_array(energy, "energy")
    columns = checks.integer("columns", columns, min=1)
    if e.ndim != 3:
        raise ValueError(f"energy must be (C, h, w), got {e.shape}")
    c, h, w = e.shape
    rows = -(-c // columns)
    grid = np.zeros((rows * (h + 1) - 1, columns * (w + 1) - 1), dtype=np.float32)
    for k in range(c):
        r, col = divmod(k, columns)
        tile = e[k] / max(float(e[k].max()), 1e-12)
        grid[r * (h + 1): r * (h + 1) + h, col * (w + 1): col * (w + 1) + w] = tile
    return np.round(np.repeat(grid[..., None], 3, axis=-1) * 255).astype(np.uint8)


def to_pil(image: np.ndarray):
    """A ``(H, W, 3)`` uint8 array as a PIL image (Pillow comes with imageio)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    return Image.fromarray(image)
