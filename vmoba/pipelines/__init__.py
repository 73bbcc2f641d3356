"""Pipelines: the embedded default text-to-video pipeline and the event-to-video pipeline."""

from .default import DEFAULT_VMOBA_CONFIG, build_default_pipeline, load_default_pipeline
from .event_to_video import EventToVideoOutput, EventToVideoPipeline

__all__ = [
    "DEFAULT_VMOBA_CONFIG",
    "EventToVideoOutput",
    "EventToVideoPipeline",
    "build_default_pipeline",
    "load_default_pipeline",
]
