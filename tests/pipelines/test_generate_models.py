"""``vmoba generate --model``: each family's own size rules, and an export sampled as it was trained."""

import os
import re
import subprocess
import sys

import pytest
import torch
from _tiny_pipelines import export_folder

import vmoba
from vmoba import VMoBAConfig
from vmoba.pipelines import load_pipeline
from vmoba.video import read_video


def _vmoba(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vmoba.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.mark.parametrize("args, message", [
    (["--frames", "5"], r"--frames: num_frames must be 8k\+1 .* got 5"),  # 4k+1 is Wan's rule, not LTX-Video's
    (["--height", "48"], "--height: height must be a multiple of 32 .* got 48"),
])
def test_generate_takes_the_size_rules_from_the_model(tmp_path, ltx_folder, args, message):
    res = _vmoba("generate", "a red ball", "--model", str(ltx_folder), "--out", "clip.mp4", *args, cwd=tmp_path)
    assert res.returncode == 2 and re.search(message, res.stderr), res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_generate_with_an_ltx_video_model(tmp_path, ltx_folder):
    res = _vmoba("generate", "a red ball", "--model", str(ltx_folder), "--out", "clip.mp4", "--frames", "9",
                 "--height", "32", "--width", "64", "--steps", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert read_video(tmp_path / "clip.mp4").shape == (9, 32, 64, 3)


def test_generate_samples_an_export_with_its_training_settings(tmp_path):
    """A `vmoba train` export samples with the attention config, thread count and size it was trained with."""
    folder = export_folder(tmp_path, {"mode": "vmoba", "vmoba": {"threshold": 0.1, "temporal_chunk": 1,
                                                                 "spatial_chunk": [2, 2], "st_chunk": [2, 2, 2]}},
                           threads=1)
    res = _vmoba("generate", "a red circle moves right", "--model", str(folder), "--out", "clip.mp4", "--steps", "1",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"threshold 0.1, auto; settings of {folder / 'training.json'}" in res.stdout, res.stdout
    assert read_video(tmp_path / "clip.mp4").shape == (5, 32, 32, 3)  # the training size, not 64x64x17
    density = float(re.search(r"mean density ([0-9.]+)", res.stdout).group(1))

    # the same call in this process with the trained config gives the same density; VMoBAConfig() another
    pipe = load_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)

    def mean_density(config):
        processors = vmoba.enable(pipe, config)
        pipe("a red circle moves right", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
             output_type="np")
        vmoba.disable(pipe)
        values = processors["transformer"].densities
        return sum(values) / len(values)

    trained = VMoBAConfig(threshold=0.1, temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 2))
    assert density == pytest.approx(mean_density(trained), abs=1e-3)
    assert abs(mean_density(VMoBAConfig()) - density) > 0.05

    flagged = _vmoba("generate", "a red circle", "--model", str(folder), "--out", "b.mp4", "--steps", "1",
                     "--threshold", "0.5", cwd=tmp_path)
    assert flagged.returncode == 0 and "threshold 0.5" in flagged.stdout  # an explicit option still wins
