"""Real 2-process data-parallel training on CPU (gloo), killed mid-run and resumed from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vmoba.pipelines.default import build_default_pipeline
from vmoba.training.shapes import write_shapes_dataset

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, data: Path, name: str, **training) -> Path:
    config = {
        "model": {"pretrained": "default", "from_scratch": True, "train": ["transformer", "text_encoder"]},
        "data": {"root": str(data), "num_frames": 5, "height": 32, "width": 32, "caption_dropout": 0.25},
        "training": {"output_dir": str(tmp_path / name), "max_steps": 12, "batch_size": 2, "learning_rate": 1e-3,
                     "checkpoint_every": 2, "log_every": 4, "ema_decay": 0.9, "seed": 3, **training},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(config: Path) -> subprocess.Popen:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "0", "-m", "vmoba.train", "--config", str(config)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def _weights(final: Path) -> dict:
    return {f"{part}/{k}": v for part in ("transformer", "text_encoder")
            for k, v in load_file(next((final / part).glob("*.safetensors"))).items()}


def test_two_processes_identical_replicas_and_exact_resume_after_kill(tmp_path):
    data = write_shapes_dataset(tmp_path / "data", count=12, frames=5, size=32, seed=1)

    reference = _launch(_config(tmp_path, data, "uninterrupted"))
    log, _ = reference.communicate(timeout=240)
    assert reference.returncode == 0, log
    report = json.loads((tmp_path / "uninterrupted/final/training.json").read_text())
    assert report["processes"] == 2
    digests = report["weights_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]

    killed_cfg = _config(tmp_path, data, "killed")
    victim = _launch(killed_cfg)
    checkpoint = tmp_path / "killed/checkpoints/step-0000004"
    deadline = time.time() + 240
    while not checkpoint.is_dir() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    _kill_tree(victim)
    assert checkpoint.is_dir(), "the run never wrote its step-4 checkpoint"
    assert not (tmp_path / "killed/final").exists(), "the run finished before it could be killed"

    # a fresh start into the same folder is refused instead of overwriting the checkpoints
    refused = _launch(killed_cfg)
    out, _ = refused.communicate(timeout=240)
    assert refused.returncode != 0 and "resume_from: latest" in out, out

    resumed = _launch(_config(tmp_path, data, "killed", resume_from="latest"))
    out, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, out
    assert "resumed from" in out
    report = json.loads((tmp_path / "killed/final/training.json").read_text())
    assert report["weights_sha256_per_process"] == digests

    expected, got = _weights(tmp_path / "uninterrupted/final"), _weights(tmp_path / "killed/final")
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # and training moved the weights: the comparison above is not between two untouched initialisations
    initial = build_default_pipeline(seed=3).transformer.state_dict()
    moved = [k for k, v in initial.items() if not torch.equal(v, got[f"transformer/{k}"])]
    assert len(moved) > len(initial) // 2
