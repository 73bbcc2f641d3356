"""Text to video for the demo: one generation with dense, VMoBA or criss-cross attention, and a compare run.

Plain functions on a diffusers pipeline; the Gradio tab only converts their results for display. Per-step,
per-layer densities come from the processors' statistics, the key blocks each token selected from the
processors' selection capture (``proc.capture``, ``proc.captured``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import checks
from ..config import GRANULARITIES, SCHEMES, VMoBAConfig
from ..processors import CrissCrossAttnProcessor, VMoBAProcessor, disable, enable
from ..video import psnr
from .limits import Limits, whole

# what the page shows -> what the package calls it
ATTENTION = {"dense": "dense", "VMoBA": "vmoba", "criss-cross": "crisscross"}
LAYER_SCHEDULES = ("1d,2d,3d", "1d", "2d", "3d", "3d,2d,1d", "1d,3d")

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class VideoRequest:
    prompt: str
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int

    @classmethod
    def checked(cls, prompt: Any, frames: Any, height: Any, width: Any, steps: Any, guidance: Any, seed: Any,
                limits: Limits) -> "VideoRequest":
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be some words, e.g. 'a red circle moves right'")
        if len(prompt) > limits.max_prompt_chars:
            raise ValueError(f"prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
        frames = checks.integer("frames", whole(frames), min=1, max=limits.max_frames)
        if (frames - 1) % 4:
            raise ValueError(f"frames must be 4k+1 (1, 5, 9, 13, 17, ...) for Wan-family VAEs, got {frames}")
        height = checks.integer("height", whole(height), min=limits.min_side, max=limits.max_side)
        width = checks.integer("width", whole(width), min=limits.min_side, max=limits.max_side)
        if height % 16 or width % 16:
            raise ValueError(f"height and width must be multiples of 16, got {height}x{width}")
        steps = checks.integer("steps", whole(steps), min=1, max=limits.max_steps)
        guidance = checks.real("guidance", guidance, min=0.0, max=limits.max_guidance)
        seed = checks.integer("seed", whole(seed), min=0, max=2**31 - 1)
        return cls(prompt.strip(), frames, height, width, steps, guidance, seed)


def vmoba_config(base: VMoBAConfig, *, threshold: Any, select_mode: Any, threshold_type: Any, topk: Sequence[Any],
                 granularity: Any, layer_schedule: Any, temporal_chunk: Any, spatial_chunk: Sequence[Any],
                 st_chunk: Sequence[Any]) -> VMoBAConfig:
    """``base`` with the knobs of the page; every value is checked (ValueError naming the knob)."""
    if not isinstance(layer_schedule, str):
        raise ValueError(f"layer schedule must be text like '1d,2d,3d', got {layer_schedule!r}")
    schedule = tuple(s.strip() for s in layer_schedule.replace(" ", ",").split(",") if s.strip())
    if not schedule or any(s not in SCHEMES for s in schedule):
        raise ValueError(f"layer schedule must list schemes from {SCHEMES} like '1d,2d,3d', got {layer_schedule!r}")
    return base.replace(
        threshold=checks.real("threshold", threshold, min=0.0, max=1.0),
        select_mode=checks.choice("selection mode", select_mode, ("threshold", "topk")),
        threshold_type=checks.choice("selection group", threshold_type, ("query_head", "head_global", "block", "overall")),
        topk=checks.int_tuple("top-k", tuple(whole(k) for k in topk), 3, min=1),
        granularity=checks.choice("granularity", granularity, GRANULARITIES),
        layer_schedule=schedule,
        temporal_chunk=checks.integer("temporal chunk", whole(temporal_chunk), min=1),
        spatial_chunk=checks.int_tuple("spatial chunk", tuple(whole(k) for k in spatial_chunk), 2, min=1),
        st_chunk=checks.int_tuple("space-time chunk", tuple(whole(k) for k in st_chunk), 3, min=1),
    )


@dataclass
class Generation:
    """One generated clip and what the attention did while making it."""

    frames: np.ndarray  # (F, H, W, 3) float in [0, 1]
    seconds: float
    attention: str  # "dense", "vmoba" or "crisscross"
    request: VideoRequest
    densities: list[dict] = field(default_factory=list)  # rows {step, layer, scheme, density}
    records: list = field(default_factory=list)  # SelectionRecords of the conditional branch
    grid: tuple[int, int, int] | None = None

    @property
    def mean_density(self) -> float:
        """Attended fraction of video query-key pairs, over every step and layer (1 for dense attention)."""
        if not self.densities:
            return 1.0
        return float(np.mean([row["density"] for row in self.densities]))


def generate(pipe, request: VideoRequest, attention: str, config: VMoBAConfig, *,
             on_step: StepCallback | None = None, step_offset: int = 0, total_steps: int | None = None,
             capture: bool = True) -> Generation:
    """Run ``pipe`` once with the given attention; ``on_step(done, total)`` after every denoising step."""
    attention = checks.choice("attention", attention, tuple(ATTENTION.values()))
    processors: dict[str, VMoBAProcessor] = {}
    if attention == "vmoba":
        processors = enable(pipe, config)
    elif attention == "crisscross":
        processors = enable(pipe, config, processor=CrissCrossAttnProcessor)
    for proc in processors.values():
        proc.capture = capture
    per_step: list[dict] = []
    total = total_steps or request.steps

    def step_end(pipeline, step, timestep, callback_kwargs):
        # the last call of each layer in this step (the unconditional one under classifier-free guidance)
        for name, proc in processors.items():
            for layer, stats in sorted(proc.last_stats.items()):
                per_step.append(dict(step=step, layer=layer, scheme=stats.scheme, density=float(stats.density),
                                     dense_reason=stats.dense_reason, component=name))
        if on_step is not None:
            on_step(step_offset + step + 1, total)
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    try:
        start = time.perf_counter()
        with torch.inference_mode():
            frames = pipe(request.prompt, height=request.height, width=request.width, num_frames=request.frames,
                          num_inference_steps=request.steps, guidance_scale=request.guidance, generator=generator,
                          output_type="np", callback_on_step_end=step_end).frames[0]
        seconds = time.perf_counter() - start
        records = _conditional_records([r for proc in processors.values() for r in getattr(proc, "captured", [])])
    finally:
        if processors:
            disable(pipe)
    frames = np.asarray(frames, dtype=np.float32)
    grid = records[0].grid if records else None
    return Generation(frames, seconds, attention, request, per_step, records, grid)


def _conditional_records(records: list) -> list:
    """One record per (step, layer): the first call, which WanPipeline makes with the prompt (the second
    classifier-free-guidance call uses the negative prompt)."""
    seen, kept = set(), []
    for record in records:
        key = (record.step, record.layer)
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


@dataclass
class Comparison:
    dense: Generation
    sparse: Generation

    @property
    def time_ratio(self) -> float:
        """Dense seconds over sparse seconds: above 1 means the sparse run was faster."""
        return self.dense.seconds / self.sparse.seconds

    @property
    def psnr(self) -> float:
        return psnr(self.sparse.frames, self.dense.frames)


def compare(pipe, request: VideoRequest, attention: str, config: VMoBAConfig, *,
            on_step: StepCallback | None = None) -> Comparison:
    """Dense and ``attention`` (VMoBA when dense was asked for) at the same seed."""
    sparse = "vmoba" if attention == "dense" else attention
    total = 2 * request.steps
    dense = generate(pipe, request, "dense", config, on_step=on_step, total_steps=total)
    other = generate(pipe, request, sparse, config, on_step=on_step, step_offset=request.steps, total_steps=total)
    return Comparison(dense, other)
