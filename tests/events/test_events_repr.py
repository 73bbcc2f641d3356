import math

import numpy as np
import pytest
import torch

from vmoba.events import (
    EventStream,
    events_to_frame,
    events_to_time_surface,
    events_to_voxel_grid,
    render_events,
    render_voxel_grid,
)
from vmoba.events.representations import events_to_voxel_windows


def random_stream(n=400, seed=0, sensor=(6, 9)):
    rng = np.random.default_rng(seed)
    return EventStream(rng.integers(0, sensor[1], n), rng.integers(0, sensor[0], n), np.sort(rng.uniform(0.3, 0.9, n)),
                       rng.choice([-1, 1], n), sensor)


def naive_voxel_grid(ev, B, t0=None, t1=None, normalize=False):
    """The E2VID definition, one event at a time, in Python floats."""
    t0 = ev.t[0] if t0 is None else t0
    t1 = ev.t[-1] if t1 is None else t1
    grid = np.zeros((B, *ev.sensor_size))
    for x, y, t, p in zip(ev.x, ev.y, ev.t, ev.p):
        ts = (B - 1) * (t - t0) / (t1 - t0) if t1 > t0 else 0.0
        lo = math.floor(ts)
        frac = ts - lo
        grid[lo, y, x] += p * (1 - frac)
        if lo + 1 < B:
            grid[lo + 1, y, x] += p * frac
    if normalize:
        nz = grid != 0
        vals = grid[nz]
        grid[nz] = (vals - vals.mean()) / vals.std()
    return grid


@pytest.mark.parametrize("B", [1, 2, 5, 9])
@pytest.mark.parametrize("normalize", [False, True])
def test_voxel_grid_matches_per_event_formula(B, normalize):
    ev = random_stream(seed=B)
    got = events_to_voxel_grid(ev, B, normalize, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), naive_voxel_grid(ev, B, normalize=normalize), atol=1e-12)
    if normalize:
        nz = got[got != 0]
        assert abs(nz.mean().item()) < 1e-12 and abs(nz.std(correction=0).item() - 1) < 1e-12


def test_voxel_grid_explicit_range_and_hand_case():
    # one event a quarter of the way into 3 bins: t* = 0.5 -> half in bin 0, half in bin 1
    ev = EventStream([1], [0], [0.25], [1], (1, 2))
    g = events_to_voxel_grid(ev, 3, t_range=(0.0, 1.0))
    assert g[:, 0, 1].tolist() == [0.5, 0.5, 0.0] and g[:, 0, 0].abs().sum() == 0
    ev2 = random_stream(seed=3)
    np.testing.assert_allclose(events_to_voxel_grid(ev2, 4, t_range=(0.0, 1.0), dtype=torch.float64).numpy(),
                               naive_voxel_grid(ev2, 4, 0.0, 1.0), atol=1e-12)
    # the polarity sum is conserved, whatever the bins
    assert events_to_voxel_grid(ev2, 7).sum().item() == pytest.approx(float(ev2.p.sum()), abs=1e-4)


def test_voxel_grid_errors():
    ev = random_stream()
    with pytest.raises(ValueError, match="empty event stream"):
        events_to_voxel_grid(EventStream([], [], [], [], (2, 2)), 3)
    assert events_to_voxel_grid(EventStream([], [], [], [], (2, 2)), 3, t_range=(0, 1)).abs().sum() == 0
    with pytest.raises(ValueError, match="outside t_range"):
        events_to_voxel_grid(ev, 3, t_range=(0.5, 1.0))
    with pytest.raises(ValueError, match="num_bins"):
        events_to_voxel_grid(ev, 0)


def test_voxel_windows_cover_every_event_once():
    ev = random_stream(n=300)
    edges = [0.3, 0.5, 0.7, 0.9]
    grids = events_to_voxel_windows(ev, edges, 4)
    assert grids.shape == (3, 4, 6, 9)
    assert grids.sum().item() == pytest.approx(float(ev.p.sum()), abs=1e-4)
    with pytest.raises(ValueError, match="outside the boundaries"):
        events_to_voxel_windows(ev, [0.4, 0.9], 4)


def test_event_frame_counts():
    ev = random_stream(n=200, seed=4)
    frame = events_to_frame(ev)
    net = events_to_frame(ev, split_polarity=False)
    expected = np.zeros((2, *ev.sensor_size))
    for x, y, p in zip(ev.x, ev.y, ev.p):
        expected[int(p > 0), y, x] += 1
    np.testing.assert_array_equal(frame.numpy(), expected)
    np.testing.assert_array_equal(net.numpy(), expected[1] - expected[0])


def test_time_surface_uses_latest_event():
    ev = random_stream(n=150, seed=5)
    tau, t_ref = 0.1, 1.0
    surface = events_to_time_surface(ev, tau, t_ref=t_ref)
    expected = np.zeros((2, *ev.sensor_size))
    for x, y, t, p in zip(ev.x, ev.y, ev.t, ev.p):
        expected[int(p > 0), y, x] = math.exp(-(t_ref - t) / tau)  # later events overwrite earlier ones
    np.testing.assert_allclose(surface.numpy(), expected, rtol=1e-6)
    both = events_to_time_surface(ev, tau, t_ref=t_ref, split_polarity=False)
    np.testing.assert_allclose(both.numpy(), expected.max(0), rtol=1e-6)
    with pytest.raises(ValueError, match="before the last event"):
        events_to_time_surface(ev, tau, t_ref=0.5)


def test_renderings():
    ev = EventStream([0, 1, 1], [0, 0, 0], [0.0, 0.1, 0.2], [1, -1, -1], (2, 2))
    image = render_events(ev)
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == (220, 40, 40) and tuple(image[0, 1]) == (40, 80, 220)
    assert tuple(image[1, 1]) == (255, 255, 255)
    strip = render_voxel_grid(torch.tensor([[[1.0, -1.0]], [[0.0, 0.5]]]))
    assert strip.shape == (1, 4, 3)
    assert tuple(strip[0, 0]) == (255, 0, 0) and tuple(strip[0, 1]) == (0, 0, 255) and tuple(strip[0, 2]) == (255, 255, 255)
