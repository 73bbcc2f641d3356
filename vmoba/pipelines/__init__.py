"""Pipelines: the embedded default text-to-video pipeline, the event-to-video pipeline, and `load_pipeline` for
any pipeline folder. diffusers is imported only when one of them is first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "DEFAULT_SIZE": "default",
    "DEFAULT_VMOBA_CONFIG": "default",
    "VMoBAWanPipeline": "default",
    "build_default_pipeline": "default",
    "load_default_pipeline": "default",
    "EventToVideoOutput": "event_to_video",
    "EventToVideoPipeline": "event_to_video",
    "PipelineDefaults": "loading",
    "VideoSizeRule": "loading",
    "load_motion_adapter": "loading",
    "load_pipeline": "loading",
    "video_size_rule": "loading",
}
_SUBMODULES = ("default", "event_to_video", "event_training", "loading")

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _SUBMODULES, _EXPORTS)

if TYPE_CHECKING:
    from .default import (DEFAULT_SIZE, DEFAULT_VMOBA_CONFIG, VMoBAWanPipeline, build_default_pipeline,
                          load_default_pipeline)
    from .event_to_video import EventToVideoOutput, EventToVideoPipeline
    from .loading import PipelineDefaults, VideoSizeRule, load_motion_adapter, load_pipeline, video_size_rule
