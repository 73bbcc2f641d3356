"""The YAML training configuration: defaults, paths, and an error naming the field for every bad value."""

import os
import subprocess
import sys

import pytest
import yaml

from vmoba.training import ConfigError, config_from_dict, load_config

MINIMAL = {"data": {"root": "data"}, "training": {"output_dir": "out", "max_steps": 10}}


def _with(path: str, value):
    config = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = config
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return config


def test_minimal_config_and_defaults():
    c = config_from_dict(MINIMAL)
    assert c.task == "text_to_video" and c.model.pretrained == "default" and c.model.train == ["transformer"]
    assert c.attention.mode == "vmoba" and c.flow.shift == 3.0
    assert (c.data.num_frames, c.data.height, c.data.width) == (17, 64, 64)
    assert c.training.mixed_precision == "auto" and c.training.ema_decay is None
    assert config_from_dict(_with("training.learning_rate", "3e-4")).training.learning_rate == 3e-4


@pytest.mark.parametrize("path, value, message", [
    ("task", "classify", "task must be one of text_to_video, autoencoder"),
    ("training.lerning_rate", 1e-4, "unknown field training.lerning_rate \\(did you mean 'learning_rate'\\?\\)"),
    ("optimizer", {"lr": 1}, "unknown field optimizer"),
    ("training.learning_rate", -1.0, "training.learning_rate must be > 0"),
    ("training.learning_rate", "fast", "training.learning_rate must be a number"),
    ("training.batch_size", 2.5, "training.batch_size must be an integer"),
    ("training.max_steps", 0, "training.max_steps must be > 0"),
    ("training.output_dir", "", "training.output_dir is required"),
    ("training.ema_decay", 1.5, "training.ema_decay must be in \\(0, 1\\)"),
    ("training.mixed_precision", "fp8", "training.mixed_precision must be one of"),
    ("training.lr_schedule", "linear", "training.lr_schedule must be one of constant, cosine"),
    ("data.root", "", "data.root is required"),
    ("data.num_frames", 16, "data.num_frames must be 4k\\+1"),
    ("data.height", 50, "data.height must be a positive multiple of 16"),
    ("data.caption_dropout", 1.0, "data.caption_dropout must be in \\[0, 1\\)"),
    ("data.preload", "yes", "data.preload must be true or false"),
    ("model.train", ["transformer", "vae"], "model.train must be one of transformer, text_encoder"),
    ("model.train", "transformer", "model.train must be a list"),
    ("model.lora", {"rank": 0}, "model.lora.rank must be > 0"),
    ("attention.mode", "sparse", "attention.mode must be one of vmoba, dense"),
    ("attention.vmoba", {"threshold": 2}, "attention.vmoba is not a valid VMoBAConfig: .*threshold"),
    ("attention.vmoba", {"thresh": 0.2}, "attention.vmoba is not a valid VMoBAConfig: unknown VMoBAConfig field"),
    ("attention.vmoba", {"dense_steps": 3}, "attention.vmoba.dense_steps counts denoising steps"),
    ("validation.every", 10, "validation.prompts must list at least one prompt"),
    ("flow.timestep_sampling", "beta", "flow.timestep_sampling must be one of uniform, logit_normal"),
    ("flow.posterior", "mode", "flow.posterior must be one of sample, mean"),
    ("flow.foreground_weight", -1.0, "flow.foreground_weight must be >= 0"),
    ("flow.input_blur", -0.5, "flow.input_blur must be >= 0"),
    ("autoencoder.mid_attention", "off", "autoencoder.mid_attention must be one of train, identity"),
    ("autoencoder.sample_posterior", "no", "autoencoder.sample_posterior must be true or false"),
    ("data", ["root"], "data must be a mapping"),
    ("training.learning_rate", float("nan"), "training.learning_rate must be a finite number, got nan"),
    ("training.max_minutes", float("inf"), "training.max_minutes must be a finite number, got inf"),
    ("training.batch_size", True, "training.batch_size must be an integer"),
    ("training.sequence_parallel", 0, "training.sequence_parallel must be > 0"),
    ("training.sequence_parallel_layout", "mesh", "training.sequence_parallel_layout must be one of ulysses, ring, "
                                                  "unified"),
])
def test_bad_fields_are_named(path, value, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_with(path, value), source="train.yaml")


def test_a_bad_field_names_its_file_once():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(_with("data.preload", "yes"), source="train.yaml")
    assert str(caught.value) == "train.yaml: data.preload must be true or false, got 'yes'"


def test_numpy_and_torch_scalars_are_numbers_like_any_other():
    import numpy as np
    import torch

    c = config_from_dict(_with("training.batch_size", np.int64(3)))
    assert c.training.batch_size == 3 and type(c.training.batch_size) is int
    c = config_from_dict(_with("training.learning_rate", np.float32(0.25)))
    assert c.training.learning_rate == 0.25 and type(c.training.learning_rate) is float
    assert config_from_dict(_with("training.max_steps", torch.tensor(7))).training.max_steps == 7
    assert config_from_dict(_with("data.preload", np.bool_(True))).data.preload is True


def test_combinations_that_cannot_run():
    lora_scratch = _with("model.lora", {"rank": 4})
    lora_scratch["model"]["from_scratch"] = True
    with pytest.raises(ConfigError, match="model.lora adapts pretrained weights"):
        config_from_dict(lora_scratch)
    with pytest.raises(ConfigError, match="model.train must be \\[transformer\\] with model.lora"):
        config_from_dict({**_with("model.lora", {"rank": 4}), "model": {"lora": {"rank": 4},
                                                                          "train": ["transformer", "text_encoder"]}})
    cached_random = _with("data.cache_dir", "cache")
    cached_random["data"]["clip_start"] = "random"
    with pytest.raises(ConfigError, match="data.cache_dir stores one latent per clip"):
        config_from_dict(cached_random)
    with pytest.raises(ConfigError, match="data.cache_dir holds VAE latents"):
        config_from_dict({**_with("data.cache_dir", "cache"), "task": "autoencoder"})
    with pytest.raises(ConfigError, match="training.sequence_parallel splits the transformer's sequence"):
        config_from_dict({**_with("training.sequence_parallel", 2), "task": "autoencoder"})
    for field, value in (("foreground_weight", 4.0), ("input_blur", 2.0)):
        distilled = _with("motion_adapter", {"target": "caption", "drop_words": ["left"]})
        distilled["model"] = {"train": ["motion_adapter"]}
        distilled["data"]["caption_dropout"] = 0.0
        config_from_dict(distilled)
        distilled["flow"] = {field: value}
        with pytest.raises(ConfigError, match=f"flow.{field} .*motion_adapter.target: caption"):
            config_from_dict(distilled)
    odd_unified = _with("training.sequence_parallel", 3)
    odd_unified["training"]["sequence_parallel_layout"] = "unified"
    with pytest.raises(ConfigError, match="training.sequence_parallel must be even"):
        config_from_dict(odd_unified)


def test_yaml_file_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "recipes").mkdir()
    path = tmp_path / "recipes/train.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "model": {"vae": "../vae"}}))
    c = load_config(path)
    assert c.data.root == str(tmp_path / "recipes/data") and c.training.output_dir == str(tmp_path / "recipes/out")
    assert c.model.vae == str(tmp_path / "vae")  # normalised: one spelling per folder
    # so a run resumed from a config elsewhere that names the same folders compares equal
    (tmp_path / "other").mkdir()
    (tmp_path / "other/train.yaml").write_text(yaml.safe_dump({**MINIMAL, "data": {"root": "../recipes/data"}}))
    assert load_config(tmp_path / "other/train.yaml").fingerprint("data") == c.fingerprint("data")
    # the run's record keeps the paths as the file wrote them, and says which file
    record = c.record()
    assert record["config_file"] == "train.yaml" and record["model"]["vae"] == os.path.join("..", "vae")
    assert record["data"]["root"] == "data" and record["training"]["output_dir"] == "out"
    assert record["model"]["pretrained"] == "default" and c.model.vae == str(tmp_path / "vae")
    absolute = tmp_path / "elsewhere"
    path.write_text(yaml.safe_dump({**MINIMAL, "model": {"pretrained": str(absolute)}}))
    assert load_config(path).record()["model"]["pretrained"] == os.path.join("..", "elsewhere")
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_config(path)
    path.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(path)
    with pytest.raises(ConfigError, match="no training configuration at"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_a_bad_config_and_writes_nothing(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(_with("training.batch_size", -2)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv in (["-m", "vmoba.cli", "train", "--config", "bad.yaml"], ["-m", "vmoba.train", "--config", "bad.yaml"]):
        res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert res.returncode == 2
        assert "bad.yaml: training.batch_size must be > 0, got -2" in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_the_command_applies_training_threads_and_the_library_leaves_them(tmp_path, monkeypatch):
    import torch

    import vmoba.cli.train as train_command
    from vmoba.cli import main

    seen = []
    monkeypatch.setattr(train_command, "run_training", lambda config: seen.append(torch.get_num_threads()))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    path = tmp_path / "train.yaml"
    try:
        for threads in (3, 1):
            path.write_text(yaml.safe_dump(_with("training.threads", threads)))
            assert main(["train", "--config", str(path)]) == 0
        torch.set_num_threads(2)
        path.write_text(yaml.safe_dump(MINIMAL))  # no setting: the process keeps its own
        assert main(["train", "--config", str(path)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [3, 1, 2]


def test_cli_lists_the_training_and_data_commands():
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "--help"], capture_output=True, text=True, check=True)
    assert "train" in res.stdout and "data" in res.stdout
    res = subprocess.run([sys.executable, "-m", "vmoba.cli", "data", "shapes", "--help"], capture_output=True,
                         text=True, check=True)
    for option in ("--out", "--count", "--frames", "--size", "--seed", "--force"):
        assert option in res.stdout


def _training(**fields):
    base = {"data": {"root": "d"}, "training": {"output_dir": "o", "max_steps": 1500, "learning_rate": 1.0,
                                                 "lr_schedule": "cosine", "lr_warmup_steps": 100,
                                                 "min_lr_ratio": 0.1, **fields}}
    return config_from_dict(base).training


def test_learning_rate_schedule_in_closed_form():
    import math

    from vmoba.training.trainer import learning_rate

    t = _training()
    assert learning_rate(t, 0) == pytest.approx(1 / 100) and learning_rate(t, 99) == pytest.approx(1.0)
    for step in (100, 450, 800, 1499):
        progress = (step - 100) / 1400
        assert learning_rate(t, step) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    # a run stopped early on a longer schedule: the same rates as the long run, step for step
    short = _training(max_steps=600, lr_schedule_steps=1500)
    assert [learning_rate(short, s) for s in range(600)] == [learning_rate(t, s) for s in range(600)]
    assert learning_rate(_training(max_steps=600), 450) < learning_rate(t, 450)
    with pytest.raises(ConfigError, match="training.lr_schedule_steps must be at least lr_warmup_steps"):
        _training(lr_schedule_steps=50)


def test_fields_added_later_leave_a_runs_fingerprint_alone_at_their_default():
    import dataclasses
    import hashlib
    import json

    from vmoba.training.config import ADDED

    c = config_from_dict(_with("motion_adapter", {"hidden": 16}))
    # the fingerprint as it was before the added fields existed: the section without them
    data = c.to_dict()
    added = [f.name for f in dataclasses.fields(c.motion_adapter) if f.metadata.get(ADDED)]
    assert "synthetic_references" in added
    for name in added:
        del data["motion_adapter"][name]
    before = hashlib.sha256(json.dumps({s: data[s] for s in ("model", "motion_adapter")}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    assert c.fingerprint("model", "motion_adapter") == before
    # set away from the default, an added field is part of the run's identity like any other
    d = config_from_dict(_with("motion_adapter", {"hidden": 16, "synthetic_references": 0.5}))
    assert d.fingerprint("model", "motion_adapter") != before
    e = config_from_dict(_with("motion_adapter", {"hidden": 16, "synthetic_speed": [1.0, 2.0]}))
    assert e.fingerprint("model", "motion_adapter") not in (before, d.fingerprint("model", "motion_adapter"))
