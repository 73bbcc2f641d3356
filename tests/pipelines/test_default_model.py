"""The trained default model shipped in the package: it loads offline and draws what the prompt says.

Clips are generated exactly as `vmoba generate` makes them (VMoBA attention, 20 steps, the model's own guidance, seed 0)
and read by the dataset's detector (`vmoba.training.shapes.detect_clip`), which is itself checked against
rendered clips in tests/test_data_shapes.py.
"""

import numpy as np
import pytest
import torch

import vmoba
from vmoba.pipelines import DEFAULT_VMOBA_CONFIG, load_default_pipeline
from vmoba.pipelines.default import DEFAULT_SIZE, WEIGHTS_DIR
from vmoba.training.shapes import detect_clip

# loads the shipped model and generates eight 17-frame clips: about a minute on 2 CPU cores
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# every color and every direction twice, shapes spread over them; fixed before the model was measured
PROMPTS = [("red", "circle", "right"), ("green", "square", "left"), ("blue", "triangle", "up"),
           ("yellow", "circle", "down"), ("red", "triangle", "down"), ("green", "circle", "up"),
           ("blue", "square", "right"), ("yellow", "triangle", "left")]


@pytest.fixture(scope="module")
def pipe():
    pipe = load_default_pipeline(quiet=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_weights_are_installed_and_small(pipe):
    assert pipe.vmoba_trained, f"no trained weights in {WEIGHTS_DIR}"
    size = sum(f.stat().st_size for f in WEIGHTS_DIR.rglob("*") if f.is_file())
    assert size < 20 * 2**20, f"shipped weights take {size / 2**20:.1f} MiB"
    assert pipe.config.max_sequence_length == 16


def test_shipped_model_draws_the_prompted_color_and_direction(pipe):
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    try:
        found = []
        for color, shape, direction in PROMPTS:
            video = pipe(f"a {color} {shape} moves {direction}", num_inference_steps=20,
                         generator=torch.Generator().manual_seed(0), output_type="np", **DEFAULT_SIZE).frames[0]
            assert video.shape == (17, 64, 64, 3) and np.isfinite(video).all()
            detection = detect_clip(video)
            found.append((detection.color == color, detection.direction == direction))
    finally:
        vmoba.disable(pipe)
    colors, directions = (sum(column) for column in zip(*found))
    both = sum(c and d for c, d in found)
    # the full check (benchmarks/default_model_check.py, 48 prompts x 2 seeds) measured the accuracy in the
    # README; on these 8 prompts at most one may miss
    assert both >= 7, f"color and direction right in {both} of 8 clips (colors {colors}, directions {directions})"


def test_shipped_model_draws_a_square_where_it_is_asked_for_one_and_a_circle_where_a_circle(pipe):
    """Each pair of prompts differs only in "circle" / "square" (same color, direction and seed). The detector's
    fourfold harmonic (0 for a disc, 0.43 for a square; it calls a square from half that) must be higher for
    the square, by 0.15 on average. The model shipped before stage 2h (flow.input_blur) drew the same blob for
    both: 0.011 on average, the square higher in 6 of 8 by at most 0.035; stage 2h continued once (2b) measured
    0.113, 8 of 8, and continued twice (2c) 0.324, 8 of 8; the shipped refinement (2d) passes."""
    pairs = [("red", "right"), ("green", "left"), ("blue", "up"), ("yellow", "down"), ("red", "down"),
             ("green", "up"), ("blue", "left"), ("yellow", "right")]

    def fourfold(prompt):
        video = pipe(prompt, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="np",
                     **DEFAULT_SIZE).frames[0]
        values = [f.fourfold for f in detect_clip(video).frames if f.fourfold is not None]
        assert len(values) >= 12, f"{prompt!r}: a shape in only {len(values)} of 17 frames"
        return float(np.median(values))

    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    try:
        measured = [(color, direction, fourfold(f"a {color} circle moves {direction}"),
                     fourfold(f"a {color} square moves {direction}")) for color, direction in pairs]
    finally:
        vmoba.disable(pipe)
    differences = [square - circle for *_, circle, square in measured]
    assert sum(d > 0 for d in differences) >= 7 and np.mean(differences) >= 0.15, measured


def test_shipped_motion_adapter_steers_a_prompt_without_a_direction(pipe):
    """Each of PROMPTS without its direction word ("a red circle"), with a rendered reference clip of another
    color and shape moving in that direction: the clip moves the reference's way. Without the adapter the
    same prompts all go one way (benchmarks/results/motion_reference_check_without_adapter.json)."""
    from vmoba.pipelines import load_motion_adapter
    from vmoba.training.shapes import COLORS, SHAPES, prompted_spec, render_clip

    adapter = load_motion_adapter()
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    try:
        follows, plain = [], []
        for i, (color, shape, direction) in enumerate(PROMPTS):
            colors = list(COLORS)
            other = (colors[(colors.index(color) + 1) % len(colors)], SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)])
            reference = render_clip(prompted_spec(*other, direction, seed=i))  # (17, 64, 64, 3) uint8
            call = dict(num_inference_steps=20, output_type="np", **DEFAULT_SIZE)
            with adapter.conditioning(pipe, torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255):
                video = pipe(f"a {color} {shape}", generator=torch.Generator().manual_seed(0), **call).frames[0]
            follows.append(detect_clip(video).direction == direction)
            without = pipe(f"a {color} {shape}", generator=torch.Generator().manual_seed(0), **call).frames[0]
            plain.append(detect_clip(without).direction == direction)
    finally:
        vmoba.disable(pipe)
    # the full check (benchmarks/motion_reference_check.py, 96 clips) measured 100% (2c also at other seeds); here
    # at most one may miss, and the adapter must beat the same prompts without it
    assert sum(follows) >= 7 and sum(follows) > sum(plain) + 2, (follows, plain)


def test_shipped_motion_adapter_follows_references_that_are_not_shapes(pipe):
    """A photo the motion models never trained on, random dots and a grating, grey, moving in each direction at
    1 px/frame, steer "a red circle" and "a blue square" their way; the shipped adapter was trained to read
    such references (motion_adapter.synthetic_references). The full check (motion_reference_check.py
    --references patterns, 144 clips) measured 100%; the adapter trained on shapes alone 83%, and 6 of these 8."""
    import math

    from vmoba.motion import synthetic
    from vmoba.pipelines import load_motion_adapter
    from vmoba.training.shapes import DIRECTIONS

    adapter = load_motion_adapter()
    rng = np.random.default_rng(9)
    size, frames = (DEFAULT_SIZE["height"], DEFAULT_SIZE["width"]), DEFAULT_SIZE["num_frames"]
    vmoba.enable(pipe, DEFAULT_VMOBA_CONFIG)
    try:
        follows = []
        for i, (direction, (dx, dy)) in enumerate(DIRECTIONS.items()):
            motion = synthetic.AffineMotion(float(dx), float(dy))
            references = {
                "photo": synthetic.random_image_clip(rng, synthetic.load_image(synthetic.HELDOUT_IMAGES[i % 3]),
                                                     size, frames, motion)[0],
                "grating": synthetic.grating_clip(size, frames, direction=math.atan2(dy, dx), speed=1.0)[0]
                if i % 2 else synthetic.dots_clip(rng, size, frames, motion)[0]}
            for (kind, clip), prompt in zip(references.items(), ("a red circle", "a blue square")):
                reference = clip[:, None].expand(-1, 3, -1, -1)  # (T, 3, H, W) in [0, 1]
                with adapter.conditioning(pipe, reference):
                    video = pipe(prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=20,
                                 output_type="np", **DEFAULT_SIZE).frames[0]
                follows.append((kind, direction, detect_clip(video).direction == direction))
    finally:
        vmoba.disable(pipe)
    # at most one of the eight may miss
    assert sum(ok for *_, ok in follows) >= 7, follows


def test_the_model_samples_at_its_own_guidance_when_a_call_gives_none(pipe, tmp_path):
    """The shipped folder records its guidance (2: at diffusers' 5 the shapes are squashed along their motion);
    a call without guidance_scale uses it, pipe.vmoba_defaults reports it, and a folder without it keeps 5."""
    from vmoba.pipelines import load_pipeline
    from vmoba.pipelines.default import DEFAULT_GUIDANCE_SCALE, build_default_pipeline

    assert pipe.config.default_guidance_scale == DEFAULT_GUIDANCE_SCALE == 2.0
    assert load_pipeline().vmoba_defaults.guidance_scale == 2.0
    call = dict(num_inference_steps=2, output_type="latent", num_frames=5, height=32, width=32)
    own = pipe("a red circle moves right", generator=torch.Generator().manual_seed(0), **call).frames
    two = pipe("a red circle moves right", guidance_scale=2.0, generator=torch.Generator().manual_seed(0), **call).frames
    five = pipe("a red circle moves right", guidance_scale=5.0, generator=torch.Generator().manual_seed(0), **call).frames
    assert torch.equal(own, two) and not torch.allclose(own, five)
    # a pipeline folder saved before the field existed samples at diffusers' 5, as it did
    import json

    build_default_pipeline(seed=0).save_pretrained(tmp_path / "old")
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    assert index.pop("default_guidance_scale") == 2.0
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    old = load_pipeline(tmp_path / "old")
    assert old.config.default_guidance_scale == 5.0 and old.vmoba_defaults.guidance_scale == 5.0
