import os

# Triton decides at decoration time whether to interpret kernels; set this before vmoba is imported so the
# kernel tests run on CPU. On a GPU machine, benchmarks/gpu_check.sh runs the `gpu` tests without it.
if os.environ.get("VMOBA_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny models: on a loaded 2-core machine two threads spend their time
    synchronising (the shipped event checkpoint's check took 526 s with 2 threads against about 20 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
