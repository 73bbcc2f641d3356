import colorsys
import math

import numpy as np
import pytest
import torch

from vmoba.motion import MotionEnergy, energy_grid, energy_to_rgb, flow_to_rgb, to_pil
from vmoba.motion.synthetic import grating_clip


def test_flow_colours_match_the_hsv_code_pixel_by_pixel():
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(2, 6, 7)).astype(np.float32)
    img = flow_to_rgb(torch.from_numpy(flow), max_magnitude=2.0)
    assert img.shape == (6, 7, 3) and img.dtype == np.uint8
    for y in range(6):
        for x in range(7):
            vx, vy = flow[:, y, x]
            hue = (math.atan2(vy, vx) / (2 * math.pi)) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, min(math.hypot(vx, vy) / 2.0, 1.0), 1.0)
            assert np.abs(img[y, x].astype(int) - np.round(np.array(rgb) * 255)).max() <= 1


@pytest.mark.parametrize("vec, colour", [((0, 0), (255, 255, 255)), ((1, 0), (255, 0, 0)), ((-1, 0), (0, 255, 255)),
                                         ((0, 1), (128, 255, 0)), ((0, -1), (128, 0, 255))])
def test_cardinal_directions(vec, colour):
    flow = np.zeros((2, 3, 3), np.float32)
    flow[0], flow[1] = vec
    assert tuple(flow_to_rgb(flow, max_magnitude=1.0)[1, 1]) == colour


@pytest.mark.parametrize("k", range(8))
def test_energy_image_shows_the_direction_of_a_grating(k):
    me = MotionEnergy()
    direction = k * math.pi / 4
    frames, _ = grating_clip((48, 48), 9, direction, 0.6, frequency=0.25, contrast=0.8)
    with torch.no_grad():
        img = energy_to_rgb(me(frames), me.channel_directions(), size=(48, 48))
    assert img.shape == (48, 48, 3)
    r, g, b = img[8:-8, 8:-8].reshape(-1, 3).mean(0) / 255
    hue, sat, _ = colorsys.rgb_to_hsv(r, g, b)
    assert sat > 0.3
    assert abs((hue - direction / (2 * math.pi) + 0.5) % 1.0 - 0.5) < 1 / 16


def test_grid_and_pil():
    e = torch.rand(12, 5, 6)
    grid = energy_grid(e, columns=4)
    assert grid.shape == (3 * 6 - 1, 4 * 7 - 1, 3) and grid.dtype == np.uint8
    assert grid[0:5, 0:6, 0].max() == 255  # each tile scaled to its own maximum
    assert to_pil(grid).size == (4 * 7 - 1, 3 * 6 - 1)


def test_render_errors():
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        flow_to_rgb(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        flow_to_rgb(np.full((2, 4, 4), np.nan, np.float32))
    with pytest.raises(TypeError, match="floating point"):
        flow_to_rgb(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="one direction per channel"):
        energy_to_rgb(np.zeros((4, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="uint8"):
        to_pil(np.zeros((4, 4, 3), np.float32))


def test_render_arguments_are_checked():
    flow = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="max_magnitude must be a finite number"):
        flow_to_rgb(flow, max_magnitude=float("nan"))
    assert np.array_equal(flow_to_rgb(flow, max_magnitude=np.float32(2)), flow_to_rgb(flow, max_magnitude=2.0))
    with pytest.raises(ValueError, match="columns must be >= 1"):
        energy_grid(torch.rand(4, 3, 3), 0)
    with pytest.raises(ValueError, match="size must have 2 entries"):
        energy_to_rgb(torch.rand(2, 3, 3), torch.zeros(2), size=(8,))
