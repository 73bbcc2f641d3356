"""Text-to-video tab: generate with dense, VMoBA or criss-cross attention, compare with dense, and look at the
key blocks a clicked token selected."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from ...pipelines.default import DEFAULT_GUIDANCE_SCALE
from .. import attention_view
from ..files import OutputFolder
from ..generation import ATTENTION, VideoRequest, compare, generate
from ..limits import Limits
from ..media import save_video, under_label, upscale
from ..models import DEFAULT_MODEL, ModelRegistry
from .common import COMPUTE, VIEW, RecentResults, VMoBAKnobs, progress_callback, user_errors

PICKER_SCALE = 4  # the frame to click on is shown this many times larger than generated
HEADS_ALL = "all heads"

NOTE = """
**What to expect.** The embedded default is a tiny Wan-architecture model trained here on clips of coloured
shapes ("a red circle moves right"): it knows colours and four directions and draws both right in all 96
clips of its check, keeping the colour in every frame and the size in 95% of them at its guidance of 2 (at 5
its shapes are squashed along their motion); the shape is right in 92% (squares most often).
Its transformer sees only
5 x 8 x 8 = 320 tokens, so **sparse attention cannot be faster than dense on it**: choosing blocks costs more
than the attention it saves, and the time ratio of a compare run says so. VMoBA pays off at tens of thousands of
tokens (see the *Attention speed* tab and the benchmarks). Criss-cross attention replaces the model's full
attention with lines it was not trained on, so its clips degrade more.
"""

EXAMPLES = [
    ["a red circle moves right", "VMoBA", 17, 20, 0],
    ["a blue square moves up", "criss-cross", 17, 20, 1],
    ["a yellow triangle moves left on a dark background", "dense", 17, 20, 2],
]


def build(registry: ModelRegistry, outputs: OutputFolder, limits: Limits, results: RecentResults) -> None:
    base = registry.base_config(DEFAULT_MODEL)
    gr.Markdown(NOTE)
    with gr.Row():
        with gr.Column(scale=5):
            prompt = gr.Textbox(value="a red circle moves right", label="prompt", max_lines=2, elem_id="t2v-prompt",
                                max_length=limits.max_prompt_chars)
            with gr.Row():
                model = gr.Dropdown(registry.names(), value=DEFAULT_MODEL, label="model",
                                    info="pipeline folders under --models-dir appear here")
                attention = gr.Radio(list(ATTENTION), value="VMoBA", label="attention")
            with gr.Accordion("VMoBA settings", open=False):
                knobs = VMoBAKnobs(base)
            with gr.Row():
                frames = gr.Slider(1, limits.max_frames, value=17, step=4, label="frames (4k+1)")
                steps = gr.Slider(1, limits.max_steps, value=20, step=1, label="denoising steps", elem_id="t2v-steps")
            with gr.Row():
                height = gr.Slider(limits.min_side, limits.max_side, value=64, step=16, label="height")
                width = gr.Slider(limits.min_side, limits.max_side, value=64, step=16, label="width")
            with gr.Row():
                guidance = gr.Slider(0, limits.max_guidance, value=DEFAULT_GUIDANCE_SCALE, step=0.5,
                                     label="guidance scale")
                seed = gr.Number(value=0, precision=0, label="seed")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="t2v-generate")
                run_compare = gr.Button("Compare with dense", elem_id="t2v-compare")
        with gr.Column(scale=4):
            video = gr.Video(label="generated clip (H.264)", autoplay=True, loop=True, elem_id="t2v-video",
                             interactive=False)
            summary = gr.Markdown(elem_id="t2v-summary")
            chart = gr.LinePlot(None, x="step", y="density",
                                color="layer", y_lim=[0, 1], title="attended density per layer and step",
                                x_title="denoising step", y_title="density", height=260, elem_id="t2v-chart")
    examples = gr.Examples(EXAMPLES, inputs=[prompt, attention, frames, steps, seed], label="examples (click one to run it)")

    gr.Markdown("### Compare: dense and the chosen sparse attention at the same seed")
    with gr.Row():
        dense_video = gr.Video(label="dense", autoplay=True, loop=True, interactive=False, elem_id="cmp-dense")
        sparse_video = gr.Video(label="sparse", autoplay=True, loop=True, interactive=False, elem_id="cmp-sparse")
        compare_text = gr.Markdown(elem_id="cmp-summary")

    gr.Markdown("### Attention view: click a point of a frame to see which key blocks its token selected")
    key = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            frame = gr.Slider(0, 16, value=8, step=1, label="video frame")
            picker = gr.Image(label="click a point", interactive=False, elem_id="view-picker", height=280,
                              format="png")
            with gr.Row():
                x = gr.Number(value=32, label="x (pixels)", elem_id="view-x")
                y = gr.Number(value=32, label="y (pixels)", elem_id="view-y")
            with gr.Row():
                layer = gr.Slider(0, 5, value=2, step=1, label="layer")
                step = gr.Slider(0, 19, value=10, step=1, label="denoising step")
                head = gr.Dropdown([HEADS_ALL], value=HEADS_ALL, label="head")
        with gr.Column(scale=3):
            view = gr.Image(label="selected key blocks over the latent frames", interactive=False,
                            elem_id="view-image", format="png")
            view_caption = gr.Markdown(elem_id="view-caption")

    generation_inputs = [prompt, model, attention, frames, height, width, steps, guidance, seed, *knobs.components]

    def request_and_config(values):
        prompt_, model_, attention_, frames_, height_, width_, steps_, guidance_, seed_, *knob_values = values
        request = VideoRequest.checked(prompt_, frames_, height_, width_, steps_, guidance_, seed_, limits)
        if attention_ not in ATTENTION:
            raise ValueError(f"attention must be one of {list(ATTENTION)}, got {attention_!r}")
        config = VMoBAKnobs.config(registry.base_config(model_) if model_ in registry.names() else base, knob_values)
        return request, config, ATTENTION[attention_], registry.load(model_)

    def view_controls(result):
        F = len(result.frames)
        layers = sorted({r.layer for r in result.records}) or [0]
        steps_ = sorted({r.step for r in result.records if r.step is not None}) or [0]
        heads = result.records[0].mask.shape[1] if result.records and result.records[0].mask is not None else 0
        # a slider needs minimum < maximum: one frame, layer or step still gets a range of two
        return (gr.Slider(0, max(F - 1, 1), value=F // 2, step=1, label="video frame"),
                _picker(result.frames, F // 2),
                gr.Slider(0, max(layers[-1], 1), value=min(2, layers[-1]), step=1, label="layer"),
                gr.Slider(0, max(steps_[-1], 1), value=steps_[-1] // 2, step=1, label="denoising step"),
                gr.Dropdown([HEADS_ALL, *[f"head {h}" for h in range(heads)]], value=HEADS_ALL, label="head"),
                result.frames.shape[2] / 2, result.frames.shape[1] / 2)

    @user_errors
    def on_generate(*values, progress=gr.Progress()):
        request, config, attention_, pipe = request_and_config(values)
        result = generate(pipe, request, attention_, config, on_step=progress_callback(progress, "denoising step"))
        clip = save_video(outputs, result.frames, fps=8, scale=_display_scale(result.frames))
        return (clip, _summary(result), _chart(result), results.put(result), *view_controls(result))

    @user_errors
    def on_compare(*values, progress=gr.Progress()):
        request, config, attention_, pipe = request_and_config(values)
        result = compare(pipe, request, attention_, config, on_step=progress_callback(progress, "denoising step"))
        scale = _display_scale(result.dense.frames)
        return (save_video(outputs, result.dense.frames, scale=scale), save_video(outputs, result.sparse.frames, scale=scale),
                _compare_summary(result), _chart(result.sparse), results.put(result.sparse), *view_controls(result.sparse))

    @user_errors
    def on_frame(key_, frame_):
        result = results.get(key_, "generated clip")
        frame_ = _frame_index(frame_, len(result.frames))
        return _picker(result.frames, frame_)

    @user_errors
    def on_view(key_, frame_, x_, y_, layer_, step_, head_):
        result = results.get(key_, "generated clip")
        if not result.records:
            raise gr.Error("this clip ran dense attention: every token attends every key, there is no selection "
                           "to show. Generate with VMoBA or criss-cross attention.", title="Nothing to show", print_exception=False)
        F, H, W = result.frames.shape[:3]
        frame_ = _frame_index(frame_, F)
        token = attention_view.token_at(frame_, float(x_), float(y_), (F, H, W), result.grid)
        record = attention_view.find_record(result.records, int(step_), int(layer_))
        head_index = None if head_ in (None, HEADS_ALL) else int(str(head_).split()[-1])
        image, text = attention_view.render(result.frames, record, token, head_index)
        return under_label(image), text

    def on_click(evt: gr.SelectData):
        # the picker shows the frame PICKER_SCALE times larger: back to frame pixels
        return evt.index[0] / PICKER_SCALE, evt.index[1] / PICKER_SCALE

    view_inputs = [key, frame, x, y, layer, step, head]
    view_outputs = [view, view_caption]
    controls = [frame, picker, layer, step, head, x, y]
    run.click(on_generate, generation_inputs, [video, summary, chart, key, *controls], api_name="generate",
              **COMPUTE).then(on_view, view_inputs, view_outputs, api_visibility="undocumented", **VIEW)
    run_compare.click(on_compare, generation_inputs, [dense_video, sparse_video, compare_text, chart, key, *controls],
                      api_name="compare", **COMPUTE).then(on_view, view_inputs, view_outputs, api_visibility="undocumented", **VIEW)
    examples.load_input_event.then(on_generate, generation_inputs, [video, summary, chart, key, *controls],
                                   api_visibility="undocumented", **COMPUTE).then(
        on_view, view_inputs, view_outputs, api_visibility="undocumented", **VIEW)
    frame.release(on_frame, [key, frame], picker, api_name="frame", **VIEW)
    picker.select(on_click, None, [x, y], api_visibility="undocumented", queue=False).then(
        on_view, view_inputs, view_outputs, api_name="attention_view", **VIEW)
    for control in (layer, step):
        control.release(on_view, view_inputs, view_outputs, api_visibility="undocumented", **VIEW)
    head.change(on_view, view_inputs, view_outputs, api_visibility="undocumented", **VIEW)
    model.change(lambda name: knobs.values_for(registry.base_config(name)), model, knobs.components, api_visibility="undocumented",
                 queue=False)


def _display_scale(frames: np.ndarray) -> int:
    """Small clips are enlarged (nearest neighbour) so a browser shows them at a visible size."""
    return max(1, 256 // max(frames.shape[1], frames.shape[2]))


def _frame_index(value, count: int) -> int:
    index = int(round(float(value)))
    if not 0 <= index < count:
        raise ValueError(f"frame must be in [0, {count - 1}], got {value}")
    return index


def _picker(frames: np.ndarray, index: int) -> np.ndarray:
    return upscale((np.clip(frames[index], 0, 1) * 255 + 0.5).astype(np.uint8), PICKER_SCALE)


def _chart(result) -> pd.DataFrame:
    rows = [dict(step=r["step"], density=r["density"], layer=f"layer {r['layer']} ({r['scheme']})")
            for r in result.densities]
    return pd.DataFrame(rows, columns=["step", "density", "layer"])


def _summary(result) -> str:
    r = result.request
    text = (f"**{_name(result.attention)}**: {r.frames} frames of {r.width}x{r.height}, {r.steps} steps, seed "
            f"{r.seed}, in **{result.seconds:.1f} s**.")
    if result.attention == "dense":
        return text + " Dense attention: every query attends every key (density 1)."
    text += f" Mean attended density **{result.mean_density:.3f}** over every step and layer"
    if result.grid:
        text += f" (latent grid {result.grid[0]}x{result.grid[1]}x{result.grid[2]} = {int(np.prod(result.grid))} tokens)"
    return text + ". The chart shows each layer's density at every step (the last transformer call of the step)."


def _compare_summary(result) -> str:
    faster = "faster" if result.time_ratio > 1 else "slower"
    return (f"**dense** {result.dense.seconds:.1f} s, **{_name(result.sparse.attention)}** {result.sparse.seconds:.1f} s: "
            f"time ratio dense/sparse **{result.time_ratio:.2f}** (sparse was {faster}).\n\n"
            f"Mean density **{result.sparse.mean_density:.3f}**; PSNR of sparse against dense "
            f"**{result.psnr:.2f} dB** (same seed, same prompt).\n\n"
            "On a few hundred tokens choosing blocks costs more than the attention it saves: a ratio below 1 is "
            "expected here, not a fault.")


def _name(attention: str) -> str:
    return {v: k for k, v in ATTENTION.items()}[attention]
