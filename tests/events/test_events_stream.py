import numpy as np
import pytest
import torch

from vmoba.events import EventStream, polarity_to_signed


def make(n=5, **kw):
    args = dict(x=np.arange(n) % 4, y=np.arange(n) % 3, t=np.linspace(0, 1, n), p=np.ones(n, int), sensor_size=(3, 4))
    args.update(kw)
    return EventStream(**args)


def test_fields_and_dtypes():
    ev = make(p=[1, -1, 1, -1, 1])
    assert ev.t.dtype == np.float64 and ev.x.dtype == np.int64 and ev.p.dtype == np.int8
    assert ev.sensor_size == (3, 4) and ev.height == 3 and ev.width == 4 and len(ev) == 5
    with pytest.raises(ValueError):
        ev.t[0] = 5.0  # read-only arrays: a stream cannot be unsorted after validation


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, bool])
def test_zero_one_polarity_maps_to_signed_even_when_unsigned(dtype):
    raw = np.array([0, 1, 1, 0], dtype=dtype)
    signed = polarity_to_signed(raw)
    assert signed.tolist() == [-1, 1, 1, -1]  # a uint8 2*p-1 would give 255 for p=0


def test_polarity_errors_name_the_values():
    with pytest.raises(ValueError, match="polarity"):
        polarity_to_signed(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="polarity"):
        polarity_to_signed(np.array([-1, 0, 1]))  # a mix of both conventions is ambiguous


def test_microseconds_are_converted_once():
    ev = EventStream.from_microseconds([0, 1], [0, 0], np.array([1_000_000, 2_500_000], np.int64), [1, 0], (1, 2))
    np.testing.assert_array_equal(ev.t, [1.0, 2.5])
    np.testing.assert_array_equal(ev.t_us, [1_000_000, 2_500_000])
    with pytest.raises(ValueError, match="integers"):
        EventStream([0], [0], [1.5], [1], (1, 1), time_unit="us")
    with pytest.raises(ValueError, match="time_unit"):
        EventStream([0], [0], [1], [1], (1, 1), time_unit="minutes")


def test_unsorted_timestamps_name_the_event():
    with pytest.raises(ValueError, match=r"not sorted: event 2 .* after event 1"):
        make(n=3, t=[0.0, 0.5, 0.2])


@pytest.mark.parametrize("field,value,msg", [("x", [0, 1, 4], "x coordinate outside the sensor: event 2 has x=4"),
                                             ("y", [0, -1, 0], "y coordinate outside the sensor: event 1 has y=-1")])
def test_coordinates_outside_sensor(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        make(n=3, **{field: value})


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        make(n=3, x=[0, 1])
    with pytest.raises(ValueError, match="integers"):
        make(n=3, x=[0.5, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        make(n=3, t=[0, np.nan, 1])
    with pytest.raises(ValueError, match="sensor_size"):
        make(sensor_size=(0, 4))
    with pytest.raises(ValueError, match="one-dimensional"):
        make(n=4, x=np.zeros((2, 2), int))


def test_empty_stream_is_valid_and_slices_keep_order():
    empty = EventStream([], [], [], [], (2, 2))
    assert len(empty) == 0 and empty.duration == 0.0
    ev = make(n=10)
    w = ev.time_window(0.2, 0.6)
    assert np.all((w.t >= 0.2) & (w.t < 0.6)) and len(w) == int(np.sum((ev.t >= 0.2) & (ev.t < 0.6)))
    assert ev[np.array([5, 1])] == ev[np.array([1, 5])]
    assert EventStream.concatenate([ev[:4], ev[4:]]) == ev
    with pytest.raises(ValueError, match="different sensor sizes"):
        EventStream.concatenate([ev, EventStream([0], [0], [2.0], [1], (5, 5))])


def test_accepts_torch_tensors():
    ev = EventStream(torch.tensor([1, 2]), torch.tensor([0, 1]), torch.tensor([0.0, 0.1], dtype=torch.float64),
                     torch.tensor([0, 1], dtype=torch.uint8), (2, 3))
    assert ev.p.tolist() == [-1, 1]
