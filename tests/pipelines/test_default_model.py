"""The trained default model shipped in the package: it loads offline and draws what the prompt says.

Clips are generated exactly as `vmoba generate` makes them (VMoBA attention, 20 steps, guidance 5, seed 0)
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
            video = pipe(f"a {color} {shape} moves {direction}", num_inference_steps=20, guidance_scale=5.0,
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
            call = dict(num_inference_steps=20, guidance_scale=5.0, output_type="np", **DEFAULT_SIZE)
            with adapter.conditioning(pipe, torch.from_numpy(reference).permute(0, 3, 1, 2).float() / 255):
                video = pipe(f"a {color} {shape}", generator=torch.Generator().manual_seed(0), **call).frames[0]
            follows.append(detect_clip(video).direction == direction)
            without = pipe(f"a {color} {shape}", generator=torch.Generator().manual_seed(0), **call).frames[0]
            plain.append(detect_clip(without).direction == direction)
    finally:
        vmoba.disable(pipe)
    # the full check (benchmarks/motion_reference_check.py, 96 clips) measured 100% (also 100% at other seeds); here
    # at most one may miss, and the adapter must beat the same prompts without it
    assert sum(follows) >= 7 and sum(follows) > sum(plain) + 2, (follows, plain)
