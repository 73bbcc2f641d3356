"""`VMoBAConfig`: every knob of VMoBA attention, validated when the object is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

SCHEMES = ("1d", "2d", "3d")
SELECT_MODES = ("threshold", "topk")
THRESHOLD_TYPES = ("query_head", "head_global", "block", "overall")
GRANULARITIES = ("token", "tile")
BACKENDS = ("auto", "torch", "triton")


def _int_tuple(name: str, value: Any, length: int | None) -> tuple[int, ...]:
    if isinstance(value, bool):
        raise ValueError(f"VMoBAConfig.{name} must be integers, got {value!r}")
    if isinstance(value, int):
        value = (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"VMoBAConfig.{name} must be a tuple of integers, got {value!r}") from None
    if length is not None and len(items) != length:
        raise ValueError(f"VMoBAConfig.{name} must have {length} entries, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValueError(f"VMoBAConfig.{name} must contain integers, got {value!r}")
    return items


@dataclass(frozen=True)
class VMoBAConfig:
    """Configuration of VMoBA block-sparse attention.

    Block partition (layer ``i`` uses ``layer_schedule[i % len(layer_schedule)]``):
        temporal_chunk: latent frames per block of the ``"1d"`` scheme.
        spatial_chunk: ``(h, w)`` tile of the ``"2d"`` scheme; a block runs through all frames.
        st_chunk: ``(t, h, w)`` cube of the ``"3d"`` scheme.

    Block selection:
        select_mode: ``"threshold"`` (cumulative normalised gate mass) or ``"topk"``.
        threshold: mass to reach, in [0, 1]; 1.0 keeps every block.
        threshold_type: the group over which normalisation, sort and cut run: ``"query_head"`` (each query
            of each head), ``"head_global"`` (all queries of a head), ``"block"`` (all heads and queries that
            could pick one key block), ``"overall"`` (everything of one batch element).
        topk: ``(k_1d, k_2d, k_3d)`` blocks per query, own block included.
        granularity: ``"token"`` selects per query (the paper's rule); ``"tile"`` per tile of at most
            ``query_tile`` queries of one block, from the tile's mean query.
        query_tile: tile size for ``"tile"`` selection and for the work tiles of the attention itself.

    Dense fallbacks (attention is exact dense attention there):
        dense_layers: layer indices that always run dense.
        dense_steps: the first N denoising steps of every pipeline call (used by the processors).
        min_tokens: sequences with fewer video tokens run dense.

    Execution:
        backend: ``"auto"`` (Triton on CUDA, the PyTorch path elsewhere), ``"torch"`` or ``"triton"``.
        validate_inputs: check q, k, v for NaN/Inf (one host sync per call on GPU).
        memory_budget_mb: working memory the PyTorch path may use per chunk of work.
    """

    layer_schedule: tuple[str, ...] = ("1d", "2d", "3d")
    temporal_chunk: int = 2
    spatial_chunk: tuple[int, int] = (3, 4)
    st_chunk: tuple[int, int, int] = (4, 6, 4)
    select_mode: str = "threshold"
    threshold: float = 0.25
    threshold_type: str = "query_head"
    topk: tuple[int, int, int] = (3, 32, 80)
    granularity: str = "token"
    query_tile: int = 128
    dense_layers: tuple[int, ...] = ()
    dense_steps: int = 0
    min_tokens: int = 0
    backend: str = "auto"
    validate_inputs: bool = True
    memory_budget_mb: int = 256

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)

        schedule = self.layer_schedule
        if isinstance(schedule, str):
            schedule = (schedule,)
        schedule = tuple(schedule)
        if not schedule or any(s not in SCHEMES for s in schedule):
            raise ValueError(
                f"VMoBAConfig.layer_schedule must be a non-empty sequence of {SCHEMES}, got {self.layer_schedule!r}"
            )
        set_("layer_schedule", schedule)

        temporal = _int_tuple("temporal_chunk", self.temporal_chunk, 1)
        set_("temporal_chunk", temporal[0])
        set_("spatial_chunk", _int_tuple("spatial_chunk", self.spatial_chunk, 2))
        set_("st_chunk", _int_tuple("st_chunk", self.st_chunk, 3))
        for name in ("spatial_chunk", "st_chunk"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"VMoBAConfig.{name} entries must be >= 1, got {getattr(self, name)!r}")
        if self.temporal_chunk < 1:
            raise ValueError(f"VMoBAConfig.temporal_chunk must be >= 1, got {self.temporal_chunk!r}")

        if self.select_mode not in SELECT_MODES:
            raise ValueError(f"VMoBAConfig.select_mode must be one of {SELECT_MODES}, got {self.select_mode!r}")
        if self.threshold_type not in THRESHOLD_TYPES:
            raise ValueError(
                f"VMoBAConfig.threshold_type must be one of {THRESHOLD_TYPES}, got {self.threshold_type!r}"
            )
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise ValueError(f"VMoBAConfig.threshold must be a number in [0, 1], got {self.threshold!r}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"VMoBAConfig.threshold must be in [0, 1], got {self.threshold!r}")
        set_("threshold", float(self.threshold))

        topk = _int_tuple("topk", self.topk, 3)
        if min(topk) < 1:
            raise ValueError(f"VMoBAConfig.topk entries must be >= 1, got {self.topk!r}")
        set_("topk", topk)

        if self.granularity not in GRANULARITIES:
            raise ValueError(f"VMoBAConfig.granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if isinstance(self.query_tile, bool) or not isinstance(self.query_tile, int) or self.query_tile < 1:
            raise ValueError(f"VMoBAConfig.query_tile must be an integer >= 1, got {self.query_tile!r}")

        dense_layers = _int_tuple("dense_layers", self.dense_layers, None)
        if any(i < 0 for i in dense_layers):
            raise ValueError(f"VMoBAConfig.dense_layers must be non-negative layer indices, got {self.dense_layers!r}")
        set_("dense_layers", tuple(sorted(set(dense_layers))))
        for name in ("dense_steps", "min_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"VMoBAConfig.{name} must be an integer >= 0, got {value!r}")

        if self.backend not in BACKENDS:
            raise ValueError(f"VMoBAConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.validate_inputs, bool):
            raise ValueError(f"VMoBAConfig.validate_inputs must be a bool, got {self.validate_inputs!r}")
        if isinstance(self.memory_budget_mb, bool) or not isinstance(self.memory_budget_mb, int) or self.memory_budget_mb < 1:
            raise ValueError(f"VMoBAConfig.memory_budget_mb must be an integer >= 1, got {self.memory_budget_mb!r}")

    # -- helpers -----------------------------------------------------------------------------------------

    def scheme_for_layer(self, layer_idx: int) -> str:
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or layer_idx < 0:
            raise ValueError(f"layer_idx must be a non-negative integer, got {layer_idx!r}")
        return self.layer_schedule[layer_idx % len(self.layer_schedule)]

    def chunk_for_scheme(self, scheme: str) -> tuple[int, ...]:
        return {"1d": (self.temporal_chunk,), "2d": self.spatial_chunk, "3d": self.st_chunk}[scheme]

    def topk_for_scheme(self, scheme: str) -> int:
        return self.topk[SCHEMES.index(scheme)]

    def is_dense(self) -> bool:
        """True when every block is kept by definition (threshold mode with threshold 1.0)."""
        return self.select_mode == "threshold" and self.threshold >= 1.0

    def replace(self, **changes: Any) -> "VMoBAConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VMoBAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VMoBAConfig field(s): {', '.join(unknown)}")
        return cls(**dict(data))


def as_config(config: VMoBAConfig | Mapping[str, Any] | None) -> VMoBAConfig:
    if config is None:
        return VMoBAConfig()
    if isinstance(config, VMoBAConfig):
        return config
    if isinstance(config, Mapping):
        return VMoBAConfig.from_dict(config)
    raise TypeError(f"config must be a VMoBAConfig, a mapping or None, got {type(config).__name__}")

