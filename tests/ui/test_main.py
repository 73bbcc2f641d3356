"""`python -m vmoba.ui` / `vmoba.ui.main`: options, errors, and a served page on the port asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vmoba.ui import build_parser, main

from ui_support import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_options_and_defaults():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.models_dir) == ("127.0.0.1", None, None)
    args = build_parser().parse_args(["--host", "0.0.0.0", "--port", "8123", "--models-dir", "m"])
    assert (args.host, args.port, args.models_dir) == ("0.0.0.0", 8123, "m")


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "http"], ["--port", "70000"], ["--bogus"]])
def test_bad_options_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "--port" in capsys.readouterr().err or argv == ["--bogus"]


def test_missing_models_folder_is_reported(tmp_path, capsys):
    assert main(["--models-dir", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_module_serves_the_page_on_the_environment_port(tmp_path):
    """... says where once it serves, and a SIGTERM (what a service manager sends) still removes the demo's
    temporary folder."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path))
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([sys.executable, "-m", "vmoba.ui"], env=env, stdout=sink, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    try:
        page = None
        # the page can answer a moment before the start-up line is printed: wait for both
        while time.perf_counter() - start < 180 and server.poll() is None:
            try:
                if page is None:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        page = response.read().decode()
                if "serving on" in log.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert page is not None, log.read_text()
        assert "vmoba: sparse attention for video diffusion" in page
        assert f"serving on http://127.0.0.1:{port}" in log.read_text()
        print(f"served after {time.perf_counter() - start:.1f} s")
        assert list(tmp_path.glob("vmoba-demo-*"))  # the folder whose removal is checked below
    finally:
        server.terminate()
        server.wait(30)
    assert not list(tmp_path.glob("vmoba-demo-*")), log.read_text()


@pytest.mark.slow
def test_closing_the_app_removes_its_temporary_files():
    from vmoba.ui import build_app
    from vmoba.ui.app import close_app

    demo = build_app()
    folder = demo.vmoba_outputs.path
    assert any(folder.glob("*.mp4"))  # the example clips of the events and motion tabs
    close_app(demo)
    assert not folder.exists()
