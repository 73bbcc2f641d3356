"""VMoBA and criss-cross attention inside diffusers' context parallelism (Ulysses, ring, both): see `engine`.

`VMoBAProcessor` and `CrissCrossAttnProcessor` join it themselves once ``transformer.enable_parallelism(...)``
has run; `training` holds what sequence-parallel training adds."""

from .engine import (
    UnsupportedParallelism,
    VMoBARing,
    balance_heads,
    context_parallel_attention,
    context_parallel_config,
    gather_sequence,
    world_size,
)

__all__ = [
    "UnsupportedParallelism",
    "VMoBARing",
    "balance_heads",
    "context_parallel_attention",
    "context_parallel_config",
    "gather_sequence",
    "world_size",
]
