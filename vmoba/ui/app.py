"""The Gradio app: four tabs over one queue, one computation at a time."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .files import OutputFolder
from .limits import DEFAULT_LIMITS, Limits
from .models import ModelRegistry
from .tabs import events, motion, speed, text_to_video
from .tabs.common import RecentResults

TITLE = "vmoba: sparse attention for video diffusion"
HEADER = f"""
# {TITLE}
Block-sparse **VMoBA** and **criss-cross** attention inside a diffusers video pipeline, event-camera
reconstruction and motion-energy sensing, all running on this machine's CPU. One request runs at a time; others
wait in the queue (the position is shown). Every tab says what its model can and cannot do.
"""
CSS = "#view-picker img, #view-image img { image-rendering: pixelated; }"


def build_app(models_dir: str | Path | None = None, *, limits: Limits = DEFAULT_LIMITS) -> gr.Blocks:
    """The demo as a `gr.Blocks` (not launched). ``models_dir``: a folder whose diffusers pipeline folders
    (with a model_index.json, up to two levels down) are offered besides the embedded model."""
    registry = ModelRegistry(models_dir)
    outputs = OutputFolder()
    results = RecentResults()
    # delete_cache: Gradio's copies of uploads and outputs older than 30 minutes go, checked every 10 minutes
    with gr.Blocks(title=TITLE, delete_cache=(600, 1800)) as demo:
        gr.Markdown(HEADER)
        with gr.Tabs():
            with gr.Tab("Text to video", id="text-to-video"):
                text_to_video.build(registry, outputs, limits, results)
            with gr.Tab("Events to video", id="events"):
                events.build(outputs, limits)
            with gr.Tab("Motion energy", id="motion"):
                motion.build(outputs, limits, registry)
            with gr.Tab("Attention speed", id="speed"):
                speed.build(limits)
    demo.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    demo.vmoba_outputs = outputs  # the temporary folder, removed by `close_app` (and at exit)
    demo.vmoba_limits = limits
    return demo


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, **kwargs):
    """Start serving ``demo``; ``port=None`` takes GRADIO_SERVER_PORT, else Gradio's default (7860)."""
    limits: Limits = getattr(demo, "vmoba_limits", DEFAULT_LIMITS)
    return demo.launch(server_name=host, server_port=port, max_file_size=limits.max_upload_bytes, ssr_mode=False,
                       css=CSS, footer_links=["api"], **kwargs)


def close_app(demo: gr.Blocks) -> None:
    demo.close()
    outputs = getattr(demo, "vmoba_outputs", None)
    if outputs is not None:
        outputs.cleanup()
