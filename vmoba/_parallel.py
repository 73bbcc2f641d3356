"""Running independent pieces of CPU work side by side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def parallel_map(fn, n: int, device: torch.device) -> list:
    """``[fn(i) for i in range(n)]``, on CPU spread over threads with one intra-op thread each.

    For independent pieces of work made of many small operations (attention heads, chunks of selection
    rows): intra-op parallelism gains little on small operations, and each one ends in a barrier that
    stalls whenever another process holds a core. Side by side, every operation stays single-threaded."""
    workers = min(n, torch.get_num_threads())
    if device.type != "cpu" or workers <= 1:
        return [fn(i) for i in range(n)]
    grad = torch.is_grad_enabled()  # thread-local: the workers must inherit the caller's mode

    def run(i):
        with torch.set_grad_enabled(grad):
            return fn(i)

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(run, range(n)))
    finally:
        torch.set_num_threads(previous)
