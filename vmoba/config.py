"""`VMoBAConfig`: every knob of VMoBA attention, validated when the object is built."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import checks
from .layout import SCHEMES  # one home for the partition schemes: the layout types

LAYER_KINDS = SCHEMES + ("crisscross",)  # what a layer_schedule entry may name
SELECT_MODES = ("threshold", "topk")
THRESHOLD_TYPES = ("query_head", "head_global", "block", "overall")
GRANULARITIES = ("auto", "token", "tile")
BACKENDS = ("auto", "torch", "triton")


def _field(check: Callable[..., Any], name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``check`` on ``VMoBAConfig.<name>``; every bad value, of a wrong type too, is a ValueError naming the field
    (the config's contract)."""
    try:
        return check(f"VMoBAConfig.{name}", value, *args, **kwargs)
    except TypeError as error:
        raise ValueError(str(error)) from None


@dataclass(frozen=True)
class VMoBAConfig:
    """Configuration of VMoBA block-sparse attention.

    Block partition (layer ``i`` uses ``layer_schedule[i % len(layer_schedule)]``; an entry ``"crisscross"``
    runs criss-cross attention in that layer instead, in the processors):
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
            ``query_tile`` queries of one block, from the tile's mean query; ``"auto"`` (default): ``tile``
            where the Triton kernels run (GPUs), ``token`` on the PyTorch path (see `for_backend`).
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
    granularity: str = "auto"
    query_tile: int = 128
    dense_layers: tuple[int, ...] = ()
    dense_steps: int = 0
    min_tokens: int = 0
    backend: str = "auto"
    validate_inputs: bool = True
    memory_budget_mb: int = 256

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)

        schedule = (self.layer_schedule,) if isinstance(self.layer_schedule, str) else self.layer_schedule
        try:
            schedule = tuple(schedule)
        except TypeError:
            schedule = ()
        if not schedule or any(not isinstance(s, str) or s not in LAYER_KINDS for s in schedule):
            raise ValueError(
                f"VMoBAConfig.layer_schedule must be a non-empty sequence of {LAYER_KINDS}, got {self.layer_schedule!r}"
            )
        set_("layer_schedule", schedule)

        set_("temporal_chunk", _field(checks.int_tuple, "temporal_chunk", self.temporal_chunk, 1, min=1)[0])
        set_("spatial_chunk", _field(checks.int_tuple, "spatial_chunk", self.spatial_chunk, 2, min=1))
        set_("st_chunk", _field(checks.int_tuple, "st_chunk", self.st_chunk, 3, min=1))
        _field(checks.choice, "select_mode", self.select_mode, SELECT_MODES)
        set_("threshold", _field(checks.real, "threshold", self.threshold, min=0.0, max=1.0))
        _field(checks.choice, "threshold_type", self.threshold_type, THRESHOLD_TYPES)
        set_("topk", _field(checks.int_tuple, "topk", self.topk, 3, min=1))
        _field(checks.choice, "granularity", self.granularity, GRANULARITIES)
        set_("query_tile", _field(checks.integer, "query_tile", self.query_tile, min=1))
        dense_layers = _field(checks.int_tuple, "dense_layers", self.dense_layers, min=0)
        set_("dense_layers", tuple(sorted(set(dense_layers))))
        set_("dense_steps", _field(checks.integer, "dense_steps", self.dense_steps, min=0))
        set_("min_tokens", _field(checks.integer, "min_tokens", self.min_tokens, min=0))
        _field(checks.choice, "backend", self.backend, BACKENDS)
        set_("validate_inputs", _field(checks.boolean, "validate_inputs", self.validate_inputs))
        set_("memory_budget_mb", _field(checks.integer, "memory_budget_mb", self.memory_budget_mb, min=1))

    # -- helpers -----------------------------------------------------------------------------------------

    def scheme_for_layer(self, layer_idx: int) -> str:
        layer_idx = checks.integer("layer_idx", layer_idx, min=0)
        return self.layer_schedule[layer_idx % len(self.layer_schedule)]

    def chunk_for_scheme(self, scheme: str) -> tuple[int, ...]:
        if scheme not in SCHEMES:
            raise ValueError(f"{scheme!r} attention has no blocks; VMoBA schemes are {SCHEMES}")
        return {"1d": (self.temporal_chunk,), "2d": self.spatial_chunk, "3d": self.st_chunk}[scheme]

    def topk_for_scheme(self, scheme: str) -> int:
        return self.topk[SCHEMES.index(scheme)]

    def is_dense(self) -> bool:
        """True when every block is kept by definition (threshold mode with threshold 1.0)."""
        return self.select_mode == "threshold" and self.threshold >= 1.0

    def replace(self, **changes: Any) -> "VMoBAConfig":
        return dataclasses.replace(self, **changes)

    def for_backend(self, backend: str) -> "VMoBAConfig":
        """This config with ``granularity="auto"`` made concrete for the backend that runs it.

        ``"triton"`` -> ``"tile"``: on GPUs token granularity's per-pair work is slower than dense attention for
        the 2D/3D schemes (0.38x-0.73x of SDPA at 32K tokens on an H200), tile runs 2.3x-3.4x faster than it.
        ``"torch"`` -> ``"token"``: the paper's rule, with about half the output error of tile on 2D/3D layers
        at the same density, and already 2x-3.3x faster than SDPA at 16K tokens on a 2-core CPU.
        Numbers: docs/benchmarks.md, "Granularity"."""
        if self.granularity != "auto":
            return self
        return _with_granularity(self, "tile" if backend == "triton" else "token")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VMoBAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VMoBAConfig field(s): {', '.join(unknown)}")
        return cls(**dict(data))


@functools.lru_cache(maxsize=64)
def _with_granularity(config: VMoBAConfig, granularity: str) -> VMoBAConfig:
    return config.replace(granularity=granularity)  # cached: validation on every attention call would add up


def as_config(config: VMoBAConfig | Mapping[str, Any] | None) -> VMoBAConfig:
    if config is None:
        return VMoBAConfig()
    if isinstance(config, VMoBAConfig):
        return config
    if isinstance(config, Mapping):
        return VMoBAConfig.from_dict(config)
    raise TypeError(f"config must be a VMoBAConfig, a mapping or None, got {type(config).__name__}")

