"""Whole pipelines with VMoBA: the embedded default, a two-expert Wan 2.2 pipeline, and the CLI."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import vmoba
from diffusers.utils import is_xformers_available
from vmoba import VMoBAProcessor
from vmoba.pipelines import DEFAULT_VMOBA_CONFIG, build_default_pipeline
from vmoba.video import psnr, read_video

CALL = dict(height=64, width=64, num_frames=9, num_inference_steps=2, guidance_scale=4.0, output_type="np")


def _run(pipe, seed=0):
    return pipe("a red circle moves right", generator=torch.Generator().manual_seed(seed), **CALL).frames[0]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return build_default_pipeline()


def test_default_pipeline_with_enable_and_disable(pipe):
    dense = _run(pipe)
    assert dense.shape == (9, 64, 64, 3) and np.isfinite(dense).all()
    procs = vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    assert list(procs) == ["transformer"]
    sparse = _run(pipe)
    proc = procs["transformer"]
    assert proc.context.grid == (3, 8, 8)  # 9 frames -> 3 latent frames; 64 px -> 16 latents -> 8 patches
    assert sorted(proc.last_stats) == list(range(6))
    # two CFG calls per step, two steps, six layers
    assert len(proc.densities) == 2 * 2 * 6 and 0 < proc.mean_density() < 1
    assert not np.array_equal(sparse, dense)
    vmoba.disable(pipe)
    np.testing.assert_array_equal(_run(pipe), dense)


def test_enable_refuses_calls_that_would_drop_the_processors(pipe):
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    try:
        with pytest.raises(RuntimeError, match="replace the VMoBA attention processors.*set_attention_backend"):
            pipe.enable_attention_slicing()
        if not is_xformers_available():  # with xformers it runs the dense paths (tests/processors/test_enable.py)
            with pytest.raises(ModuleNotFoundError, match="xformers package"):
                pipe.enable_xformers_memory_efficient_attention()
    finally:
        vmoba.disable(pipe)
    assert "enable_attention_slicing" not in pipe.__dict__


def test_pipeline_set_attn_processor_and_threshold_one(pipe):
    reference = _run(pipe)
    pipe.set_attn_processor(VMoBAProcessor(DEFAULT_VMOBA_CONFIG.replace(threshold=1.0)))
    try:
        np.testing.assert_allclose(_run(pipe), reference, atol=1e-6)
        pipe.set_attn_processor(VMoBAProcessor(DEFAULT_VMOBA_CONFIG))
        out = _run(pipe)
        assert not np.array_equal(out, reference)
        assert psnr(out, reference) > 20  # random weights: sparse attention perturbs, it does not break
    finally:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        pipe.transformer.set_attn_processor(WanAttnProcessor())


def test_two_expert_pipeline_patches_both_transformers():
    from diffusers import WanPipeline, WanTransformer3DModel

    base = build_default_pipeline()
    torch.manual_seed(1)
    second = WanTransformer3DModel.from_config(base.transformer.config)
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
                       transformer=base.transformer, transformer_2=second, boundary_ratio=0.5)
    procs = vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG.replace(dense_steps=1))
    assert sorted(procs) == ["transformer", "transformer_2"]
    assert procs["transformer"].context is procs["transformer_2"].context  # one step count per pipeline
    pipe("a blue square moves up", generator=torch.Generator().manual_seed(0), **{**CALL, "num_inference_steps": 4})
    high, low = procs["transformer"].densities, procs["transformer_2"].densities
    assert high and low, "both experts ran with VMoBA processors"
    assert 1.0 in high and min(high) < 1  # step 0 dense (dense_steps=1), later high-noise steps sparse
    assert max(low) < 1  # the low-noise expert runs the late steps only: all sparse
    vmoba.disable(pipe)


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vmoba.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_generate_writes_a_playable_video(tmp_path):
    res = _cli("generate", "a green triangle moves left", "--out", "clip.mp4", "--steps", "2", "--frames", "9",
               "--compare", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from vmoba.pipelines.default import WEIGHTS_DIR

    # the note about random weights appears exactly when no trained weights are installed
    assert ("random weights" in res.stderr) != (WEIGHTS_DIR / "model_index.json").is_file()
    assert "mean density" in res.stdout and "PSNR" in res.stdout and "time ratio" in res.stdout
    frames = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
    probe = subprocess.run([sys.executable, "-c", "import imageio_ffmpeg,subprocess,sys;"
                            "print(subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(),'-i',sys.argv[1]],"
                            "capture_output=True,text=True).stderr)", str(tmp_path / "clip.mp4")],
                           capture_output=True, text=True)
    assert "h264" in probe.stdout and "yuv420p" in probe.stdout

    again = _cli("generate", "a green triangle moves left", "--out", "clip.mp4", cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--height", "50"], "multiple of 16"),
    (["--frames", "6"], "4k\\+1"),
    (["--model", "no-such-folder"], "no-such-folder: no such folder"),
    (["--out", "clip.avi"], ".mp4"),
    (["--threshold", "2"], "must be <= 1"),
])
def test_cli_generate_bad_arguments(tmp_path, args, message):
    argv = ["generate", "a red ball", "--out", "clip.mp4", *args]
    if "--out" in args:
        argv = ["generate", "a red ball", *args]
    res = _cli(*argv, cwd=tmp_path)
    assert res.returncode == 2
    assert re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "clip.mp4").exists()


def test_cli_help_lists_every_command():
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("bench", "generate"):
        assert command in res.stdout
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "generate", "--help"], capture_output=True, text=True,
                         check=True)
    for option in ("--attention", "--model", "--compare", "--force", "--seed", "--threshold", "--steps"):
        assert option in res.stdout
