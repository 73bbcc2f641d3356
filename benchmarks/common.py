"""Shared helpers of the benchmark scripts: structured inputs, timing, peak memory, cases in fresh processes,
machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from vmoba.checks import atomic_output
from vmoba.synthetic import structured_qkv  # noqa: F401  (re-exported for the scripts)

RESULTS = Path(__file__).resolve().parent / "results"


def time_call(fn, *, warmup=1, repeat=3, sync=None):
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_rss_mib(fn) -> float:
    """Resident memory in MiB that ``fn()`` adds at its peak: VmHWM after resetting it to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (VmHWM) to the current RSS
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def run_child(script, case: dict, env: dict | None = None) -> dict:
    """``python SCRIPT --case JSON`` in a fresh process; the dict its last output line holds."""
    res = subprocess.run([sys.executable, str(script), "--case", json.dumps(case)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def spawn(script, case: dict, *, time_only=()) -> dict:
    """Time ``case`` in one fresh process and its peak memory (``measure="memory"``) in another, with glibc's mmap
    threshold fixed so freed buffers go back to the system; ``time_only``: keys of ``case`` the memory run drops."""
    out = run_child(script, case)
    memory_case = {k: v for k, v in case.items() if k not in time_only}
    out.update(run_child(script, {**memory_case, "measure": "memory"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}))
    return out


def machine_info():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            info["triton"] = metadata.version("triton")
        except metadata.PackageNotFoundError:
            pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def write_json(name, payload, out_dir=None):
    out_dir = Path(out_dir) if out_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    with atomic_output(path) as partial:
        partial.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows, columns):
    """rows: list of dicts; columns: list of (key, header, format)."""
    cells = [[fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h, _) in enumerate(columns)]
    line = " | ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(x.ljust(w) for x, w in zip(c, widths)))


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()

