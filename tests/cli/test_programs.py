"""The training and evaluation programs, ``vmoba env`` and ``vmoba demo``: one command line, the library behind it."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
import torch

import vmoba.ui
from vmoba import cli
from vmoba.motion.train_flow import FlowTrainingSettings
from vmoba.pipelines.event_training import EventTrainingSettings


def _vmoba(*args, cwd, module="vmoba.cli"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_env_prints_versions_devices_and_triton_status(tmp_path):
    res = _vmoba("env", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip())
    for package in ("torch", "triton", "diffusers", "transformers", "gradio", "xformers"):
        try:
            expected = metadata.version(package)
        except metadata.PackageNotFoundError:
            expected = "not installed"
        assert lines[package] == expected
    assert lines["python"].startswith(".".join(map(str, sys.version_info[:3])))
    assert re.search(r"^device +cpu \(.*\); Triton kernels (run|off: .+)$", res.stdout, re.M)
    # conftest sets TRITON_INTERPRET=1, under which the kernels run on CPU
    if os.environ.get("TRITON_INTERPRET") == "1" and "not installed" not in lines["triton"]:
        assert "cpu" in res.stdout and "Triton kernels run" in res.stdout


def test_demo_hands_its_options_to_the_app(monkeypatch):
    received = []
    monkeypatch.setattr(vmoba.ui, "main", lambda argv: received.append(argv) or 0, raising=False)
    assert cli.main(["demo", "--port", "7861", "--models-dir", "models", "--threads", "2"]) == 0
    assert cli.main(["demo"]) == 0
    assert received == [["--host", "127.0.0.1", "--port", "7861", "--models-dir", "models", "--threads", "2"],
                        ["--host", "127.0.0.1", "--threads", "1"]]
    # both parsers are one: what `vmoba demo` accepts, `python -m vmoba.ui` accepts, with the same meaning
    for argv in received:
        vars(vmoba.ui.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "argument --port: must be <= 65535, got 70000"),
    (["--threads", "0"], "argument --threads: must be >= 1, got 0"),
])
def test_demo_refuses_bad_options_like_the_app(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_demo_without_the_app_says_so(monkeypatch, capsys):
    monkeypatch.delattr(vmoba.ui, "main", raising=False)
    assert cli.main(["demo", "--host", "0.0.0.0"]) == 2
    assert "vmoba.ui has no main" in capsys.readouterr().err


@pytest.mark.parametrize("program, settings", [("events", EventTrainingSettings), ("motion", FlowTrainingSettings)])
def test_training_options_document_the_library_defaults(program, settings):
    """An option not given keeps the settings class's default: the help text must state that default."""
    parser = cli.build_parser()
    for name in ("train", program):
        parser = next(a for a in parser._actions if a.choices and name in a.choices).choices[name]
    options = {action.dest: action for action in parser._actions}
    for field in dataclasses.fields(settings):
        option = options[field.name]
        if isinstance(field.default, bool):
            assert option.const is True and option.default is False
        elif field.default is not None:
            shown = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else str(field.default)
            assert f"(default {shown})" in option.help, (field.name, option.help)
            assert option.default is None  # not given: not passed, the class decides


def test_data_shapes_force_help_names_the_manifest():
    """--force replaces only what an earlier run recorded (vmoba.training.shapes.MANIFEST): the help says so."""
    from vmoba.training.shapes import MANIFEST

    parser = cli.build_parser()
    for name in ("data", "shapes"):
        parser = next(a for a in parser._actions if a.choices and name in a.choices).choices[name]
    force = next(a for a in parser._actions if a.dest == "force")
    assert MANIFEST in force.help and "unchanged" in force.help


@pytest.mark.parametrize("argv, message", [
    (["train", "events", "--out", "o", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["train", "events", "--out", "o", "--frames", "2", "--denoised-frames", "3"], "denoised_frames must be <= 2"),
    (["train", "motion", "--out", "o.pt"], "give a .safetensors path"),
    (["train", "motion", "--out", "o.safetensors", "--lr", "nan"], "argument --lr: must be a finite number"),
    (["eval", "events", "--out", "e.txt"], "give a .json path"),
])
def test_programs_refuse_bad_options_before_any_work(tmp_path, argv, message):
    res = _vmoba(*argv, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_train_events_then_eval_events(tmp_path):
    train = ["train", "events", "--out", "run", "--steps", "2", "--batch-size", "1", "--size", "32", "--frames", "2",
             "--denoised-frames", "1", "--log-every", "1"]
    res = _vmoba(*train, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    log = json.loads((tmp_path / "run/training_log.json").read_text())
    assert log["steps"] == 2 and [e["step"] for e in log["log"]] == [1, 2]
    assert log["settings"]["batch_size"] == 1 and log["settings"]["lr"] == EventTrainingSettings.lr
    assert [json.loads(line)["step"] for line in res.stdout.splitlines() if line.startswith("{")] == [1, 2]

    again = _vmoba(*train, cwd=tmp_path)
    assert again.returncode == 2 and "already holds a pipeline; pass --force" in again.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep")
    other = _vmoba(*train[:3], "mine", "--force", cwd=tmp_path)
    assert other.returncode == 2 and "holds other files" in other.stderr
    assert (tmp_path / "mine/notes.txt").read_text() == "keep"

    res = _vmoba("eval", "events", "--weights", "run", "--sequences", "1", "--frames", "2", "--steps", "1",
                 "--no-lpips", "--out", "eval.json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    (row,) = result["per_sequence"]
    for method in ("diffusion", "lowfreq", "hold_first_frame"):
        assert result["mean"][method]["mse"] == pytest.approx(row[method]["mse"])
    assert result["weights"] == "run" and result["lpips"] == "disabled"
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


@pytest.mark.slow
def test_train_motion_writes_loadable_weights(tmp_path):
    from vmoba.motion import MotionFlowNet

    # through the module accelerate launches: the same program as `vmoba train motion`
    res = _vmoba("motion", "--out", "flow.safetensors", "--steps", "2", "--batch-size", "1", "--size", "32",
                 "--frames", "7", "--skip-heldout", cwd=tmp_path, module="vmoba.train")
    assert res.returncode == 0, res.stderr
    model = MotionFlowNet.from_pretrained(tmp_path / "flow.safetensors")
    assert model.metadata["training"]["steps"] == 2 and model.metadata["training"]["frames"] == [7]
    assert "heldout_translation_epe" not in model.metadata
    flow = model(torch.rand(7, 32, 32))
    assert flow.shape == (2, 32, 32) and torch.isfinite(flow).all()
    again = _vmoba("train", "motion", "--out", "flow.safetensors", cwd=tmp_path)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr
