import math

import numpy as np
import pytest
import torch

from vmoba.motion.synthetic import (
    HELDOUT_IMAGES,
    TRAIN_IMAGES,
    AffineMotion,
    dots_clip,
    grating_clip,
    image_clip,
    load_image,
    random_batch,
)


def test_images_load_offline_and_held_out_ones_are_separate():
    assert not set(TRAIN_IMAGES) & set(HELDOUT_IMAGES)
    for name in HELDOUT_IMAGES + TRAIN_IMAGES[:3]:
        image = load_image(name)
        assert image.dim() == 2 and max(image.shape) <= 512 and 0 <= image.min() and image.max() <= 1
        assert float(image.std()) > 0.05


def test_integer_translation_shifts_whole_pixels():
    """Frame t+1 is frame t moved by (vx, vy) pixels, exactly, wherever both are defined."""
    frames, flow = image_clip(load_image("camera"), (40, 50), 5, AffineMotion(2.0, -1.0))
    for t in range(4):
        assert torch.allclose(frames[t + 1, :-1, 2:], frames[t, 1:, :-2], atol=1e-5)  # right 2, up 1
    assert torch.equal(flow, torch.stack([torch.full((40, 50), 2.0), torch.full((40, 50), -1.0)]))


def test_affine_flow_is_the_time_derivative_of_the_trajectories():
    motion = AffineMotion(0.7, -0.4, rotation=0.03, zoom=-0.02)
    h, w = 9, 11
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    px, py = xs - (w - 1) / 2, ys - (h - 1) / 2

    def forward(t):  # x(t) = c + exp(z t) R(omega t) (p - c) + v t, written out independently
        a, g = motion.rotation * t, math.exp(motion.zoom * t)
        return (g * (math.cos(a) * px - math.sin(a) * py) + motion.vx * t,
                g * (math.sin(a) * px + math.cos(a) * py) + motion.vy * t)

    eps = 1e-4
    (x1, y1), (x0, y0) = forward(eps), forward(-eps)
    numeric = torch.stack([(x1 - x0) / (2 * eps), (y1 - y0) / (2 * eps)]).float()
    assert torch.allclose(motion.flow((h, w)), numeric, atol=1e-4)
    # source_points inverts the trajectories: the point shown at pixel p at time t, mapped forward, lands on p
    t = 2.5
    back = motion.source_points((h, w), torch.tensor([t]))[0].double()
    a, g = motion.rotation * t, math.exp(motion.zoom * t)
    fx = g * (math.cos(a) * back[..., 0] - math.sin(a) * back[..., 1]) + motion.vx * t
    fy = g * (math.sin(a) * back[..., 0] + math.cos(a) * back[..., 1]) + motion.vy * t
    assert torch.allclose(fx, px, atol=1e-4) and torch.allclose(fy, py, atol=1e-4)


def test_dots_and_gratings_move_as_their_flow_says():
    rng = np.random.default_rng(0)
    frames, flow = dots_clip(rng, (30, 30), 4, AffineMotion(1.0, 2.0), density=0.05)
    assert torch.allclose(frames[1, 2:, 1:], frames[0, :-2, :-1], atol=1e-4)
    assert torch.allclose(flow[:, 0, 0], torch.tensor([1.0, 2.0]))
    frames, flow = grating_clip((20, 20), 3, math.pi / 2, 3.0, frequency=0.1)
    assert torch.allclose(frames[1, 3:], frames[0, :-3], atol=1e-5)  # downward by 3 px per frame
    assert torch.allclose(flow[:, 5, 5], torch.tensor([0.0, 3.0]), atol=1e-6)


def test_motion_leaving_the_image_is_refused():
    with pytest.raises(ValueError, match="leaves the source image"):
        image_clip(load_image("coins"), (64, 64), 9, AffineMotion(200.0, 0.0))


def test_random_batches_are_seeded():
    a = random_batch(np.random.default_rng(5), 3, (32, 32), 7)
    b = random_batch(np.random.default_rng(5), 3, (32, 32), 7)
    assert a[0].shape == (3, 7, 32, 32) and a[1].shape == (3, 2, 32, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert 0 <= float(a[0].min()) and float(a[0].max()) <= 1
