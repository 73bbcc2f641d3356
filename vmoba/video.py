"""Writing and reading H.264 video files that browsers play (libx264, yuv420p) through imageio-ffmpeg."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from .checks import atomic_output


def to_uint8(frames) -> np.ndarray:
    """(F, H, W, 3) float in [0, 1] (numpy or torch) or uint8 -> uint8 array."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (frames, height, width, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_video(path: str | Path, frames, fps: int = 8, *, overwrite: bool = False) -> Path:
    """Write ``frames`` ((F, H, W, 3), sides multiples of 16) as H.264 MP4. Refuses to replace an existing
    file unless ``overwrite``; the file appears complete or not at all (written under a temporary name, then
    renamed), so a failed write never leaves a truncated video or destroys the one that was there."""
    path = Path(path)
    frames = to_uint8(frames)
    F, H, W, _ = frames.shape
    if H % 16 or W % 16:
        raise ValueError(f"video height and width must be multiples of 16 for H.264, got {H}x{W}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--force on the command line) to replace it")
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"write H.264 video to a .mp4 file, got {path.name}")
    with atomic_output(path) as partial, imageio.get_writer(
            partial, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=16, quality=8,
            ffmpeg_params=["-movflags", "+faststart"]) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as a uint8 array (F, H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    with imageio.get_reader(path) as reader:
        return np.stack([frame[..., :3] for frame in reader])


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 or [0, 1] videos of one shape."""
    a, b = to_uint8(a).astype(np.float64), to_uint8(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
