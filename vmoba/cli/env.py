"""``vmoba env``: what a bug report needs to know about this installation."""

from __future__ import annotations

import argparse
import platform
import sys
from importlib import metadata

import torch

import vmoba

from ..kernels._triton import triton_unavailable_reason

PACKAGES = ("torch", "triton", "diffusers", "transformers", "accelerate", "gradio", "xformers")


def package_version(name: str) -> str:
    """The installed version, read from the package's metadata (the package is not imported: a broken
    install still reports its version)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "cpu":
        return f"{platform.machine()}, {torch.get_num_threads()} PyTorch thread(s)"
    return device


def run_env(args: argparse.Namespace) -> int:
    print(f"vmoba        {vmoba.__version__} ({vmoba.__path__[0]})")
    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"platform     {platform.platform()}")
    for name in PACKAGES:
        print(f"{name:12} {package_version(name)}")
    print(f"CUDA         {torch.version.cuda or 'none (CPU build of PyTorch)'}")
    for device in devices():
        reason = triton_unavailable_reason(torch.device(device))
        status = "Triton kernels run" if reason is None else f"Triton kernels off: {reason}"
        print(f"device       {device} ({device_name(device)}); {status}")
    return 0
