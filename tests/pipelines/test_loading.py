"""`load_pipeline`: every kind of pipeline folder, the facts to sample from it, and clear errors for bad folders."""

import numpy as np
import pytest
import torch
from _tiny_pipelines import export_folder
from diffusers import LTXPipeline

from vmoba import VMoBAConfig
from vmoba.pipelines import (DEFAULT_VMOBA_CONFIG, build_default_pipeline, load_default_pipeline, load_pipeline,
                             video_size_rule)
from vmoba.pipelines import default as default_module

pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_family_gets_its_own_size_rule(ltx_folder):
    ltx = load_pipeline(ltx_folder)
    assert isinstance(ltx, LTXPipeline)
    rule = video_size_rule(ltx)
    assert (rule.spatial_multiple, rule.temporal_factor) == (32, 8)
    rule.check(height=64, width=96, num_frames=17)
    with pytest.raises(ValueError, match="height must be a multiple of 32 .* got 48"):
        rule.check(height=48)
    with pytest.raises(ValueError, match=r"num_frames must be 8k\+1 .* got 5"):
        rule.check(num_frames=5)
    wan = video_size_rule(build_default_pipeline())  # VAE 4x in space, patch 2: 8 px; 4x in time
    assert (wan.spatial_multiple, wan.temporal_factor) == (8, 4)
    wan.check(height=24, num_frames=5)
    with pytest.raises(ValueError, match="multiple of 16"):
        wan.check(height=24, extra_spatial_multiple=16)
    # a diffusers folder without training.json samples at the pipeline's own defaults
    assert (ltx.vmoba_defaults.height, ltx.vmoba_defaults.width, ltx.vmoba_defaults.num_frames) == (512, 704, 161)
    assert ltx.vmoba_defaults.vmoba_config == VMoBAConfig()


def test_embedded_and_exported_default_models_carry_their_sampling_settings(tmp_path):
    embedded = load_pipeline(None)
    d = embedded.vmoba_defaults
    assert d.vmoba_config == DEFAULT_VMOBA_CONFIG and d.threads == 1 and (d.height, d.width, d.num_frames) == (64, 64, 17)
    trained = {"mode": "vmoba", "vmoba": {"threshold": 0.1, "temporal_chunk": 1}}
    folder = export_folder(tmp_path, trained, threads=1)
    d = load_pipeline(folder).vmoba_defaults
    assert d.vmoba_config == VMoBAConfig(threshold=0.1, temporal_chunk=1)  # as the trainer resolves it
    assert d.threads == 1 and (d.height, d.width, d.num_frames) == (32, 32, 5)
    assert d.source == str(folder / "training.json") and d.attention == "vmoba"
    d = load_pipeline(export_folder(tmp_path / "b", trained, pretrained="default")).vmoba_defaults
    assert d.vmoba_config == DEFAULT_VMOBA_CONFIG.replace(threshold=0.1, temporal_chunk=1)
    assert load_pipeline(export_folder(tmp_path / "c", {"mode": "dense"})).vmoba_defaults.attention == "dense"


def test_bad_folders_fail_with_the_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_pipeline(tmp_path / "typo")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline", ')
    with pytest.raises(ValueError, match=r"model_index.json: the pipeline index is not valid JSON"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="model_index.json: the pipeline index must be a JSON object"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "WanPipeline", "transformer": ["diffusers", "X"]}')
    with pytest.raises(ValueError, match="could not load the WanPipeline"):
        load_pipeline(tmp_path)
    folder = export_folder(tmp_path / "export", {"mode": "vmoba"})
    (folder / "training.json").write_text('{"config": {"attention": {"mode": "sparse"}}}')
    with pytest.raises(ValueError, match="training.json: the recorded training settings are not valid"):
        load_pipeline(folder)


def test_load_default_pipeline_never_returns_random_weights_for_a_wrong_path(tmp_path, monkeypatch, caplog):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_default_pipeline("/typo")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_default_pipeline(tmp_path, quiet=True)
    # only a package that ships no weights falls back to random ones, and says so
    monkeypatch.setattr(default_module, "WEIGHTS_DIR", tmp_path / "not-shipped")
    with caplog.at_level("WARNING", logger="vmoba"):
        pipe = load_default_pipeline()
    assert pipe.vmoba_trained is False and "random weights" in caplog.text
    pipe.save_pretrained(tmp_path / "saved")
    reloaded = load_default_pipeline(tmp_path / "saved")
    assert reloaded.vmoba_trained is True
    for a, b in zip(pipe.transformer.parameters(), reloaded.transformer.parameters()):
        torch.testing.assert_close(a, b)


def test_default_pipeline_samples_at_its_own_size_and_checks_its_arguments():
    pipe = build_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    video = pipe("a red circle moves right", num_inference_steps=1, output_type="np").frames[0]
    assert video.shape == (17, 64, 64, 3) and np.isfinite(video).all()
    # positional sizes still count as given
    video = pipe("a red circle moves right", None, 32, 32, 5, num_inference_steps=1, output_type="np").frames[0]
    assert video.shape == (5, 32, 32, 3)
    for kwargs, message in (({"num_inference_steps": -1}, "num_inference_steps must be >= 1, got -1"),
                            ({"num_inference_steps": 0}, "num_inference_steps must be >= 1, got 0"),
                            ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
                            ({"height": 0}, "height must be >= 1")):
        with pytest.raises(ValueError, match=message):
            pipe("a red circle", **kwargs)
