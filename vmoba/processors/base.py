"""`AttentionProcessor`: what every vmoba attention processor shares (the diffusers interface, the model
family, layer indices, grid discovery, dense fallbacks, statistics and selection capture, diffusers' context
parallelism). The subclasses only say which kind of attention each layer runs (`scheme_for_layer`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from .. import checks
from ..attention import AttentionStats, attention_with_selection, dense_reason
from ..config import VMoBAConfig, as_config
from ..crisscross import criss_cross_attention, criss_cross_backend
from ..parallel import VMoBARing, context_parallel_attention, gather_sequence, world_size
from ..parallel.engine import check_head_order
from ..partition import get_partition, validate_grid
from ..selection import BlockSelection
from .families import FAMILY_NAMES, Family, family_named, family_of_attention
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


@dataclass(frozen=True, eq=False)
class SelectionRecord:
    """What one video self-attention call attended, recorded by a processor with ``capture=True``.

    ``mask[b, h, i, j]`` (on CPU, original token order) says whether video query ``i`` attended key block
    ``j`` of ``block_ids`` (the block of each video token, frame-major order); both are None for
    criss-cross and dense calls, and under context parallelism (each rank then holds only part of the
    selection: its heads under Ulysses, its queries under ring). ``step`` is None when the denoising step is
    unknown (without `vmoba.enable`). Classifier-free guidance may give two records per (step, layer).
    """

    step: int | None
    layer: int
    grid: tuple[int, int, int] | None
    scheme: str  # "1d" | "2d" | "3d" | "crisscross" | "dense"
    block_ids: torch.Tensor | None
    mask: torch.Tensor | None
    text_len: int
    density: float
    dense_reason: str | None = None


class AttentionProcessor:
    """Base of `VMoBAProcessor` and `CrissCrossAttnProcessor` (see there for the user-facing story).

    Joins diffusers' context parallelism (``transformer.enable_parallelism``, which sets ``_parallel_config``):
    grids and dense decisions are those of the whole sequence, and the attention runs through
    `vmoba.parallel.context_parallel_attention` (Ulysses, ring for the VMoBA schemes, both). ``head_order``
    deals the heads to the Ulysses ranks in that order (`vmoba.parallel.balance_heads`); None keeps
    diffusers' order. Under context parallelism ``last_stats``, ``densities`` and captures describe the part
    of each call this rank computed.
    """

    _attention_backend = None
    _parallel_config = None  # set by diffusers' enable_parallelism
    _head_order: tuple[int, ...] | None = None

    @property
    def head_order(self) -> tuple[int, ...] | None:
        """The heads' order under Ulysses: set a permutation (list, tuple or CPU tensor), checked once here
        rather than on every call; None keeps diffusers' order."""
        return self._head_order

    @head_order.setter
    def head_order(self, order) -> None:
        self._head_order = None if order is None else check_head_order(order)

    def __init__(self, config: VMoBAConfig | Mapping[str, Any] | None = None, *,
                 grid: Sequence[int] | None = None, family: str | None = None, capture: bool = False,
                 recurrence: int = 1):
        self.config = as_config(config)
        self.grid = validate_grid(grid) if grid is not None else None
        self.family = family
        self._family = None if family is None else family_named(family)
        self.capture = capture
        self.recurrence = checks.integer("recurrence", recurrence, min=1)  # loops of every criss-cross layer
        self.captured: list[SelectionRecord] = []
        self.context: CallContext | None = None
        self.layer_index: dict[int, int] = {}
        self.last_stats: dict[int, AttentionStats] = {}
        self.densities: list[float] = []  # every call's density since the last reset_stats()
        self._defaults: dict[tuple, Any] = {}

    def scheme_for_layer(self, layer: int) -> str:
        """``"1d"``, ``"2d"``, ``"3d"`` or ``"crisscross"``: the attention that video self-attention layer runs."""
        raise NotImplementedError

    def reset_stats(self) -> None:
        """Forget the statistics and captured selections of earlier calls."""
        self.last_stats.clear()
        self.densities.clear()
        self.captured.clear()

    def mean_density(self) -> float | None:
        """Mean attended density over the video self-attention calls since the last `reset_stats`."""
        return sum(self.densities) / len(self.densities) if self.densities else None

    def clone(self) -> "AttentionProcessor":
        """A fresh processor with the same settings (its own layer indices, statistics and captures)."""
        return type(self)(self.config, grid=self.grid, family=self.family, capture=self.capture,
                          recurrence=self.recurrence)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config!r}, family={self.family!r})"

    # -- the diffusers processor interface ----------------------------------------------------------

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 image_rotary_emb=None, **kwargs):
        # named, not left to **kwargs: diffusers' Attention drops keyword arguments a processor does not name
        rotary = rotary_emb if rotary_emb is not None else image_rotary_emb
        adapter = self._family_of(attn, encoder_hidden_states, rotary)
        if adapter.sparse_capable(attn, hidden_states, encoder_hidden_states, attention_mask, rotary) is not None:
            return self._call_default(adapter, attn, hidden_states, encoder_hidden_states, attention_mask, rotary,
                                      kwargs)
        layer = self._layer_of(attn)
        scheme = self.scheme_for_layer(layer)
        step = self._step()
        # under context parallelism the layer holds one shard of the sequence; decisions are the whole's
        ranks = world_size(self._parallel_config)
        n_video = adapter.video_tokens(hidden_states, encoder_hidden_states) * ranks
        reason = dense_reason(self.config, layer, n_video, scheme=scheme, step=step)
        if reason is not None:
            grid = self._known_grid(adapter, hidden_states, encoder_hidden_states, rotary)
            blocks = 0
            if grid is not None and scheme != "crisscross":
                blocks = get_partition(grid, scheme, self.config.chunk_for_scheme(scheme)).num_blocks
            stats = AttentionStats(scheme, blocks, self.config.granularity, "dense", 1.0, reason)
            self._record(layer, step, grid, stats, None, adapter.text_tokens(encoder_hidden_states))
            return self._call_default(adapter, attn, hidden_states, encoder_hidden_states, attention_mask, rotary,
                                      kwargs)
        grid = self._grid(adapter, hidden_states, encoder_hidden_states, rotary)

        def attend(q, k, v, *, text_len=0, text_first=True, text_mask=None):
            def whole(q, k, v):  # each rank holds part of the selection: it is not recorded
                out, stats, _ = self.attention(q, k, v, grid, layer, scheme, text_len=text_len,
                                               text_first=text_first, text_mask=text_mask)
                return out, stats

            if ranks == 1:
                out, stats, selection = self.attention(q, k, v, grid, layer, scheme, text_len=text_len,
                                                       text_first=text_first, text_mask=text_mask)
            else:
                ring = None if scheme == "crisscross" else VMoBARing(grid, layer, self.config, text_len=text_len)
                out, stats = context_parallel_attention(whole, q, k, v, parallel_config=self._parallel_config,
                                                        ring=ring, what=type(self).__name__,
                                                        head_order=self.head_order)
                selection = None
            self._record(layer, step, grid, stats, selection, text_len)
            return out

        return adapter(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend)

    def attention(self, q, k, v, grid, layer, scheme, *, text_len, text_first, text_mask
                  ) -> tuple[torch.Tensor, AttentionStats, BlockSelection | None]:
        """The one seam: the attention of a video self-attention layer that runs sparse over the whole sequence,
        ``(B, S, H, D)`` in and out (under Ulysses context parallelism, this rank's heads), with its statistics
        and (VMoBA schemes) the block selection it used."""
        if scheme == "crisscross":
            out = criss_cross_attention(q, k, v, grid, text_len=text_len, text_first=text_first, text_mask=text_mask,
                                        recurrence=self.recurrence, backend=self.config.backend,
                                        memory_budget_mb=self.config.memory_budget_mb)
            T, H, W = grid
            backend = criss_cross_backend(self.config.backend, q)
            return out, AttentionStats("crisscross", 0, "token", backend, (T + H + W - 2) / (T * H * W)), None
        return attention_with_selection(q, k, v, grid, layer, self.config, text_len=text_len, text_first=text_first,
                                        text_mask=text_mask, fallback=False)

    # -- helpers ------------------------------------------------------------------------------------------

    def _record(self, layer: int, step: int | None, grid, stats: AttentionStats, selection: BlockSelection | None,
                text_len: int) -> None:
        self.last_stats[layer] = stats
        self.densities.append(stats.density)
        if not self.capture:
            return
        mask = block_ids = None
        if selection is not None:
            mask = selection.token_mask().cpu()
            block_ids = selection.partition.block_ids.cpu()
        scheme = "dense" if stats.dense_reason is not None else stats.scheme
        self.captured.append(SelectionRecord(step, layer, grid, scheme, block_ids, mask, text_len, stats.density,
                                             stats.dense_reason))

    def _family_of(self, attn, encoder_hidden_states, rotary) -> Family:
        family = self._family or family_of_attention(attn, encoder_hidden_states, rotary)
        if family is None:
            raise TypeError(
                f"{type(self).__name__} cannot tell which video model this {type(attn).__name__} module belongs to "
                f"(supported families: {', '.join(FAMILY_NAMES)}): install it with vmoba.enable(transformer, config), "
                f"which knows the family from the transformer, or pass {type(self).__name__}(config, family=...)")
        return family

    def _layer_of(self, attn) -> int:
        key = id(attn)
        if key not in self.layer_index:
            self.layer_index[key] = len(self.layer_index)
        return self.layer_index[key]

    def _step(self) -> int | None:
        step = None if self.context is None else self.context.step
        if step is None and self.config.dense_steps:
            raise RuntimeError(
                "VMoBAConfig.dense_steps needs the denoising step, which only vmoba.enable(pipe) can observe: "
                "use vmoba.enable(pipe, config) instead of set_attn_processor, or set dense_steps=0")
        return step

    def _call_default(self, adapter, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        processor = adapter.default_processor(attn, encoder_hidden_states, rotary)
        processor = self._defaults.setdefault((adapter.name, type(processor)), processor)
        # the user's attention backend choice (model.set_attention_backend) reaches the dense paths
        processor._attention_backend = self._attention_backend
        processor._parallel_config = self._parallel_config
        return adapter.call_default(processor, attn, hidden_states, encoder_hidden_states, attention_mask, rotary,
                                    kwargs)

    def _known_grid(self, adapter, hidden_states, encoder_hidden_states, rotary):
        """The grid when some source gives it, else None (dense calls only record it)."""
        try:
            return self._grid(adapter, hidden_states, encoder_hidden_states, rotary)
        except (RuntimeError, ValueError):
            return None

    def _grid(self, adapter, hidden_states, encoder_hidden_states, rotary) -> tuple[int, int, int]:
        ranks = world_size(self._parallel_config)  # the sequence and its rotary table are split across them
        n_video = adapter.video_tokens(hidden_states, encoder_hidden_states) * ranks
        source, grid = f"{type(self).__name__}(grid=...)", self.grid
        if grid is None and self.context is not None and self.context.grid is not None:
            source, grid = "the transformer's latent input", self.context.grid
        if grid is None and rotary is not None:
            if ranks > 1:
                rotary = gather_sequence(rotary, self._parallel_config)
            source, grid = "the rotary embedding", grid_from_rotary(rotary, n_video, adapter.rotary_axes)
        if grid is None:
            raise RuntimeError(
                f"{type(self).__name__} cannot find the latent grid of this {adapter.name} attention layer "
                f"({n_video} video tokens, no usable 3D rotary embedding): call vmoba.enable(pipe_or_transformer, "
                f"config) so a hook reads the grid from the latents, or pass {type(self).__name__}(config, "
                f"grid=(T, H, W))")
        if math.prod(grid) != n_video:
            raise ValueError(f"latent grid {grid} from {source} holds {math.prod(grid)} tokens but the attention layer "
                             f"has {n_video} video tokens" + (f" across {ranks} ranks" if ranks > 1 else ""))
        return grid
