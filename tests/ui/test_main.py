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

from conftest import free_port

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
def test_module_serves_the_page_on_the_environment_port():
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "vmoba.ui"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    start = time.perf_counter()
    try:
        page = None
        while time.perf_counter() - start < 180 and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(0.3)
        assert page is not None, server.stdout.read().decode() if server.poll() is not None else "no page"
        assert "vmoba: sparse attention for video diffusion" in page
        print(f"served after {time.perf_counter() - start:.1f} s")
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_closing_the_app_removes_its_temporary_files():
    from vmoba.ui import build_app
    from vmoba.ui.app import close_app

    demo = build_app()
    folder = demo.vmoba_outputs.path
    assert any(folder.glob("*.mp4"))  # the example clips of the events and motion tabs
    close_app(demo)
    assert not folder.exists()
