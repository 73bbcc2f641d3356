"""One demo server for the UI tests, on a free port, with small limits so the limit checks are quick to reach."""

from __future__ import annotations

import pytest
import torch

from ui_support import TEST_LIMITS, free_port

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
