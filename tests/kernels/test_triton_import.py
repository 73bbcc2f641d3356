"""What `vmoba.kernels._triton` tells a user whose Triton is missing or broken."""

import importlib.util
import sys

import pytest
import torch

from vmoba.kernels import _triton


def _load_fresh(monkeypatch, fake_package_dir=None):
    """A fresh copy of the module, importing whatever ``triton`` the patched environment offers."""
    for name in [n for n in sys.modules if n == "triton" or n.startswith("triton.")]:
        monkeypatch.delitem(sys.modules, name)
    if fake_package_dir is None:
        monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ModuleNotFoundError
    else:
        monkeypatch.syspath_prepend(str(fake_package_dir))
    spec = importlib.util.spec_from_file_location("_triton_fresh_copy", _triton.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_triton_says_install_it(monkeypatch):
    module = _load_fresh(monkeypatch)
    assert not module.triton_available
    assert module.triton_unavailable_reason(torch.device("cpu")) == "Triton is not installed (pip install triton)"


@pytest.mark.parametrize("raise_line, shown", [
    ("raise ImportError('libtriton.so: undefined symbol: _ZN4mlir7Context')", "ImportError: libtriton.so: undefined"),
    ("import triton_backend_that_is_gone", "No module named 'triton_backend_that_is_gone'"),
    ("raise RuntimeError('CUDA driver too old')", "RuntimeError: CUDA driver too old"),
])
def test_broken_triton_reports_the_real_error(monkeypatch, tmp_path, raise_line, shown):
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text(raise_line + "\n")
    module = _load_fresh(monkeypatch, tmp_path)
    reason = module.triton_unavailable_reason(torch.device("cuda"))
    assert not module.triton_available
    assert "not installed" not in reason and "installed but does not import" in reason and shown in reason
