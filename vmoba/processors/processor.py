"""`VMoBAProcessor`: a diffusers attention processor that runs VMoBA for video self-attention."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..attention import AttentionStats, vmoba_attention
from ..config import VMoBAConfig, as_config
from ..partition import get_partition, validate_grid
from .families import FAMILY_ADAPTERS, family_of_attention
from .grid import grid_from_rotary


@dataclass
class CallContext:
    """What a forward pre-hook learned about the current transformer call (set by `vmoba.enable`)."""

    grid: tuple[int, int, int] | None = None
    step: int | None = None  # denoising step within the current pipeline call
    timesteps: list[float] = field(default_factory=list)

    def observe_timestep(self, t: float | None) -> None:
        """Steps are distinct timesteps in order; a timestep above the last one starts a new pipeline call.
        Classifier-free guidance's two calls of one step see the same timestep and share its index."""
        if t is None:
            self.step = None
            return
        if not self.timesteps or t > self.timesteps[-1]:
            self.timesteps = [t]
        elif t != self.timesteps[-1]:
            self.timesteps.append(t)
        self.step = len(self.timesteps) - 1


class VMoBAProcessor:
    """Diffusers attention processor running VMoBA block-sparse attention for video self-attention.

    Works with ``model.set_attn_processor(VMoBAProcessor(config))`` on Wan (2.1, 2.2, VACE, SkyReels-V2),
    CogVideoX (1.0, 1.5), HunyuanVideo and LTX-Video transformers. Each family's default processor is
    reproduced exactly and only the video self-attention changes; cross-attention, text-only attention
    and masked attention run the family's default processor. The latent grid comes from
    `vmoba.enable`'s hook when present, else from ``grid=``, else from the 3D rotary embedding. Layer
    indices are the order in which video self-attention layers run (the block order).

    Args:
        config: a `VMoBAConfig` or a dict of its fields.
        grid: fixed post-patch latent grid ``(T, H, W)``, overriding every other source.
        family: ``"wan"``, ``"cogvideox"``, ``"hunyuan"`` or ``"ltx"``; guessed from the attention module
            when None.

    After a call, ``last_stats[layer]`` holds the `AttentionStats` of each layer's last call.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, config: VMoBAConfig | Mapping[str, Any] | None = None, *,
                 grid: Sequence[int] | None = None, family: str | None = None):
        self.config = as_config(config)
        self.grid = validate_grid(grid) if grid is not None else None
        if family is not None and family not in FAMILY_ADAPTERS:
            raise ValueError(f"family must be one of {sorted(FAMILY_ADAPTERS)}, got {family!r}")
        self.family = family
        self.context: CallContext | None = None
        self.layer_index: dict[int, int] = {}
        self.last_stats: dict[int, AttentionStats] = {}
        self.densities: list[float] = []  # every call's density since the last reset_stats()
        self._defaults: dict[tuple, Any] = {}

    def reset_stats(self) -> None:
        self.last_stats.clear()
        self.densities.clear()

    def mean_density(self) -> float | None:
        """Mean attended density over the video self-attention calls since the last `reset_stats`."""
        return sum(self.densities) / len(self.densities) if self.densities else None

    def _record(self, layer: int, stats: AttentionStats) -> None:
        self.last_stats[layer] = stats
        self.densities.append(stats.density)

    def clone(self) -> "VMoBAProcessor":
        """A fresh processor with the same settings (its own layer indices and statistics)."""
        return type(self)(self.config, grid=self.grid, family=self.family)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r}, family={self.family!r})"


    # -- the diffusers processor interface ----------------------------------------------------------

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 image_rotary_emb=None, **kwargs):
        # named, not left to **kwargs: diffusers' Attention drops keyword arguments a processor does not name
        rotary = rotary_emb if rotary_emb is not None else image_rotary_emb
        family = self.family or family_of_attention(attn)
        if family is None:
            raise TypeError(f"VMoBAProcessor does not know attention modules of type {type(attn).__name__}; "
                            f"supported families: {sorted(FAMILY_ADAPTERS)}")
        adapter = FAMILY_ADAPTERS[family]
        reason = adapter.sparse_capable(attn, hidden_states, encoder_hidden_states, attention_mask, rotary)
        if reason is None:
            layer = self._layer_of(attn)
            reason = self._dense_reason(layer, adapter.video_tokens(hidden_states, encoder_hidden_states))
            if reason is not None:
                self._record(layer, self._dense_stats(layer, reason))
        if reason is not None:
            default = self._default_for(adapter, attn, encoder_hidden_states, rotary)
            return adapter.call_default(default, attn, hidden_states, encoder_hidden_states, attention_mask, rotary,
                                        kwargs)
        grid = self._grid(adapter, attn, hidden_states, encoder_hidden_states, rotary)

        def attend(q, k, v, *, text_len=0, text_first=True, text_mask=None):
            out, stats = self.attention(q, k, v, grid, layer, text_len=text_len, text_first=text_first,
                                        text_mask=text_mask)
            self._record(layer, stats)
            return out

        return adapter(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend)

    def attention(self, q, k, v, grid, layer, *, text_len, text_first, text_mask) -> tuple[torch.Tensor, AttentionStats]:
        """The one seam: the attention of a video self-attention layer, ``(B, S, H, D)`` in and out."""
        return vmoba_attention(q, k, v, grid, layer, self.config, text_len=text_len, text_first=text_first,
                               text_mask=text_mask, return_stats=True)

    # -- helpers ------------------------------------------------------------------------------------------

    def _layer_of(self, attn) -> int:
        key = id(attn)
        if key not in self.layer_index:
            self.layer_index[key] = len(self.layer_index)
        return self.layer_index[key]

    def _dense_reason(self, layer: int, n_video: int) -> str | None:
        cfg = self.config
        if layer in cfg.dense_layers:
            return f"layer {layer} is in dense_layers"
        if n_video < cfg.min_tokens:
            return f"{n_video} video tokens < min_tokens={cfg.min_tokens}"
        reason = self._dense_by_config()
        if reason is not None:
            return reason
        if cfg.dense_steps:
            step = None if self.context is None else self.context.step
            if step is None:
                raise RuntimeError(
                    "VMoBAConfig.dense_steps needs the denoising step, which only vmoba.enable(pipe) can observe: "
                    "use vmoba.enable(pipe, config) instead of set_attn_processor, or set dense_steps=0")
            if step < cfg.dense_steps:
                return f"step {step} < dense_steps={cfg.dense_steps}"
        return None

    def _dense_by_config(self) -> str | None:
        return "threshold=1.0 keeps every block" if self.config.is_dense() else None

    def _dense_stats(self, layer: int, reason: str) -> AttentionStats:
        scheme = self.config.scheme_for_layer(layer)
        grid = self.grid or (self.context.grid if self.context else None)
        blocks = get_partition(grid, scheme, self.config.chunk_for_scheme(scheme)).num_blocks if grid else 0
        return AttentionStats(scheme, blocks, self.config.granularity, "dense", 1.0, reason)

    def _default_for(self, adapter, attn, encoder_hidden_states, rotary):
        processor = adapter.default_processor(attn, encoder_hidden_states, rotary)
        key = (adapter.name, type(processor))
        processor = self._defaults.setdefault(key, processor)
        # the user's attention backend choice (model.set_attention_backend) reaches the dense paths
        processor._attention_backend = self._attention_backend
        processor._parallel_config = self._parallel_config
        return processor

    def _grid(self, adapter, attn, hidden_states, encoder_hidden_states, rotary) -> tuple[int, int, int]:
        n_video = adapter.video_tokens(hidden_states, encoder_hidden_states)
        source, grid = "VMoBAProcessor(grid=...)", self.grid
        if grid is None and self.context is not None and self.context.grid is not None:
            source, grid = "the transformer's latent input", self.context.grid
        if grid is None:
            source, grid = "the rotary embedding", grid_from_rotary(rotary, n_video) if rotary is not None else None
        if grid is None:
            raise RuntimeError(
                f"VMoBAProcessor cannot find the latent grid of this {adapter.name} attention layer ({n_video} video "
                f"tokens, no usable 3D rotary embedding): call vmoba.enable(pipe_or_transformer, config) so a hook "
                f"reads the grid from the latents, or pass VMoBAProcessor(config, grid=(T, H, W))")
        if math.prod(grid) != n_video:
            raise ValueError(f"latent grid {grid} from {source} holds {math.prod(grid)} tokens but the attention layer "
                             f"has {n_video} video tokens")
        return grid


class CrissCrossAttnProcessor(VMoBAProcessor):
    """Diffusers attention processor running token-level criss-cross attention (`criss_cross_attention`) for
    video self-attention: each query sees the tokens on its t-, h- and w-lines plus all text tokens.

    Same families, grid discovery, dense fallbacks (``config.dense_layers``, ``dense_steps``, ``min_tokens``)
    and statistics as `VMoBAProcessor`; the partition and selection fields of ``config`` are not used.
    ``vmoba.enable(pipe, config, processor=CrissCrossAttnProcessor)`` installs it in a whole pipeline."""

    def _dense_by_config(self) -> str | None:
        return None  # threshold and the other selection fields mean nothing for criss-cross attention

    def attention(self, q, k, v, grid, layer, *, text_len, text_first, text_mask):
        from ..crisscross import criss_cross_attention

        out = criss_cross_attention(q, k, v, grid, text_len=text_len, text_first=text_first, text_mask=text_mask)
        T, H, W = grid
        stats = AttentionStats("crisscross", 0, "token", "torch", (T + H + W - 2) / (T * H * W))
        return out, stats
