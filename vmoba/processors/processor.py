"""`VMoBAProcessor` and `CrissCrossAttnProcessor`: diffusers attention processors for video self-attention."""

from __future__ import annotations

from .base import AttentionProcessor

__all__ = ["CrissCrossAttnProcessor", "VMoBAProcessor"]


class VMoBAProcessor(AttentionProcessor):
    """Diffusers attention processor running VMoBA block-sparse attention for video self-attention.

    Works with ``model.set_attn_processor(VMoBAProcessor(config))`` on Wan (2.1, 2.2, VACE, SkyReels-V2),
    CogVideoX (1.0, 1.5), HunyuanVideo and LTX-Video transformers. Each family's default processor is
    reproduced exactly and only the video self-attention changes; cross-attention, text-only attention
    and masked attention run the family's default processor. The latent grid comes from
    `vmoba.enable`'s hook when present, else from ``grid=``, else from the 3D rotary embedding. Layer
    indices are the order in which video self-attention layers run (the block order); layer ``i`` runs
    ``config.layer_schedule[i % len]``, which may mix ``"crisscross"`` with the VMoBA schemes.

    Args:
        config: a `VMoBAConfig` or a dict of its fields.
        grid: fixed post-patch latent grid ``(T, H, W)``, overriding every other source.
        family: ``"wan"``, ``"cogvideox"``, ``"hunyuan"`` or ``"ltx"``; found from the attention module
            when None.
        capture: record every video self-attention call as a `SelectionRecord` in ``captured`` (the
            attribute ``capture`` can be switched at any time).
        recurrence: loops of each criss-cross layer of a mixed ``layer_schedule`` (`criss_cross_attention`'s
            ``recurrence``: ``A^R v``).

    After a call, ``last_stats[layer]`` holds the `AttentionStats` of each layer's last call.
    """

    def scheme_for_layer(self, layer: int) -> str:
        return self.config.scheme_for_layer(layer)


class CrissCrossAttnProcessor(AttentionProcessor):
    """Diffusers attention processor running token-level criss-cross attention (`criss_cross_attention`) for
    video self-attention: each query sees the tokens on its t-, h- and w-lines plus all text tokens.

    Same families, grid discovery, dense fallbacks (``config.dense_layers``, ``dense_steps``, ``min_tokens``),
    statistics and capture as `VMoBAProcessor`; of the other fields of ``config`` only ``backend`` (the fused
    Triton kernel on CUDA with ``"auto"``) and ``memory_budget_mb`` (the PyTorch path) are used.
    ``recurrence=R`` applies each layer's criss-cross attention R times (``A^R v``: two loops connect every video
    token of a 2D grid or, through the text tokens, of any grid; three on a 3D grid without text):
    ``CrissCrossAttnProcessor(config, recurrence=2)``, or in a whole pipeline
    ``vmoba.enable(pipe, config, processor=functools.partial(CrissCrossAttnProcessor, recurrence=2))``."""

    def scheme_for_layer(self, layer: int) -> str:
        return "crisscross"
