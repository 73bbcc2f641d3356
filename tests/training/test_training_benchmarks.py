"""The training benchmark scripts run and report what they measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_training_throughput_script_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks/training_cpu.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, env=ENV)
    rows = json.loads((tmp_path / "training_cpu_quick.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["dense", "vmoba-token", "vmoba-tile"]
    assert rows[0]["density"] == 1.0 and all(0 < r["density"] < 1 for r in rows[1:])
    assert all(r["seconds_per_step"] > 0 for r in rows)


def test_default_model_check_scores_ground_truth_clips_perfectly(tmp_path):
    # the script's detector path on rendered clips (through H.264): every prompt must be read back right
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/default_model_check.py"), "--ground-truth",
                          "--limit", "12", "--seeds", "1", "--out", str(tmp_path)],
                         check=True, capture_output=True, text=True, env=ENV)
    data = json.loads((tmp_path / "default_model_check_ground_truth.json").read_text())
    assert data["summary"]["clips"] == 12 and data["summary"]["accuracy"] == 1.0, res.stdout
    assert "accuracy (color and direction match the prompt) 100.0%" in res.stdout
