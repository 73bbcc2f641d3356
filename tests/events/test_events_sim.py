import math

import numpy as np
import pytest
import torch

from vmoba.events import simulate_events

EPS = 1e-3


def ramp_frames(slope, times, L0=math.log(0.02 + EPS), size=(2, 3)):
    """Frames whose log(I + eps) is exactly L0 + slope * t: a linear log-intensity ramp."""
    times = torch.as_tensor(times, dtype=torch.float64)
    logs = L0 + slope * times
    return (torch.exp(logs) - EPS)[:, None, None].expand(len(times), *size).clone(), times


@pytest.mark.parametrize("slope,C,frames", [(9.3, 0.2, 5), (-7.1, 0.25, 3), (4.0, 0.3, 2)])
def test_linear_ramp_gives_floor_delta_over_c_events_at_known_times(slope, C, frames):
    times = np.linspace(0.0, 0.2, frames)
    video, ts = ramp_frames(slope, times)
    ev = simulate_events(video, ts, contrast_threshold=C, eps=EPS)
    delta = abs(slope) * 0.2
    n = math.floor(delta / C)
    pixels = 6
    assert len(ev) == n * pixels
    assert set(ev.p.tolist()) == {1 if slope > 0 else -1}
    expected = np.repeat([j * C / abs(slope) for j in range(1, n + 1)], pixels)  # L crosses L0 +- jC at jC/|slope|
    np.testing.assert_allclose(ev.t, expected, atol=1e-12)
    for j in range(n):  # each pixel fires once per level
        block = slice(j * pixels, (j + 1) * pixels)
        assert sorted(zip(ev.y[block], ev.x[block])) == [(y, x) for y in range(2) for x in range(3)]


def test_asymmetric_thresholds():
    times = np.linspace(0, 0.1, 4)
    up, ts = ramp_frames(10.5, times)  # delta 1.05: 5 ON events with C+ = 0.2, whatever C- is
    assert len(simulate_events(up, ts, 0.2, contrast_threshold_neg=0.5, eps=EPS)) == 6 * 5
    down, ts = ramp_frames(-10.5, times, L0=0.0)  # 1.05 / 0.3: 3 OFF events
    assert len(simulate_events(down, ts, 0.2, contrast_threshold_neg=0.3, eps=EPS)) == 6 * 3


def test_up_then_down_resets_reference():
    # log intensity rises by 0.5 then falls by 0.55 with C = 0.2: ON at +0.2 and +0.4 (ref ends at +0.4); the
    # fall crosses ref - 0.2 = +0.2 and ref - 0.4 = 0.0 (not -0.2, only reached at -0.05 + ...): 2 OFF events
    L0 = math.log(0.3 + EPS)
    logs = torch.tensor([L0, L0 + 0.5, L0 - 0.05], dtype=torch.float64)
    frames = (torch.exp(logs) - EPS)[:, None, None]
    ev = simulate_events(frames, torch.tensor([0.0, 1.0, 2.0]), 0.2, eps=EPS)
    assert ev.p.tolist() == [1, 1, -1, -1]
    np.testing.assert_allclose(ev.t, [0.4, 0.8, 1 + 0.3 / 0.55, 1 + 0.5 / 0.55], atol=1e-9)


def test_static_scene_gives_no_events():
    frames = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)).expand(6, 8, 8).clone()
    ev = simulate_events(frames, torch.linspace(0, 1, 6), threshold_noise=0.05, refractory_period=0.01)
    assert len(ev) == 0 and ev.sensor_size == (8, 8)


def test_refractory_period_drops_events_greedily():
    # crossings every C / slope = 0.02 s; a 0.05 s refractory period keeps every third (0.02, 0.08, 0.14, ...)
    video, ts = ramp_frames(10.0, np.linspace(0, 0.21, 7), size=(1, 1))
    ev = simulate_events(video, ts, 0.2, refractory_period=0.05, eps=EPS)
    crossings = [0.02 * j for j in range(1, 11)]
    kept, last = [], -1.0
    for t in crossings:
        if t - last >= 0.05 - 1e-12:
            kept.append(t)
            last = t
    np.testing.assert_allclose(ev.t, kept, atol=1e-9)


def test_leak_fires_on_events_in_a_static_scene():
    frames = torch.full((2, 1, 1), 0.5)
    ev = simulate_events(frames, torch.tensor([0.0, 2.1]), 0.2, leak_rate=3.0)
    # the reference drifts down by leak * C per second: one ON event every 1 / leak seconds
    np.testing.assert_allclose(ev.t, [1 / 3 * j for j in range(1, 7)], atol=1e-9)
    assert set(ev.p.tolist()) == {1}


def test_shot_noise_rate_and_seed():
    frames = torch.full((2, 20, 20), 0.5)
    ts = torch.tensor([0.0, 1.0])
    counts = [len(simulate_events(frames, ts, shot_noise_rate=2.0, seed=s)) for s in range(20)]
    # Poisson(800) per run: the mean of 20 runs lies within 5 standard errors of 800
    assert abs(np.mean(counts) - 800) < 5 * math.sqrt(800 / 20)
    a = simulate_events(frames, ts, shot_noise_rate=2.0, seed=7)
    assert a == simulate_events(frames, ts, shot_noise_rate=2.0, seed=7)
    assert a != simulate_events(frames, ts, shot_noise_rate=2.0, seed=8)


def test_threshold_noise_is_per_pixel_and_seeded():
    video, ts = ramp_frames(10.0, np.linspace(0, 0.3, 4), size=(10, 10))
    ev = simulate_events(video, ts, 0.2, threshold_noise=0.03, seed=1)
    counts = np.bincount(ev.y * 10 + ev.x, minlength=100)
    assert counts.min() < 15 < counts.max()  # 3.0 / 0.2 = 15 without noise
    assert ev == simulate_events(video, ts, 0.2, threshold_noise=0.03, seed=1)


def test_moving_edge_produces_both_polarities_in_order():
    x = torch.arange(32, dtype=torch.float64)
    frames = torch.stack([((x - 8 - 2 * k).abs() < 4).double() * 0.8 + 0.1 for k in range(6)])[:, None, :]
    ev = simulate_events(frames, torch.linspace(0, 0.05, 6))
    assert set(ev.p.tolist()) == {-1, 1} and np.all(np.diff(ev.t) >= 0)
    assert ev.x[ev.p > 0].mean() > ev.x[ev.p < 0].mean()  # the bar moves right: ON ahead, OFF behind


def test_bad_inputs():
    frames = torch.rand(3, 4, 4)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        simulate_events(frames[0], torch.zeros(1))
    with pytest.raises(ValueError, match="strictly increasing"):
        simulate_events(frames, torch.tensor([0.0, 0.2, 0.1]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        simulate_events(frames, torch.tensor([0.0, 0.1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        simulate_events(frames * 2, torch.tensor([0.0, 0.1, 0.2]))
    with pytest.raises(ValueError, match="contrast_threshold must be > 0"):
        simulate_events(frames, torch.tensor([0.0, 0.1, 0.2]), contrast_threshold=0)
