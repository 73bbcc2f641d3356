"""VMoBA and criss-cross attention inside diffusers' context parallelism (Ulysses, ring, both): see `engine`.

The processors joining the engine (`ContextParallelVMoBAProcessor`, `ContextParallelCrissCrossProcessor`) live
in `vmoba.parallel.processors`, imported on their own so that `vmoba.processors` can use this package."""

from .engine import (
    UnsupportedParallelism,
    VMoBARing,
    balance_heads,
    context_parallel_attention,
    context_parallel_config,
    dense_reason,
    gather_sequence,
    world_size,
)

__all__ = [
    "UnsupportedParallelism",
    "VMoBARing",
    "balance_heads",
    "context_parallel_attention",
    "context_parallel_config",
    "dense_reason",
    "gather_sequence",
    "world_size",
]
