"""``vmoba generate`` and ``vmoba bench``: criss-cross attention, and errors before any work for what cannot
succeed."""

import os
import re
import subprocess
import sys

import pytest
import torch

from vmoba.video import read_video


def _vmoba(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vmoba.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_generate_with_criss_cross_attention(tmp_path):
    res = _vmoba("generate", "a red circle moves right", "--attention", "crisscross", "--out", "clip.mp4",
                 "--frames", "5", "--steps", "1", "--compare", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "crisscross attention" in res.stdout and "PSNR crisscross vs dense" in res.stdout
    density = float(re.search(r"mean density ([0-9.]+)", res.stdout).group(1))
    # 5 frames of 64x64 -> 2 x 8 x 8 tokens after VAE and patch: each query sees its three lines,
    # 2 + 8 + 8 - 2 = 16 of the 128 keys
    assert density == pytest.approx(16 / 128, abs=1e-3)
    assert read_video(tmp_path / "clip.mp4").shape == (5, 64, 64, 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_generate_on_a_missing_device_fails_before_loading(tmp_path):
    res = _vmoba("generate", "a red ball", "--out", "clip.mp4", "--device", "cuda", cwd=tmp_path)
    assert res.returncode == 2 and "--device cuda: PyTorch sees no CUDA device" in res.stderr
    assert "Loading pipeline components" not in res.stderr and not list(tmp_path.iterdir())


def test_generate_checks_the_destination_before_generating(tmp_path):
    (tmp_path / "file").write_text("mine")
    res = _vmoba("generate", "a red ball", "--out", "file/clip.mp4", "--force", cwd=tmp_path)
    assert res.returncode == 2 and "'file' is a file, not a folder" in res.stderr, res.stderr
    (tmp_path / "x.mp4").mkdir()
    res = _vmoba("generate", "a red ball", "--out", "x.mp4", "--force", cwd=tmp_path)
    assert res.returncode == 2 and "'x.mp4' is a folder, not a file name" in res.stderr, res.stderr
    assert "Loading pipeline components" not in res.stderr
    assert (tmp_path / "file").read_text() == "mine" and not list((tmp_path / "x.mp4").iterdir())


def test_generate_replaces_a_video_only_with_force_and_leaves_no_partial_file(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"an older video")
    res = _vmoba("generate", "a red ball", "--out", "clip.mp4", "--frames", "5", "--steps", "1", cwd=tmp_path)
    assert res.returncode == 2 and "exists; pass --force" in res.stderr
    assert (tmp_path / "clip.mp4").read_bytes() == b"an older video"
    res = _vmoba("generate", "a red ball", "--out", "clip.mp4", "--frames", "5", "--steps", "1", "--force",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_video(tmp_path / "clip.mp4").shape == (5, 64, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_generate_names_a_malformed_model_index(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model/model_index.json").write_text("{not json")
    res = _vmoba("generate", "a red ball", "--model", "model", "--out", "clip.mp4", cwd=tmp_path)
    assert res.returncode == 2
    assert re.search(r"--model model: .*model_index.json: the pipeline index is not valid JSON", res.stderr), res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("argv, message", [
    (["bench", "--heads", "0"], "argument --heads: must be >= 1, got 0"),
    (["bench", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["bench", "--head-dim", "-4"], "argument --head-dim: must be >= 1, got -4"),
    (["generate", "x", "--out", "a.mp4", "--guidance-scale", "nan"], "argument --guidance-scale: must be a finite"),
    (["generate", "x", "--out", "a.mp4", "--steps", "-1"], "argument --steps: must be >= 1, got -1"),
    (["generate", "x", "--out", "a.mp4", "--seed", "-3"], "argument --seed: must be >= 0, got -3"),
])
def test_meaningless_numbers_are_refused_with_the_option_named(tmp_path, argv, message):
    res = _vmoba(*argv, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
