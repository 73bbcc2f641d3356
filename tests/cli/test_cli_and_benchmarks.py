import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_vmoba_bench_command_prints_every_scheme():
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "bench", "--grid", "4x6x8", "--heads", "2",
                          "--head-dim", "16", "--threads", "1"], capture_output=True, text=True, check=True)
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[1] for r in rows] == ["1d", "1d", "2d", "2d", "3d", "3d"]
    for r in rows:
        density, error = float(r[3]), float(r[6])
        assert 0 < density <= 1 and 0 <= error < 1


@pytest.mark.parametrize("bad", [["--grid", "4x6"], ["--threshold", "1.5"], ["--granularity", "pixel"]])
def test_vmoba_bench_rejects_bad_arguments(bad):
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "bench", *bad], capture_output=True, text=True)
    assert res.returncode == 2 and "error" in res.stderr


@pytest.mark.slow
def test_cpu_benchmark_script_runs(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks/attention_cpu.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True)
    data = json.loads((tmp_path / "attention_cpu_quick.json").read_text())
    assert len([r for r in data["attention"] if r["method"] == "vmoba"]) == 6
    assert len(data["selection"]) == 6
    assert all(r["ms"] > 0 and r["peak_mib"] >= 0 for r in data["attention"] + data["selection"])
