"""Uploaded clips in, H.264 clips and images out, within the demo's limits. Plain functions (no Gradio):
bad input raises ``ValueError`` naming what is wrong, which the app shows as a message."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import torch.nn.functional as F

from ..checks import atomic_output
from ..video import to_uint8, write_video
from .files import OutputFolder
from .limits import Limits

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")


def check_upload(path: str | os.PathLike | None, what: str, limits: Limits, suffixes: tuple[str, ...]) -> Path:
    """The uploaded file as a Path, after checks that need no decoding: present, known kind, not too large."""
    if path is None or str(path) == "":
        raise ValueError(f"no {what} given: upload one or pick an example")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the uploaded {what} {path.name!r} is not there any more; upload it again")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {path.name!r}: expected one of {', '.join(suffixes)}, got {path.suffix or 'no extension'!r}")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise ValueError(f"{what} {path.name!r} is {size / 2**20:.1f} MB; the limit is {limits.max_upload_mb:g} MB")
    if size == 0:
        raise ValueError(f"{what} {path.name!r} is empty")
    return path


def read_clip(path: str | os.PathLike | None, limits: Limits, *, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """The first frames of an uploaded clip as float32 ``(N, H, W, 3)`` in [0, 1], and its frame rate."""
    path = check_upload(path, "video", limits, VIDEO_SUFFIXES)
    max_frames = max_frames or limits.max_clip_frames
    try:
        reader = imageio.get_reader(path)
    except Exception as exc:  # any decoder failure means the same thing to the user
        raise ValueError(f"video {path.name!r} could not be read as a video ({type(exc).__name__})") from None
    with reader:
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or 8.0)
        duration = meta.get("duration")
        if duration is not None and float(duration) > limits.max_video_seconds:
            raise ValueError(f"video {path.name!r} lasts {float(duration):.1f} s; the limit is "
                             f"{limits.max_video_seconds:g} s")
        frames = []
        try:
            for frame in map(np.asarray, reader):
                frames.append(frame[..., :3] if frame.ndim == 3 else np.repeat(frame[..., None], 3, axis=-1))
                if len(frames) >= max_frames:
                    break
        except Exception as exc:
            if not frames:
                raise ValueError(f"video {path.name!r} could not be decoded ({type(exc).__name__})") from None
    if not frames:
        raise ValueError(f"video {path.name!r} holds no frames")
    clip = np.stack(frames).astype(np.float32) / 255.0
    if not 0 < fps <= 240:
        fps = 8.0
    return clip, fps


def fit_side(height: int, width: int, max_side: int, multiple: int = 16) -> tuple[int, int]:
    """A size of the same aspect whose longer side is at most ``max_side``, both sides multiples of ``multiple``."""
    scale = min(1.0, max_side / max(height, width))
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


def resize_clip(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, C)`` float resized to ``size`` (area average when shrinking, bilinear when growing)."""
    x = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
    shrink = size[0] <= x.shape[2] and size[1] <= x.shape[3]
    y = F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="bilinear",
                                                                             align_corners=False)
    return y.permute(0, 2, 3, 1).clamp(0, 1).numpy()


def grey(clip: np.ndarray) -> np.ndarray:
    """BT.601 luma of ``(N, H, W, 3)`` in [0, 1]."""
    return clip[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """Grey ``(N, H, W)`` or RGB ``(N, H, W, 3)`` -> RGB."""
    frames = np.asarray(frames)
    return np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames


def side_by_side(*videos: np.ndarray, gap: int = 4) -> np.ndarray:
    """Equal-length ``(N, H, W, 3)`` uint8 videos in one row, white gaps, padded to multiples of 16."""
    videos = [to_uint8(to_rgb(v)) for v in videos]
    n, h = videos[0].shape[0], max(v.shape[1] for v in videos)
    parts = []
    for index, v in enumerate(videos):
        if v.shape[0] != n:
            raise ValueError(f"videos differ in length: {[x.shape[0] for x in videos]}")
        pad = np.full((n, h, v.shape[2], 3), 255, np.uint8)
        pad[:, : v.shape[1]] = v
        parts.append(pad)
        if index < len(videos) - 1:
            parts.append(np.full((n, h, gap, 3), 255, np.uint8))
    row = np.concatenate(parts, axis=2)
    return pad_to_multiple(row, 16)


def pad_to_multiple(video: np.ndarray, multiple: int) -> np.ndarray:
    n, h, w, c = video.shape
    out = np.full((n, -(-h // multiple) * multiple, -(-w // multiple) * multiple, c), 255, np.uint8)
    out[:, :h, :w] = video
    return out


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an ``(H, W, 3)`` or ``(N, H, W, 3)`` image (tiny frames stay crisp)."""
    return image.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_video(folder: OutputFolder, frames, fps: int = 8, *, scale: int = 1) -> str:
    """``frames`` as an H.264 MP4 in the demo's output folder; returns its path."""
    frames = to_uint8(frames)
    if scale > 1:
        frames = upscale(frames, scale)
    frames = pad_to_multiple(frames, 16) if frames.shape[1] % 16 or frames.shape[2] % 16 else frames
    path = folder.new_file(".mp4")
    with atomic_output(path) as tmp:
        write_video(tmp, frames, fps=fps, overwrite=True)
    return str(path)


def under_label(image: np.ndarray, margin: int = 30) -> np.ndarray:
    """``image`` with a white band on top: Gradio draws an image's label over its top-left corner."""
    band = np.full((margin, *image.shape[1:]), 255, np.uint8)
    return np.concatenate([band, image], axis=0)
