"""Motion-energy tab: energy maps per direction and speed, the estimated flow, the dominant motion in words."""

from __future__ import annotations

import gradio as gr

from ...pipelines.default import DEFAULT_GUIDANCE_SCALE
from ..files import OutputFolder
from ..generation import VideoRequest
from ..limits import Limits, whole
from ..media import save_video, under_label
from ..models import DEFAULT_MODEL, ModelRegistry
from ..motion_demo import analyse, energy_panel, example_clips, flow_picture, generate_with_motion, load_clip
from .common import COMPUTE, progress_callback, user_errors

NOTE = """
**What to expect.** The energy stage is the classic Adelson-Bergen bank (16 directions, 8 preferred speeds): it
decodes the direction of drifting gratings to within 0.1 degree. The flow network on top is small (0.47 M
parameters, trained for under two CPU hours): on held-out photographs its error is about half of OpenCV
Farneback's but several times DIS's, it overestimates slow speeds (0.25 px/frame reads as 0.3-0.4) and is
weakest on textureless regions (`docs/motion.md`). Clips are converted to grey; the flow is the motion at the
middle frame, in pixels per frame of the clip as analysed (after resizing).
"""


MOTION_NOTE = """
**Generate with this motion.** The embedded model's motion adapter reads how the clip above moves (its motion
energy averaged over the frame: direction and speed, not where things are or what they look like) and steers a
new clip of the prompt that way; leave the direction out of the prompt ("a red circle"). On rendered references
of another colour and shape the generated clip moves as the reference in 100% of 96 clips, 25% without the
adapter; on a photo it never trained on, random dots or a grating, at 1 or 2 px/frame, in 99% of 96
(`docs/training.md`, "Motion reference"). `vmoba generate "a red circle" --motion-reference clip.mp4`
does the same from a terminal. The model knows four directions: the photo example, moving right and up, gives
a clip moving up.
"""


def build(outputs: OutputFolder, limits: Limits, registry: ModelRegistry) -> None:
    gr.Markdown(NOTE)
    examples = {name: save_video(outputs, clip, fps=8) for name, clip in example_clips().items()}
    with gr.Row():
        with gr.Column(scale=2):
            video = gr.Video(label=f"clip (at most {limits.max_video_seconds:g} s, {limits.max_upload_mb:g} MB)",
                             sources=["upload"], elem_id="me-video-in")
            frames = gr.Slider(7, limits.max_clip_frames, value=9, step=1, label="frames analysed (from the start)")
            run = gr.Button("Analyse motion", variant="primary", elem_id="me-run")
            example_set = gr.Examples([[path] for path in examples.values()], inputs=[video],
                                      example_labels=list(examples), label="examples with known motion (click one to run it)")
            summary = gr.Markdown(elem_id="me-summary")
        with gr.Column(scale=3):
            flow = gr.Image(label="middle frame | estimated flow (hue = direction, saturation = speed; key at top right)",
                            interactive=False, elem_id="me-flow", format="png")
            energy = gr.Image(label="motion energy: columns = preferred direction (arrow), rows = preferred speed",
                              interactive=False, elem_id="me-energy", format="png")

    @user_errors
    def on_run(video_, frames_, progress=gr.Progress()):
        clip = load_clip(video_, limits, frames=whole(frames_))
        result = analyse(clip, lambda done, total, what: progress((done, total), desc=what))
        return (under_label(flow_picture(result.flow, result.middle)),
                under_label(energy_panel(result.energy, result.directions, result.speeds, result.num_orientations)),
                f"{len(clip)} frames of {clip.shape[2]}x{clip.shape[1]}. " + result.summary)

    gr.Markdown(MOTION_NOTE)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(value="a red circle", label="prompt (no direction)", max_lines=1,
                                max_length=limits.max_prompt_chars, elem_id="me-prompt")
            with gr.Row():
                steps = gr.Slider(1, limits.max_steps, value=min(20, limits.max_steps), step=1,
                                  label="denoising steps", elem_id="me-steps")
                seed = gr.Number(value=0, precision=0, label="seed")
            follow = gr.Button("Generate with this motion", elem_id="me-generate")
        with gr.Column(scale=3):
            generated = gr.Video(label="generated clip, moving as the clip above", autoplay=True, loop=True,
                                 interactive=False, elem_id="me-generated")
            generated_text = gr.Markdown(elem_id="me-generated-summary")

    @user_errors
    def on_follow(video_, frames_, prompt_, steps_, seed_, progress=gr.Progress()):
        clip = load_clip(video_, limits, frames=whole(frames_))
        request = VideoRequest.checked(prompt_, 17, 64, 64, steps_, DEFAULT_GUIDANCE_SCALE, seed_, limits)
        result = generate_with_motion(registry.load(DEFAULT_MODEL), clip, request,
                                      on_step=progress_callback(progress, "denoising step"))
        return (save_video(outputs, result.frames, fps=8, scale=4),
                f"'{request.prompt}', seed {request.seed}, {request.steps} steps, moving as the {len(clip)}-frame "
                f"clip above; "
                f"{result.seconds:.1f} s")

    run.click(on_run, [video, frames], [flow, energy, summary], api_name="motion_energy", **COMPUTE)
    follow.click(on_follow, [video, frames, prompt, steps, seed], [generated, generated_text], api_name="motion_generate",
                 **COMPUTE)
    example_set.load_input_event.then(on_run, [video, frames], [flow, energy, summary], api_visibility="undocumented",
                                      **COMPUTE)
