"""The demo in a real headless browser (Debian's chromium through Playwright): every tab runs, videos play,
images load, a click changes the attention view. Screenshots go to test-artifacts/ui/."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from ui_support import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _tour_module():
    spec = importlib.util.spec_from_file_location("demo_screenshots", ROOT / "benchmarks" / "demo_screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_tab_in_headless_chromium(demo_server):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)")
    results = _tour_module().tour(demo_server[0], ARTIFACTS, prefix="browser_",
                                       speed_grid="320 tokens (the default model)", steps=6)
    assert "w=6" in results["text_to_video"]["caption"]  # the clicked point, 0.8 of the width, is token column 6
    assert "SSIM" in results["events"]["summary"]
    assert "px/frame" in results["motion"]["summary"]
    assert "'a red circle', seed 0, 6 steps, moving as the 9-frame clip above" in results["motion"]["generated"]
    assert "320 tokens" in results["speed"]["summary"]
    for tab in ("text_to_video", "events", "motion", "speed"):
        assert (ARTIFACTS / f"browser_{tab}.png").stat().st_size > 10_000
