"""Every public function of vmoba.events: bad arguments raise ValueError/TypeError naming the argument, and
numbers of every numeric type (numpy and torch scalars) give the same result as Python numbers."""

import numpy as np
import pytest
import torch

from vmoba.events import (EventStream, events_to_frame, events_to_time_surface, events_to_voxel_grid,
                          iter_event_windows, read_events, render_events, render_voxel_grid, simulate_events,
                          write_events)
from vmoba.events.representations import events_to_voxel_windows


def _stream():
    rng = np.random.default_rng(0)
    n = 50
    return EventStream(rng.integers(0, 9, n), rng.integers(0, 7, n), np.sort(rng.uniform(0, 1, n)),
                       rng.integers(0, 2, n), (7, 9))


EV = _stream()
FRAMES = torch.linspace(0.1, 0.9, 3 * 4 * 4, dtype=torch.float64).reshape(3, 4, 4)
TIMES = np.array([0.0, 0.1, 0.2])

BAD = [
    (lambda: events_to_voxel_grid(EV, 0), ValueError, "num_bins must be >= 1, got 0"),
    (lambda: events_to_voxel_grid(EV, 2.0), TypeError, "num_bins must be an integer"),
    (lambda: events_to_voxel_grid(EV, True), TypeError, "num_bins must be an integer"),
    (lambda: events_to_voxel_grid(EV, 3, normalize="yes"), TypeError, "normalize must be True or False"),
    (lambda: events_to_voxel_grid(EV, 3, t_range=(0, float("nan"))), ValueError, r"t_range\[1\] must be a finite"),
    (lambda: events_to_voxel_grid(EV, 3, t_range=5), ValueError, "t_range must be a pair"),
    (lambda: events_to_voxel_grid(EV, 3, dtype=torch.int64), TypeError, "dtype must be a floating"),
    (lambda: events_to_voxel_grid("events.npz", 3), TypeError, "events must be an EventStream, got str"),
    (lambda: events_to_voxel_windows(EV, [0, float("nan"), 1], 3), ValueError, "boundaries must be"),
    (lambda: events_to_frame(EV, split_polarity=None), TypeError, "split_polarity must be True or False"),
    (lambda: events_to_time_surface(EV, 0), ValueError, "tau must be > 0"),
    (lambda: events_to_time_surface(EV, float("inf")), ValueError, "tau must be a finite"),
    (lambda: events_to_time_surface(EV, 0.1, t_ref="now"), TypeError, "t_ref must be a number"),
    (lambda: render_events(EV, background="grey"), ValueError, "background must be one of"),
    (lambda: render_voxel_grid(np.zeros((2, 3, 3))), TypeError, "voxels must be a torch.Tensor"),
    (lambda: render_voxel_grid(torch.full((2, 3, 3), float("nan"))), ValueError, "voxels must be finite"),
    (lambda: simulate_events(FRAMES, TIMES, contrast_threshold=0), ValueError, "contrast_threshold must be > 0"),
    (lambda: simulate_events(FRAMES, TIMES, contrast_threshold="0.2"), TypeError, "contrast_threshold must be a number"),
    (lambda: simulate_events(FRAMES, TIMES, refractory_period=-1e-3), ValueError, "refractory_period must be >= 0"),
    (lambda: simulate_events(FRAMES, TIMES, leak_rate=float("nan")), ValueError, "leak_rate must be a finite"),
    (lambda: simulate_events(FRAMES, TIMES, seed=1.5), TypeError, "seed must be an integer"),
    (lambda: simulate_events(FRAMES, TIMES, seed=-1), ValueError, "seed must be >= 0"),
    (lambda: simulate_events("frames.png", TIMES), TypeError, "frames must be a tensor"),
    (lambda: simulate_events(FRAMES + 0j, TIMES), TypeError, "frames must hold real numbers"),
    (lambda: EventStream([0], [0], [0.0], [1], (4, 4), time_unit="min"), ValueError, "time_unit must be one of"),
    (lambda: EV.time_window(0.0, float("nan")), ValueError, r"t_end must be a number or \+-inf"),
    (lambda: write_events("e.npz", EV, overwrite="yes"), TypeError, "overwrite must be True or False"),
    (lambda: write_events("e.npz", [1, 2]), TypeError, "events must be an EventStream, got list"),
]


@pytest.mark.parametrize("call, error, words", BAD, ids=[w for _, _, w in BAD])
def test_bad_arguments_name_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_stream_arguments_of_files(tmp_path):
    path = tmp_path / "e.npz"
    write_events(path, EV)
    with pytest.raises(ValueError, match="window must be > 0"):
        list(iter_event_windows(path, 0.0))
    with pytest.raises(ValueError, match="window must be a finite"):
        list(iter_event_windows(path, float("nan")))
    with pytest.raises(TypeError, match="chunk_size must be an integer"):
        list(iter_event_windows(path, 0.1, chunk_size=10.5))
    with pytest.raises(ValueError, match="t_start must be a finite"):
        list(iter_event_windows(path, 0.1, t_start=float("-inf")))
    with pytest.raises(ValueError, match="sensor_size"):
        read_events(path, sensor_size=(7.5, 9))
    windows = list(iter_event_windows(path, np.float32(0.25), chunk_size=np.int64(16), t_start=np.float64(0.0)))
    assert EventStream.concatenate(windows) == EV and len(windows) == 4


def test_conditioner_arguments_and_numpy_sizes_that_save(tmp_path):
    from vmoba.events import EventResidualConditioner

    for kwargs, error, words in (({"num_bins": 0}, ValueError, "num_bins must be >= 1"),
                                 ({"channels": 12}, ValueError, "channels must be a multiple of 8"),
                                 ({"channels": 8.0}, TypeError, "channels must be an integer"),
                                 ({"recurrence": 0}, ValueError, "recurrence must be >= 1")):
        with pytest.raises(error, match=words):
            EventResidualConditioner(**kwargs)
    conditioner = EventResidualConditioner(num_bins=np.int64(3), channels=np.int32(8), lowfreq_channels=8)
    conditioner.save_pretrained(tmp_path / "c")  # the config is JSON: numpy integers must not reach it
    loaded = EventResidualConditioner.from_pretrained(tmp_path / "c")
    assert loaded.config.num_bins == 3 and type(loaded.config.num_bins) is int


def test_numpy_and_torch_scalars_are_numbers():
    assert torch.equal(events_to_voxel_grid(EV, np.int64(3), normalize=np.bool_(True)),
                       events_to_voxel_grid(EV, 3, normalize=True))
    assert torch.equal(events_to_voxel_grid(EV, torch.tensor(4), t_range=(np.float32(0), torch.tensor(1.0))),
                       events_to_voxel_grid(EV, 4, t_range=(0.0, 1.0)))
    assert torch.equal(events_to_time_surface(EV, np.float32(0.5)), events_to_time_surface(EV, float(np.float32(0.5))))
    a = simulate_events(FRAMES, TIMES, contrast_threshold=np.float32(0.05), seed=np.int64(3), threshold_noise=0.01)
    b = simulate_events(FRAMES, TIMES, contrast_threshold=float(np.float32(0.05)), seed=3, threshold_noise=0.01)
    assert a == b and len(a) > 0
    assert EventStream(np.array([1]), [2], [0.5], [True], (np.int32(4), np.int64(4))).sensor_size == (4, 4)
