"""Pipelines: the embedded default text-to-video pipeline."""

from .default import DEFAULT_VMOBA_CONFIG, build_default_pipeline, load_default_pipeline

__all__ = ["DEFAULT_VMOBA_CONFIG", "build_default_pipeline", "load_default_pipeline"]
