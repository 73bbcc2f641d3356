"""Attention-speed tab: one attention layer, dense against VMoBA and criss-cross, at a grid the user picks."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ...config import VMoBAConfig
from ..limits import Limits
from ..media import under_label
from ..speed import check_grid, partition_image, time_layer
from .common import COMPUTE, VMoBAKnobs, user_errors

NOTE = """
**What this measures.** One attention layer on CPU (float32, PyTorch), on synthetic queries and keys with the
locality of a trained video model, timed against PyTorch's dense SDPA: the path `vmoba bench` runs. VMoBA selects
key blocks per query, then attends only those; the selection has a fixed cost, so **below a few thousand tokens
sparse attention is slower than dense**, and on the tiny default model (320 tokens) it cannot be faster. Around
16K tokens the CPU path is 2-4x faster than dense at density 0.13-0.25 (`docs/benchmarks.md`); on a GPU the
Triton kernels are 2.3-3.4x faster than flash attention at Wan 480p (32K tokens). Timings on a shared machine
vary from run to run.
"""


def build(limits: Limits) -> None:
    gr.Markdown(NOTE)
    base = VMoBAConfig()
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                t = gr.Number(value=16, precision=0, label="latent frames T")
                h = gr.Number(value=32, precision=0, label="height H (tokens)")
                w = gr.Number(value=32, precision=0, label="width W (tokens)")
            with gr.Row():
                heads = gr.Slider(1, limits.speed_max_heads, value=2, step=1, label="heads")
                head_dim = gr.Slider(16, limits.speed_max_head_dim, value=64, step=16, label="head dim")
            with gr.Accordion("VMoBA settings", open=True):
                knobs = VMoBAKnobs(base)
            run = gr.Button("Time one layer", variant="primary", elem_id="sp-run")
            examples = gr.Examples([[5, 8, 8], [8, 30, 34], [16, 32, 32]], inputs=[t, h, w],
                        example_labels=["320 tokens (the default model)", "8,160 tokens", "16,384 tokens"],
                        label="grids (click one to run it)")
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=["method", "scheme", "ms", "speed-up", "density", "rel. L2 vs dense"],
                                 label="one attention layer", interactive=False, elem_id="sp-table")
            summary = gr.Markdown(elem_id="sp-summary")
            partition = gr.Image(label="block partition of each scheme (first latent frames; colour = block)",
                                 interactive=False, elem_id="sp-partition", format="png")

    @user_errors
    def on_run(t_, h_, w_, heads_, head_dim_, *knob_values, progress=gr.Progress()):
        grid = check_grid(t_, h_, w_, limits)
        config = VMoBAKnobs.config(base, list(knob_values))
        rows = time_layer(grid, config, heads=int(heads_), head_dim=int(head_dim_),
                          on_progress=lambda done, total, what: progress((done, total), desc=f"timing {what}"))
        frame = pd.DataFrame([[r["method"], r["scheme"], round(r["ms"], 1), round(r["speedup"], 2),
                               round(r["density"], 3), round(r["rel_l2"], 3)] for r in rows],
                             columns=["method", "scheme", "ms", "speed-up", "density", "rel. L2 vs dense"])
        vmoba_rows = [r for r in rows if r["method"].startswith("VMoBA")]
        best, worst = max(r["speedup"] for r in vmoba_rows), min(r["speedup"] for r in vmoba_rows)
        tokens = grid[0] * grid[1] * grid[2]
        verdict = ("faster than dense" if worst > 1 else "slower than dense" if best < 1 else
                   "faster than dense for some schemes, slower for others")
        text = (f"{tokens:,} tokens ({grid[0]}x{grid[1]}x{grid[2]}), {int(heads_)} heads x {int(head_dim_)}: VMoBA ran "
                f"**{worst:.2f}x-{best:.2f}x** the speed of dense SDPA here, **{verdict}**, attending "
                f"{min(r['density'] for r in vmoba_rows):.1%}-{max(r['density'] for r in vmoba_rows):.1%} of the pairs.")
        return frame, text, under_label(partition_image(grid, config))

    inputs = [t, h, w, heads, head_dim, *knobs.components]
    run.click(on_run, inputs, [table, summary, partition], api_name="attention_speed", **COMPUTE)
    examples.load_input_event.then(on_run, inputs, [table, summary, partition], api_visibility="undocumented",
                                   **COMPUTE)
