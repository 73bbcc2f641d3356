"""Sequence-parallel training: one long video split across the ranks of a context-parallel group.

diffusers' context parallelism carries gradients: its sequence split, Ulysses all-to-all, ring steps and the
final all-gather are autograd functions, and VMoBA's ops (`vmoba.parallel.engine`) have backward passes. What
training adds:

* every rank of a context-parallel group must train on the **same** clip with the **same** noise: the data
  rank is ``process_index // degree`` (`data_parallel_rank`), not the process index;
* each rank's parameter gradients cover its own tokens; the model's gradient is their **sum** over the group.
  Data parallelism (DDP, FSDP) averages over every process, so the loss is multiplied by the group size
  (`loss_scale`) to turn that average back into a sum over the group and a mean over the data ranks.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import torch
from diffusers import ContextParallelConfig

from ..checks import choice, integer


def data_parallel_rank(process_index: int, num_processes: int, degree: int) -> tuple[int, int]:
    """``(data rank, data world size)`` of a process when consecutive groups of ``degree`` processes each
    split one sequence (diffusers builds its context-parallel mesh over consecutive ranks)."""
    degree = integer("degree", degree, min=1)
    if num_processes % degree:
        raise ValueError(f"degree must divide the number of processes {num_processes}, got {degree}")
    return process_index // degree, num_processes // degree


def loss_scale(degree: int) -> int:
    """Factor on the loss under data parallelism that averages gradients over every process: the group's
    partial gradients must add up, not average."""
    return integer("degree", degree, min=1)


@contextlib.contextmanager
def _accelerator_count_for_cpu():
    # diffusers places rank r on device r % torch.accelerator.device_count(), which is 0 without an accelerator
    if torch.accelerator.device_count() == 0:
        with mock.patch.object(torch.accelerator, "device_count", return_value=1):
            yield
    else:
        yield


# how a sequence-parallel group splits attention (diffusers' ContextParallelConfig): all-to-all over heads,
# a ring of key/value shards, or a ring of Ulysses pairs
LAYOUTS = ("ulysses", "ring", "unified")


def enable_sequence_parallel(transformer, degree: int, layout: str = "ulysses"):
    """Split ``transformer``'s sequence over ``degree`` processes (all of them: one context-parallel group)
    with diffusers' engine; ``layout`` ``"ulysses"``, ``"ring"`` or ``"unified"`` (ring of Ulysses pairs).
    Install the attention processors first (`vmoba.enable`): diffusers hands its configuration to the
    processors present, and `VMoBAProcessor` and `CrissCrossAttnProcessor` join its engine. Works on CPU
    (gloo) as well as on GPUs."""
    degree = integer("degree", degree, min=2)
    layout = choice("layout", layout, LAYOUTS)
    if layout == "ulysses":
        config = ContextParallelConfig(ulysses_degree=degree)
    elif layout == "ring":
        config = ContextParallelConfig(ring_degree=degree)
    else:
        if degree % 2:
            raise ValueError(f"layout 'unified' needs an even degree, got {degree}")
        config = ContextParallelConfig(ring_degree=2, ulysses_degree=degree // 2)
    with _accelerator_count_for_cpu():
        transformer.enable_parallelism(config=config)
    return transformer._parallel_config


__all__ = ["data_parallel_rank", "enable_sequence_parallel", "loss_scale"]
