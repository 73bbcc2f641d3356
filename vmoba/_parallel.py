"""Running independent pieces of CPU work side by side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch


def parallel_map(fn, n: int, device: torch.device) -> list:
    """``[fn(i) for i in range(n)]``, on CPU spread over ``torch.get_num_threads()`` threads.

    For independent pieces of work made of many small operations (attention heads, chunks of selection
    rows): one after another, every small operation ends in the intra-op fork/join barrier, which stalls
    whenever another process holds a core; side by side, the pieces fill those stalls (on a loaded 2-core
    machine a plain loop ran 9x slower). The host's thread setting is left as it is: a library call must
    not change process-wide state that other threads of the host rely on."""
    workers = min(n, torch.get_num_threads())
    if device.type != "cpu" or workers <= 1:
        return [fn(i) for i in range(n)]
    # thread-local: the workers must inherit the caller's modes (under inference mode the caller's tensors are
    # inference tensors, which a worker outside it may not update in place)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(i):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(i)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(n)))
