"""Checking and normalising the clips every motion entry point accepts.

Accepted layouts (intensities in [0, 1], any floating dtype):

==================  ==========================
``(T, H, W)``       one grey clip
``(T, C, H, W)``    one clip, ``C`` in {1, 3}
``(B, T, H, W)``    a batch of grey clips
``(B, T, C, H, W)`` a batch, ``C`` in {1, 3}
==================  ==========================

A 4-D tensor whose second dimension is 1 or 3 is read as ``(T, C, H, W)``. A batch of grey clips that
short (one or three frames) could not be processed anyway: every motion model needs more frames than
that, so the reading is never ambiguous for a clip that would be accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# ITU-R BT.601 luma: what video codecs and OpenCV's cvtColor use, so grey means the same thing everywhere.
GREY_WEIGHTS = (0.299, 0.587, 0.114)

# Resampling (bicubic, Lanczos) overshoots a little: up to this much past [0, 1] is clamped without a word.
# Anything beyond is a different convention (uint8-scaled floats, or [-1, 1] diffusion latents) and would
# give silently wrong energies, so it is refused.
RANGE_TOLERANCE = 0.1


def to_grey(rgb: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Luma of an RGB tensor along ``channel_dim`` (which must have size 3)."""
    w = torch.tensor(GREY_WEIGHTS, dtype=rgb.dtype, device=rgb.device)
    shape = [1] * rgb.dim()
    shape[channel_dim] = 3
    return (rgb * w.view(shape)).sum(dim=channel_dim)


def as_clip(frames: Any, *, min_frames: int = 1, min_size: int = 1, name: str = "frames") -> tuple[torch.Tensor, bool]:
    """Return ``(clip, batched)``: ``clip`` is a float32 ``(B, T, H, W)`` grey tensor.

    Raises ``TypeError`` for non-tensors and non-floating dtypes and ``ValueError`` for bad shapes (naming
    the channels-last layout and its fix), too few frames, too small frames, non-finite values and intensities
    outside [0, 1]. Overshoot of resampling (up to ``RANGE_TOLERANCE`` past [0, 1]) is clamped.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if not torch.is_floating_point(frames):
        hint = " (for uint8 video use frames.float() / 255)" if frames.dtype == torch.uint8 else ""
        raise TypeError(
            f"{name} must be a floating-point tensor of intensities in [0, 1], got dtype {frames.dtype}{hint}"
        )

    shape = tuple(frames.shape)
    if frames.dim() in (4, 5) and shape[-1] == 3 and shape[-3] not in (1, 3):
        layout, order = ("(T, H, W, 3)", "0, 3, 1, 2") if frames.dim() == 4 else ("(B, T, H, W, 3)", "0, 1, 4, 2, 3")
        raise ValueError(
            f"{name} of shape {shape} looks channels-last {layout}; motion entry points take channels first "
            f"({'T' if frames.dim() == 4 else 'B, T'}, 3, H, W): pass {name}.permute({order})"
        )
    if frames.dim() == 3:
        clip, batched = frames.unsqueeze(0).unsqueeze(2), False
    elif frames.dim() == 4 and shape[1] in (1, 3):
        clip, batched = frames.unsqueeze(0), False
    elif frames.dim() == 4:
        clip, batched = frames.unsqueeze(2), True
    elif frames.dim() == 5:
        if shape[2] not in (1, 3):
            raise ValueError(f"{name} of shape {shape}: a 5-D clip must be (B, T, C, H, W) with C = 1 or 3")
        clip, batched = frames, True
    else:
        raise ValueError(
            f"{name} must be (T, H, W), (T, C, H, W), (B, T, H, W) or (B, T, C, H, W) with C = 1 or 3, "
            f"got shape {shape}"
        )
    if clip.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {shape}")

    b, t, c, h, w = clip.shape
    if t < min_frames:
        raise ValueError(
            f"{name} has {t} frames but at least {min_frames} are needed (the temporal filter length); "
            f"got shape {shape}"
        )
    if min(h, w) < min_size:
        raise ValueError(f"{name} frames are {h}x{w} pixels but must be at least {min_size}x{min_size}")

    clip = clip.float()
    stats = torch.stack([torch.isfinite(clip).all().float(), clip.amin(), clip.amax()]).tolist()
    if not stats[0]:
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    slack = RANGE_TOLERANCE + 1e-6  # float32 1.1 is a hair above the float64 1.1
    if stats[1] < -slack or stats[2] > 1 + slack:
        raise ValueError(
            f"{name} must hold intensities in [0, 1], got values in [{stats[1]:.4g}, {stats[2]:.4g}]; "
            "rescale first (x / 255 for 8-bit, (x + 1) / 2 for [-1, 1])"
        )
    clip = clip.clamp(0.0, 1.0)
    grey = to_grey(clip, 2) if c == 3 else clip[:, :, 0]
    return grey.contiguous(), batched
