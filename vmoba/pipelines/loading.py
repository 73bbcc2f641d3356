"""`load_pipeline`: one function for every pipeline folder vmoba meets, with the facts needed to sample from it.

A folder is the embedded default model (``None``), a ``vmoba train`` export (``RUN/final``, which carries the
run's ``training.json``), an event-to-video pipeline, or any diffusers pipeline folder. The loaded pipeline
carries ``pipe.vmoba_defaults`` (`PipelineDefaults`): the attention and `VMoBAConfig` it was trained with, its
thread setting and its own video size; `video_size_rule` gives the sizes its VAE and transformer accept.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from ..config import VMoBAConfig
from ..motion.adapter import MotionEnergyAdapter
from ..training.config import TrainConfig, config_from_dict, vmoba_config
from .default import DEFAULT_VMOBA_CONFIG, MOTION_ADAPTER_FILE, WEIGHTS_DIR, VMoBAWanPipeline, load_default_pipeline
from .event_to_video import EventToVideoPipeline


@dataclass(frozen=True)
class PipelineDefaults:
    """How to sample from a loaded pipeline when the caller does not say otherwise."""

    attention: str = "vmoba"  # what the transformer was trained with: "vmoba" or "dense"
    vmoba_config: VMoBAConfig = VMoBAConfig()
    threads: int | None = None  # PyTorch threads (None: the caller's or PyTorch's choice)
    height: int | None = None  # the model's own video size (None: the pipeline decides)
    width: int | None = None
    num_frames: int | None = None
    guidance_scale: float | None = None  # the model's own classifier-free guidance (None: the pipeline decides)
    source: str = "VMoBAConfig() defaults"  # where these came from, for messages


@dataclass(frozen=True)
class VideoSizeRule:
    """Sizes a video pipeline accepts: height and width multiples of ``spatial_multiple`` (VAE compression times
    the transformer's patch), ``num_frames = k * temporal_factor + 1`` (the VAE's causal time compression)."""

    spatial_multiple: int
    temporal_factor: int
    family: str = "video"

    def check(self, height: int | None = None, width: int | None = None, num_frames: int | None = None,
              *, extra_spatial_multiple: int = 1) -> None:
        """Raise ValueError naming the first size this model cannot make (``None`` sizes are not checked).
        ``extra_spatial_multiple``: a further constraint of the caller (H.264 wants multiples of 16)."""
        multiple = math.lcm(self.spatial_multiple, extra_spatial_multiple)
        for name, value in (("height", height), ("width", width)):
            if value is not None and value % multiple:
                raise ValueError(f"{name} must be a multiple of {multiple} for this {self.family} model "
                                 f"(VAE and patch size; H.264 needs 16), got {value}")
        if num_frames is not None and (num_frames - 1) % self.temporal_factor:
            t = self.temporal_factor
            raise ValueError(f"num_frames must be {t}k+1 (1, {t + 1}, {2 * t + 1}, ...) for this {self.family} "
                             f"model's VAE, got {num_frames}")


def _first_attribute(obj: Any, names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = getattr(obj, name, None)
        if value:
            return int(value)
    return default


def video_size_rule(pipe) -> VideoSizeRule:
    """The sizes ``pipe`` accepts, read from the pipeline itself (its VAE compression and its transformer's
    patch), so every family gets its own rule: Wan 16 px and 4k+1 frames, LTX-Video 32 px and 8k+1."""
    spatial = _first_attribute(pipe, ("vae_spatial_compression_ratio", "vae_scale_factor_spatial"), 8)
    temporal = _first_attribute(pipe, ("vae_temporal_compression_ratio", "vae_scale_factor_temporal"), 4)
    transformer = getattr(pipe, "transformer", None)
    patch = getattr(getattr(transformer, "config", None), "patch_size", 1) or 1
    patch = max(patch[-2:]) if isinstance(patch, (tuple, list)) else int(patch)
    family = type(pipe).__name__.removesuffix("Pipeline") or "video"
    return VideoSizeRule(spatial_multiple=spatial * patch, temporal_factor=temporal, family=family)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the {what} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def _call_defaults(pipe) -> dict[str, int | float | None]:
    """The video size and guidance a pipeline samples with when given none."""
    names = ("height", "width", "num_frames", "guidance_scale")
    if isinstance(pipe, VMoBAWanPipeline):
        return {name: pipe.config[f"default_{name}"] for name in names}
    parameters = inspect.signature(type(pipe).__call__).parameters
    return {name: parameters[name].default if name in parameters else None for name in names}


def trained_defaults(folder: Path, pipe) -> PipelineDefaults:
    """What a ``vmoba train`` export was trained with (its ``training.json``): attention mode and `VMoBAConfig`
    resolved as the trainer resolved them, thread setting and video size."""
    path = folder / "training.json"
    record = _read_json(path, "training record")
    settings = record.get("config")
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: no 'config' object; it was not written by vmoba train")
    known = {name for name in TrainConfig.__dataclass_fields__ if name != "source"}
    try:
        config = config_from_dict({k: v for k, v in settings.items() if k in known}, source=str(path))
    except ValueError as exc:
        raise ValueError(f"{path}: the recorded training settings are not valid: {exc}") from None
    resolved = record.get("vmoba_config")  # the config the trainer used, where it recorded it
    attention_config = VMoBAConfig.from_dict(resolved) if isinstance(resolved, dict) else vmoba_config(config)
    size = _call_defaults(pipe)
    if config.task == "text_to_video":
        size = {**size, "height": config.data.height, "width": config.data.width, "num_frames": config.data.num_frames}
    return PipelineDefaults(attention=config.attention.mode, vmoba_config=attention_config,
                            threads=config.training.threads, source=str(path), **size)


def _embedded_defaults(pipe) -> PipelineDefaults:
    # the tiny model: a second intra-op thread only adds synchronisation, and on a busy 2-core machine it made
    # sampling several times slower; its accuracy was measured with DEFAULT_VMOBA_CONFIG
    return PipelineDefaults(vmoba_config=DEFAULT_VMOBA_CONFIG, threads=1, source="the embedded default model",
                            **_call_defaults(pipe))


def load_pipeline(path: str | Path | None = None):
    """Load a pipeline folder for sampling; ``None`` is the embedded default model.

    Returns the pipeline with ``pipe.vmoba_defaults`` (`PipelineDefaults`) set. Raises FileNotFoundError when
    ``path`` is not a pipeline folder and ValueError when its files are malformed or do not load (both name the
    file); never falls back to random weights.
    """
    if path is None:
        pipe = load_default_pipeline(quiet=True)
        pipe.vmoba_defaults = _embedded_defaults(pipe)
        return pipe
    folder = Path(path)
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not index.is_file():
        raise FileNotFoundError(f"{folder}: not a pipeline folder (no model_index.json there)")
    class_name = _read_json(index, "pipeline index").get("_class_name")
    if not isinstance(class_name, str):
        raise ValueError(f"{index}: no '_class_name' naming the pipeline class")
    try:
        if class_name == VMoBAWanPipeline.__name__:
            pipe = load_default_pipeline(folder)
        elif class_name == EventToVideoPipeline.__name__:
            pipe = EventToVideoPipeline.from_pretrained(str(folder))
        else:
            pipe = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ValueError(f"{folder}: could not load the {class_name}: {type(exc).__name__}: {exc}") from exc
    if folder.resolve() == WEIGHTS_DIR.resolve():
        pipe.vmoba_defaults = _embedded_defaults(pipe)
    elif (folder / "training.json").is_file():
        pipe.vmoba_defaults = trained_defaults(folder, pipe)
        if isinstance(pipe, VMoBAWanPipeline):  # a call without sizes samples at the training size too
            d = pipe.vmoba_defaults
            pipe.register_to_config(default_height=d.height, default_width=d.width, default_num_frames=d.num_frames)
    else:
        pipe.vmoba_defaults = PipelineDefaults(**_call_defaults(pipe))
    return pipe


def motion_adapter_file(path: str | Path | None = None) -> Path:
    """Where a pipeline folder keeps its motion adapter (``None``: the embedded default model's folder), whether
    or not it has one."""
    return (WEIGHTS_DIR if path is None else Path(path)) / MOTION_ADAPTER_FILE


def load_motion_adapter(path: str | Path | None = None) -> MotionEnergyAdapter:
    """The motion adapter trained for a pipeline folder (its ``motion_adapter.safetensors``; ``None``: the
    embedded default model's), for ``adapter.conditioning(pipe, reference)`` on that pipeline.
    FileNotFoundError names the folder when it has none."""
    file = motion_adapter_file(path)
    if not file.is_file():
        what = "the embedded default model" if path is None else str(file.parent)
        raise FileNotFoundError(f"{what} has no motion adapter ({MOTION_ADAPTER_FILE}); train one with "
                                f"model.train: [motion_adapter] (docs/training.md)")
    return MotionEnergyAdapter.from_pretrained(file)


__all__ = ["PipelineDefaults", "VideoSizeRule", "load_motion_adapter", "load_pipeline", "trained_defaults",
           "video_size_rule"]
