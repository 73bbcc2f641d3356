"""One demo server for the UI tests, on a free port, with small limits so the limit checks are quick to reach."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from vmoba.ui.limits import Limits

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
TEST_LIMITS = Limits(max_upload_mb=1.0, max_video_seconds=3.0, max_frames=17, max_steps=10, speed_max_tokens=4096)
DEFAULT_MODEL = "embedded default (64x64 moving shapes)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A --models-dir holding a copy of the embedded pipeline, one folder down, and a folder that is not one."""
    from vmoba.pipelines import load_default_pipeline

    root = tmp_path_factory.mktemp("models")
    load_default_pipeline(quiet=True).save_pretrained(root / "shapes" / "copy")
    (root / "not-a-model").mkdir()
    return root


@pytest.fixture(scope="session")
def demo_server(models_dir):
    """(url, app) of a running demo; torch on one thread as `vmoba demo` runs it."""
    from vmoba.ui import build_app
    from vmoba.ui.app import close_app, launch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = build_app(models_dir, limits=TEST_LIMITS)
    _, url, _ = launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url, demo
    close_app(demo)
    torch.set_num_threads(threads)


@pytest.fixture
def client(demo_server):
    from gradio_client import Client

    return Client(demo_server[0], verbose=False)


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> Path:
    from vmoba.video import write_video

    write_video(path, frames, fps=fps)
    return path


def moving_square_clip(frames: int = 9, size: int = 64, dx: int = 2, dy: int = 0) -> np.ndarray:
    """A bright square on grey moving ``(dx, dy)`` pixels per frame, ``(F, size, size, 3)`` float."""
    clip = np.full((frames, size, size, 3), 0.3, np.float32)
    for f in range(frames):
        x, y = 16 + f * dx, 16 + f * dy
        clip[f, y: y + 20, x: x + 20] = 0.9
    return clip
