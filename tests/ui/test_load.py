"""Eight clients at once: every request completes, with its own correct result (benchmarks/demo_load.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_eight_concurrent_generations_all_complete_correctly(demo_server):
    spec = importlib.util.spec_from_file_location("demo_load", ROOT / "benchmarks" / "demo_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    result = load.run_load(demo_server[0], clients=8)
    assert result["errors"] == []
    assert result["all_correct"], result["per_request"]
    for outcome in result["per_request"].values():
        assert outcome["psnr"] > 30 and outcome["psnr"] > outcome["best_other"]
