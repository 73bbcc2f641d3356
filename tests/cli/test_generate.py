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


@pytest.fixture(scope="module")
def model_with_adapter(tmp_path_factory):
    """A copy of the embedded model with a motion adapter whose projection is not zero (so it acts)."""
    import shutil

    from vmoba.motion import MotionEnergy, MotionEnergyAdapter
    from vmoba.pipelines import load_default_pipeline
    from vmoba.pipelines.default import WEIGHTS_DIR

    folder = tmp_path_factory.mktemp("model") / "with_adapter"
    shutil.copytree(WEIGHTS_DIR, folder, ignore=shutil.ignore_patterns("motion_adapter.safetensors"))
    torch.manual_seed(0)
    adapter = MotionEnergyAdapter.for_transformer(load_default_pipeline().transformer,
                                                  energy=MotionEnergy(num_orientations=4, num_scales=2), hidden=8,
                                                  pooling="global")
    torch.nn.init.normal_(adapter.proj.weight, std=0.5)
    adapter.save_pretrained(folder / "motion_adapter.safetensors")
    return folder


def _reference(path, frames=9, step=2):
    """A bright square moving right over a dark background: (T, H, W, 3) uint8, written to ``path``."""
    import numpy as np

    from vmoba.video import write_video

    clip = np.full((frames, 64, 64, 3), 20, np.uint8)
    for t in range(frames):
        clip[t, 24:40, 8 + step * t : 24 + step * t] = 230
    write_video(path, clip, overwrite=True)
    return path


def test_generate_follows_a_motion_reference_as_the_library_does(tmp_path, model_with_adapter):
    """--motion-reference gives the clip that conditioning the pipeline with the adapter in Python gives, and another clip than
    the prompt alone."""
    import numpy as np

    from vmoba.pipelines import load_motion_adapter, load_pipeline

    _reference(tmp_path / "ref.mp4")
    common = ("--model", str(model_with_adapter), "--frames", "9", "--steps", "2", "--seed", "3")
    res = _vmoba("generate", "a red circle", "--out", "with.mp4", "--motion-reference", "ref.mp4", *common,
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "the motion of ref.mp4" in res.stdout
    res = _vmoba("generate", "a red circle", "--out", "without.mp4", *common, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with_ref, without = read_video(tmp_path / "with.mp4"), read_video(tmp_path / "without.mp4")
    assert np.abs(with_ref.astype(int) - without.astype(int)).mean() > 1.0

    import vmoba

    pipe = load_pipeline(model_with_adapter)
    pipe.set_progress_bar_config(disable=True)
    vmoba.enable(pipe, pipe.vmoba_defaults.vmoba_config)
    torch.set_num_threads(1)
    adapter = load_motion_adapter(model_with_adapter)
    reference = torch.from_numpy(read_video(tmp_path / "ref.mp4")).permute(0, 3, 1, 2).float() / 255
    with adapter.conditioning(pipe, reference):
        expected = pipe("a red circle", num_frames=9, num_inference_steps=2, output_type="np",
                        generator=torch.Generator().manual_seed(3)).frames[0]
    from vmoba.video import write_video

    write_video(tmp_path / "expected.mp4", expected, fps=8)  # the same encoding as the command's
    assert np.array_equal(read_video(tmp_path / "expected.mp4"), with_ref)


def test_generate_motion_reference_errors_name_the_problem(tmp_path, model_with_adapter):
    res = _vmoba("generate", "a red circle", "--out", "c.mp4", "--motion-reference", "missing.mp4",
                 "--model", str(model_with_adapter), cwd=tmp_path)
    assert res.returncode == 2 and "--motion-reference: no video file at missing.mp4" in res.stderr, res.stderr
    (tmp_path / "notes.mp4").write_text("not a video")
    res = _vmoba("generate", "a red circle", "--out", "c.mp4", "--motion-reference", "notes.mp4",
                 "--model", str(model_with_adapter), cwd=tmp_path)
    assert res.returncode == 2 and "--motion-reference notes.mp4: not a readable video" in res.stderr, res.stderr
    _reference(tmp_path / "short.mp4", frames=5)
    res = _vmoba("generate", "a red circle", "--out", "c.mp4", "--motion-reference", "short.mp4",
                 "--model", str(model_with_adapter), cwd=tmp_path)
    assert res.returncode == 2 and "--motion-reference short.mp4:" in res.stderr and "frames" in res.stderr
    bare = tmp_path / "bare"
    import shutil

    shutil.copytree(model_with_adapter, bare, ignore=shutil.ignore_patterns("motion_adapter.safetensors"))
    _reference(tmp_path / "ref.mp4")
    res = _vmoba("generate", "a red circle", "--out", "c.mp4", "--motion-reference", "ref.mp4", "--model", "bare",
                 cwd=tmp_path)
    assert res.returncode == 2 and "needs a motion adapter" in res.stderr and "bare has no motion adapter" in res.stderr
    assert not (tmp_path / "c.mp4").exists()
