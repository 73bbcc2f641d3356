"""``import vmoba`` is fast and light; every public name and sub-package is reachable from it."""

import json
import subprocess
import sys

import pytest

import vmoba

HEAVY = ("torch", "diffusers", "transformers", "gradio", "cv2", "triton", "accelerate")


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (nothing imported yet) and return the JSON it prints."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.splitlines()[-1])


def test_import_vmoba_loads_no_heavy_dependency():
    result = _fresh("import json, sys\nimport vmoba, vmoba.pipelines\n"
                    f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert result == []


def test_subpackages_work_after_a_bare_import(tmp_path):
    events = tmp_path / "events.txt"
    events.write_text("4 3\n0.25 0 0 0\n0.5 1 2 1\n")
    result = _fresh("import json, sys\nimport vmoba\n"
                    f"ev = vmoba.events.read_events({str(events)!r})\n"
                    "flow = vmoba.motion.estimate_flow\n"
                    "load = vmoba.pipelines.load_default_pipeline\n"
                    "print(json.dumps({'t': ev.t.tolist(), 'p': ev.p.tolist(), 'size': list(ev.sensor_size),"
                    " 'flow': flow.__module__, 'load': load.__module__,"
                    " 'ui_libraries': [m for m in ('gradio', 'cv2') if m in sys.modules]}))")
    assert result["t"] == [0.25, 0.5] and result["p"] == [-1, 1] and result["size"] == [3, 4]
    assert result["flow"] == "vmoba.motion.flow" and result["load"] == "vmoba.pipelines.default"
    assert result["ui_libraries"] == []


def test_every_public_name_is_reachable_and_is_the_defining_modules_object():
    import importlib

    for name, module in vmoba._EXPORTS.items():
        defining = importlib.import_module(f"vmoba.{module}")
        if not hasattr(defining, name):
            assert name == "SelectionRecord", f"vmoba.{module} lost {name}"  # added to vmoba.processors elsewhere
            continue
        assert getattr(vmoba, name) is getattr(defining, name)
        assert name in dir(vmoba) and name in vmoba.__all__
    # the contract of DESIGN.md
    for name in ("VMoBAConfig", "partition_blocks", "select_blocks", "vmoba_attention", "VMoBAProcessor", "enable",
                 "disable", "criss_cross_attention", "CrissCrossAttention", "CrissCrossAttention3D",
                 "RecurrentCrissCrossAttention", "CrissCrossAttnProcessor"):
        assert callable(getattr(vmoba, name))
    for package in ("events", "motion", "pipelines"):
        assert getattr(vmoba, package).__name__ == f"vmoba.{package}"
    assert vmoba.pipelines.EventToVideoPipeline.__name__ == "EventToVideoPipeline"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="module 'vmoba' has no attribute 'no_such_name'"):
        vmoba.no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="module 'vmoba.pipelines' has no attribute 'nothing'"):
        vmoba.pipelines.nothing  # noqa: B018
