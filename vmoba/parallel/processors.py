"""Attention processors that join diffusers' context parallelism: `VMoBAProcessor` and
`CrissCrossAttnProcessor` whose attention seam goes through `context_parallel_attention`, and whose grid and
token counts are those of the whole sequence rather than of the rank's shard. Identical to their bases
without context parallelism. Install them before ``transformer.enable_parallelism(...)``."""

from __future__ import annotations

import math

from ..processors import CrissCrossAttnProcessor, VMoBAProcessor
from ..processors.grid import grid_from_rotary
from .engine import VMoBARing, context_parallel_attention, gather_sequence, world_size


# Once the processors join the engine themselves, these classes add nothing (and must not route twice).
_BASE_JOINS = getattr(VMoBAProcessor, "joins_context_parallelism", False)


def joins_context_parallelism(processor) -> bool:
    """Whether a processor's attention goes through diffusers' context-parallel engine."""
    return _BASE_JOINS or isinstance(processor, _ContextParallelMixin)


class _ContextParallelMixin:
    """What a processor's seam does under context parallelism: the grid and token counts are those of the
    whole sequence, and the attention goes through `context_parallel_attention`. ``head_order`` (set on the
    processor) deals the heads to the Ulysses ranks in that order (`vmoba.parallel.balance_heads`)."""

    head_order = None

    def _parallel_world(self) -> int:
        return 1 if _BASE_JOINS else world_size(self._parallel_config)

    def _dense_reason(self, layer, n_video):
        return super()._dense_reason(layer, n_video * self._parallel_world())

    def _grid(self, adapter, attn, hidden_states, encoder_hidden_states, rotary):
        if self._parallel_world() == 1:
            return super()._grid(adapter, attn, hidden_states, encoder_hidden_states, rotary)
        n_video = adapter.video_tokens(hidden_states, encoder_hidden_states) * self._parallel_world()
        grid = self.grid
        if grid is None and self.context is not None:
            grid = self.context.grid
        if grid is None and rotary is not None:  # the rotary table is split with the sequence: gather it
            grid = grid_from_rotary(gather_sequence(rotary, self._parallel_config), n_video)
        if grid is None:
            raise RuntimeError(
                f"{type(self).__name__} cannot find the latent grid of this {adapter.name} attention layer under "
                f"context parallelism ({n_video} video tokens in all): call vmoba.enable(transformer, config) "
                f"before enable_parallelism, or pass grid=(T, H, W)")
        if math.prod(grid) != n_video:
            raise ValueError(f"latent grid {grid} holds {math.prod(grid)} tokens but the attention layer has "
                             f"{n_video} video tokens across {self._parallel_world()} ranks")
        return grid

    def _ring(self, grid, layer, text_len):
        return None

    def attention(self, q, k, v, grid, layer, *, text_len, text_first, text_mask):
        seam = super().attention
        if _BASE_JOINS:
            return seam(q, k, v, grid, layer, text_len=text_len, text_first=text_first, text_mask=text_mask)

        def whole(q, k, v):
            return seam(q, k, v, grid, layer, text_len=text_len, text_first=text_first, text_mask=text_mask)

        return context_parallel_attention(whole, q, k, v, parallel_config=self._parallel_config,
                                          ring=self._ring(grid, layer, text_len), what=type(self).__name__,
                                          head_order=self.head_order)


class ContextParallelVMoBAProcessor(_ContextParallelMixin, VMoBAProcessor):
    """`VMoBAProcessor` that joins diffusers' context parallelism (Ulysses, ring, both); identical to it
    without. Use it before ``transformer.enable_parallelism(...)``."""

    def _ring(self, grid, layer, text_len):
        return VMoBARing(grid, layer, self.config, text_len=text_len)


class ContextParallelCrissCrossProcessor(_ContextParallelMixin, CrissCrossAttnProcessor):
    """`CrissCrossAttnProcessor` under Ulysses context parallelism (ring raises `UnsupportedParallelism`)."""


__all__ = ["ContextParallelCrissCrossProcessor", "ContextParallelVMoBAProcessor", "joins_context_parallelism"]
