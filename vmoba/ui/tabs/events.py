"""Events-to-video tab: events from a clip (simulated) or an event file, the residual diffusion reconstruction
beside the regression baseline and, for clips, the ground truth with SSIM."""

from __future__ import annotations

import functools

import gradio as gr
import numpy as np

from ...events import write_events
from ...events.data import HELD_OUT_IMAGES, SequenceConfig, make_sequence
from ...pipelines import EventToVideoPipeline
from ...checks import atomic_output
from ..events_demo import EVENT_SUFFIXES, event_images, events_from_clip, events_from_file, reconstruct
from ..files import OutputFolder
from ..limits import Limits, whole
from ..media import save_video, side_by_side, under_label, upscale
from .common import COMPUTE, progress_callback, user_errors

NOTE = """
**What to expect.** The shipped event-to-video model is small (4 MB), trained for 27 minutes on a CPU with
simulated events from photographs at 64 x 64. On held-out sequences it beats its own regression baseline (SSIM
0.873 against 0.847, `docs/events.md`), but both drift from the truth over a sequence, and neither has seen real
sensor noise: expect blurred, drifting reconstructions, not a camera image. An uploaded clip is converted to grey,
resized, and its events are simulated (ideal sensor); the first true frame starts the reconstruction. An event
file has no first frame: the reconstruction starts from mid-grey and shows changes only.
"""

SOURCES = ("video clip (events simulated)", "event file")


@functools.lru_cache(maxsize=1)
def _pipeline() -> EventToVideoPipeline:
    return EventToVideoPipeline.from_default_weights()


def write_examples(outputs: OutputFolder) -> tuple[str, str]:
    """An example clip (a held-out photograph under a moving camera) and the events of it as a file."""
    frames, _ = make_sequence(900_000_000, SequenceConfig(num_frames=8), HELD_OUT_IMAGES)
    clip = np.repeat(frames.numpy()[..., None], 3, axis=-1)
    video = save_video(outputs, clip, fps=8)
    events = events_from_clip(video, Limits(), frames=8, side=64, contrast_threshold=0.2).events
    path = outputs.path / "example_events.npz"
    with atomic_output(path) as tmp:
        write_events(tmp, events, overwrite=True)
    return video, str(path)


def build(outputs: OutputFolder, limits: Limits) -> None:
    gr.Markdown(NOTE)
    example_video, example_events = write_examples(outputs)
    with gr.Row():
        with gr.Column(scale=2):
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="input")
            video = gr.Video(label=f"video clip (at most {limits.max_video_seconds:g} s, {limits.max_upload_mb:g} MB)",
                             sources=["upload"], elem_id="ev-video-in")
            events_file = gr.File(label="event file (" + ", ".join(EVENT_SUFFIXES) + ")", file_types=list(EVENT_SUFFIXES),
                                  elem_id="ev-file-in")
            with gr.Row():
                frames = gr.Slider(2, limits.event_max_frames, value=8, step=1, label="frames to reconstruct",
                                   elem_id="ev-frames")
                size = gr.Slider(32, limits.event_max_side, value=64, step=16, label="size (clips)")
            with gr.Row():
                threshold = gr.Slider(0.05, 1.0, value=0.2, step=0.05, label="contrast threshold (clips)")
                steps = gr.Slider(1, limits.event_max_steps, value=25, step=1, label="DDIM steps", elem_id="ev-steps")
                seed = gr.Number(value=0, precision=0, label="seed")
            run = gr.Button("Reconstruct", variant="primary", elem_id="ev-run")
            examples = gr.Examples([[SOURCES[0], example_video, None], [SOURCES[1], None, example_events]],
                        inputs=[source, video, events_file], label="examples (click one to run it)",
                        example_labels=["held-out photograph, moving camera (clip)", "the same scene as an event file"])
        with gr.Column(scale=3):
            strip = gr.Image(label="events per frame interval (red ON, blue OFF)", interactive=False,
                             elem_id="ev-events", format="png", height=200)
            result = gr.Video(label="events | diffusion | regression baseline | ground truth", autoplay=True,
                              loop=True, interactive=False, elem_id="ev-video")
            summary = gr.Markdown(elem_id="ev-summary")

    @user_errors
    def on_run(source_, video_, file_, frames_, size_, threshold_, steps_, seed_, progress=gr.Progress()):
        frames_, size_, steps_, seed_ = (whole(v) for v in (frames_, size_, steps_, seed_))
        if source_ == SOURCES[0]:
            data = events_from_clip(video_, limits, frames=frames_, side=size_, contrast_threshold=threshold_)
        elif source_ == SOURCES[1]:
            data = events_from_file(file_, limits, frames=frames_)
        else:
            raise ValueError(f"input must be one of {list(SOURCES)}, got {source_!r}")
        out = reconstruct(_pipeline(), data, steps=steps_, seed=seed_, limits=limits,
                          on_frame=progress_callback(progress, "reconstructed frame"))
        shown = event_images(data)
        columns = [shown, out.frames, out.baseline] + ([data.truth[1:]] if data.truth is not None else [])
        scale = max(1, 192 // max(out.frames.shape[1:]))
        clip = save_video(outputs, side_by_side(*(upscale(_rgb(c), scale) for c in columns)), fps=4)
        strip_image = upscale(side_by_side(*(image[None] for image in shown[:8]))[0], scale)
        text = (f"{len(data.events):,} events ({data.source}), {len(out.frames)} frames of "
                f"{out.frames.shape[2]}x{out.frames.shape[1]}, {steps_} DDIM steps.")
        if out.ssim:
            text += (f"\n\nSSIM against the ground truth: diffusion **{out.ssim['diffusion']:.3f}**, regression "
                     f"baseline **{out.ssim['baseline']:.3f}** (mean over the reconstructed frames).")
        elif data.truth is None:
            text += " No ground truth for an event file: compare the two reconstructions by eye."
        return under_label(strip_image), clip, text

    inputs, outputs_ = [source, video, events_file, frames, size, threshold, steps, seed], [strip, result, summary]
    run.click(on_run, inputs, outputs_, api_name="events_to_video", **COMPUTE)
    examples.load_input_event.then(on_run, inputs, outputs_, api_visibility="undocumented", **COMPUTE)


def _rgb(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    return np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames
