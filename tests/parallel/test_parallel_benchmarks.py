"""The parallel benchmarks: the per-rank accounting of parallel_imbalance.py on hand-counted cases, and both
scripts end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "parallel_imbalance.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("parallel_imbalance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ring_counts_pairs_per_rank_and_step(bench):
    # 4 tokens, blocks [0, 0, 1, 1]; queries 0, 1 select block 0, queries 2, 3 both blocks
    ids = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([[[1, 0], [1, 0], [1, 1], [1, 1]]], dtype=torch.bool)
    got = bench.ring(mask, ids, 2)
    # rank 0: 2 queries x 2 keys in its own chunk; rank 1: 2 x 2 in chunk 0 and 2 x 2 in its own
    assert got["rank_pairs"] == [4.0, 8.0]
    assert got["imbalance"] == pytest.approx(8 / 6 - 1)
    # step 0: both ranks 4 pairs; step 1: rank 0 none, rank 1 4: 8 steps' worth against 6 of balanced work
    assert got["step_synchronous_imbalance"] == pytest.approx(8 / 6 - 1)


def test_ulysses_sums_contiguous_heads_and_balancing_evens_them(bench):
    got = bench.ulysses(torch.tensor([5.0, 5.0, 1.0, 1.0], dtype=torch.float64), 2)
    assert got["rank_pairs"] == [10.0, 2.0]
    assert got["imbalance"] == pytest.approx(10 / 6 - 1)
    assert got["balanced_imbalance"] == pytest.approx(0.0)


@pytest.mark.slow
def test_script_writes_its_results(tmp_path):
    out = tmp_path / "imbalance.json"
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], check=True, capture_output=True,
                   timeout=600)
    result = json.loads(out.read_text())
    assert {r["inputs"] for r in result["results"]} == {"varied", "uniform", "mixed"}
    for row in result["results"]:
        for u in row["ulysses"]:
            assert 0 <= u["balanced_imbalance"] <= u["imbalance"] + 1e-12
            assert sum(u["rank_pairs"]) == pytest.approx(sum(row["density_per_head"]) * 576**2)


@pytest.mark.slow
def test_gpu_script_runs_in_its_cpu_check_mode(tmp_path):
    """The N-GPU script's code path on CPU (one process): rows for every scheme, the sparse output equal to
    vmoba_attention's (no parallelism in this mode), and the ring steps' work emulated."""
    script = SCRIPT.with_name("parallel_gpu.py")
    subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--repeat", "1", "--out",
                    str(tmp_path)], check=True, capture_output=True, timeout=600)
    result = json.loads(next(tmp_path.glob("parallel_gpu_*_1x_quick.json")).read_text())
    assert [r["scheme"] for r in result["results"]] == ["1d", "2d", "3d"]
    for row in result["results"]:
        assert row["rel_l2_vs_one_device"] == 0.0
        assert row["ring2_steps_emulated_fwd_ms"] > 0 and 0 < row["vmoba_density"] < 1
