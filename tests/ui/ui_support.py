"""Shared pieces of the UI tests (a module of its own: every test folder's conftest is named "conftest",
so importing one by that name picks whichever was loaded first)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from vmoba.ui.limits import Limits
from vmoba.video import write_video

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
TEST_LIMITS = Limits(max_upload_mb=1.0, max_video_seconds=3.0, max_frames=17, max_steps=10, speed_max_tokens=4096)
DEFAULT_MODEL = "embedded default (64x64 moving shapes)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    write_video(path, frames, fps=fps)
    return path


def moving_square_clip(frames: int = 9, size: int = 64, dx: int = 2, dy: int = 0) -> np.ndarray:
    """A bright square on grey moving ``(dx, dy)`` pixels per frame, ``(F, size, size, 3)`` float."""
    clip = np.full((frames, size, size, 3), 0.3, np.float32)
    for f in range(frames):
        x, y = 16 + f * dx, 16 + f * dy
        clip[f, y: y + 20, x: x + 20] = 0.9
    return clip
