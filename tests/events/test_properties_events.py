"""Property-based checks of event streams and the event file readers and writers.

For every drawn input: `EventStream` either holds exactly what a naive, element-by-element reading of the
arrays says or raises ValueError/TypeError naming the array at fault; a stream written in any format reads back
equal (to the microsecond for the formats that store microseconds) or the writer refuses it by name; a text
file of drawn rows reads back as a naive parser reads it or fails naming the file and the line; streaming by
windows gives the same events as one read, window by window. Seeded (``derandomize``) and bounded.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vmoba.events import EventStream, iter_event_windows, read_events, write_events

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
MICROSECONDS = {"h5", "aedat4"}


# -- EventStream: a naive reading of the rules ---------------------------------------------------------------


class Refused(Exception):
    """What the naive reading expects to be refused, and the words the error must contain."""

    def __init__(self, *words):
        self.words = words


def naive_stream(x, y, t, p, sensor_size):
    """Python lists ``(x, y, t_seconds, p_signed)`` per the EventStream rules, or `Refused`."""
    try:
        h, w = sensor_size
    except (TypeError, ValueError):
        raise Refused("sensor_size") from None
    if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 1 for s in (h, w)):
        raise Refused("sensor_size")
    h, w = int(h), int(w)
    arrays = {"x": x, "y": y, "t": t, "p": p}
    if len({len(a) for a in arrays.values()}) != 1:
        raise Refused("one length")
    for name, limit in (("x", w), ("y", h)):
        for value in arrays[name].tolist():
            if value != math.floor(value) or not math.isfinite(value):
                raise Refused(name)
        if any(not 0 <= v < limit for v in arrays[name].tolist()):
            raise Refused(name)
    seconds = [float(v) for v in t.tolist()]
    if any(not math.isfinite(s) for s in seconds) or any(b < a for a, b in zip(seconds, seconds[1:])):
        raise Refused("timestamps")
    values = {int(v) if float(v).is_integer() else v for v in p.tolist()}
    if values <= {-1, 1}:
        signed = [int(v) for v in p.tolist()]
    elif values <= {0, 1}:
        signed = [2 * int(v) - 1 for v in p.tolist()]
    else:
        raise Refused("polarity")
    return [int(v) for v in x.tolist()], [int(v) for v in y.tolist()], seconds, signed


@st.composite
def event_arrays(draw):
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    sensor = draw(st.sampled_from([(h, w), (np.int64(h), np.int32(w)), (h, 0), (h,), (float(h), w), (h, w)]))
    n = draw(st.integers(0, 12))
    length = {k: n for k in "xytp"}
    if draw(st.integers(0, 9)) == 0:
        length[draw(st.sampled_from("xytp"))] = n + 1
    coord_dtype = draw(st.sampled_from(INT_DTYPES + ["float32", "float64"]))

    def coords(limit, count):
        values = draw(st.lists(st.integers(0, limit - 1) if draw(st.booleans()) else st.integers(-1, limit + 1),
                               min_size=count, max_size=count))
        array = np.array(values)
        if np.dtype(coord_dtype).kind == "u":
            array = np.abs(array)
        array = array.astype(coord_dtype)
        if coord_dtype.startswith("float") and count and draw(st.integers(0, 5)) == 0:
            array[draw(st.integers(0, count - 1))] += 0.5
        return array

    times = sorted(draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=length["t"], max_size=length["t"])))
    t = np.array(times, dtype=np.float64)
    if length["t"] and draw(st.integers(0, 5)) == 0:
        t[draw(st.integers(0, length["t"] - 1))] = draw(st.sampled_from([np.nan, np.inf, -1.0]))
    p_values = draw(st.sampled_from([(0, 1), (-1, 1), (-1, 0, 1), (0, 1, 2), (1,)]))
    p = np.array(draw(st.lists(st.sampled_from(p_values), min_size=length["p"], max_size=length["p"])))
    p = p.astype(draw(st.sampled_from(["int8", "int64", "float32"] + (["uint8", "bool"] if min(p_values) >= 0 else []))))
    return coords(w, length["x"]), coords(h, length["y"]), t, p, sensor


@PROPERTY
@given(arrays=event_arrays())
def test_event_stream_holds_what_a_naive_reading_says_or_names_the_array(arrays):
    x, y, t, p, sensor = arrays
    try:
        want = naive_stream(x, y, t, p, sensor)
    except Refused as refused:
        with pytest.raises((ValueError, TypeError)) as info:
            EventStream(x, y, t, p, sensor)
        assert any(word in str(info.value) for word in refused.words), (refused.words, str(info.value))
        return
    ev = EventStream(x, y, t, p, sensor)
    assert (ev.x.tolist(), ev.y.tolist(), ev.t.tolist(), ev.p.tolist()) == want
    assert ev.x.dtype == np.int64 and ev.t.dtype == np.float64 and ev.p.dtype == np.int8
    assert ev.sensor_size == (int(sensor[0]), int(sensor[1]))


@PROPERTY
@given(t_us=st.lists(st.integers(-2**62, 2**62), min_size=1, max_size=8), unit=st.sampled_from(["us", "ms", "ns"]))
def test_integer_time_units_convert_once_to_seconds(t_us, unit):
    t = np.sort(np.array(t_us, dtype=np.int64))
    ev = EventStream(np.zeros(len(t), int), np.zeros(len(t), int), t, np.ones(len(t), int), (1, 1), time_unit=unit)
    factor = {"us": 1e-6, "ms": 1e-3, "ns": 1e-9}[unit]
    assert ev.t.tolist() == [float(v) * factor for v in t.tolist()]
    with pytest.raises(ValueError, match=f"time_unit={unit!r} must be integers"):
        EventStream([0], [0], [0.5], [1], (1, 1), time_unit=unit)


# -- writers and readers ---------------------------------------------------------------------------------------


@st.composite
def streams(draw):
    h, w = draw(st.sampled_from([(1, 1), (3, 5), (260, 346), (480, 640), (70000, 3)]))
    n = draw(st.integers(1, 40))
    start_us = draw(st.sampled_from([0, 1, 5_000_000, 2**40, -1_000]))
    steps = draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n))
    t_us = start_us + np.cumsum(steps)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    microseconds = draw(st.booleans())
    t = t_us * 1e-6 if microseconds else np.sort(rng.uniform(-1, 100, n))
    return EventStream(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n), (h, w))


@PROPERTY
@given(ev=streams(), ext=st.sampled_from(["txt", "npz", "h5", "aedat4"]))
def test_every_format_reads_back_what_was_written_or_refuses_by_name(tmp_path_factory, ev, ext):
    path = tmp_path_factory.mktemp("rt") / f"e.{ext}"
    refusal = None
    if ext == "aedat4" and int(ev.t_us.min()) < 0:
        refusal = "non-negative"
    elif ext == "aedat4" and max(ev.sensor_size) > 32767:
        refusal = "int16"
    if refusal:
        with pytest.raises(ValueError, match=refusal):
            write_events(path, ev)
        assert not path.exists() and not list(path.parent.iterdir())
        return
    write_events(path, ev)
    back = read_events(path)
    assert back.sensor_size == ev.sensor_size
    assert np.array_equal(back.x, ev.x) and np.array_equal(back.y, ev.y) and np.array_equal(back.p, ev.p)
    if ext in MICROSECONDS:
        assert np.array_equal(back.t_us, ev.t_us)
    else:
        assert np.array_equal(back.t, ev.t)  # %.17g text and float64 npz keep every bit


ROW_TOKENS = st.sampled_from(["0", "1", "2", "3", "0.5", "-1", "7", "1e-3", "nan", "inf", "x", "", "1.0", "2.25"])


@st.composite
def text_files(draw):
    header = draw(st.sampled_from(["4 3", "4 3 extra", "4", "-4 3", "4.5 3", "", "width height", "4 3"]))
    rows = [" ".join(draw(st.lists(ROW_TOKENS, min_size=3, max_size=5)))
            if draw(st.integers(0, 4)) == 0 else
            f"{draw(st.sampled_from(['0.1', '0.2', '0.3', '0.25']))} {draw(st.integers(0, 4))} "
            f"{draw(st.integers(0, 3))} {draw(st.sampled_from(['0', '1']))}"
            for _ in range(draw(st.integers(0, 6)))]
    return "\n".join([header, *rows]) + "\n"


def naive_text(text):
    """What an E2VID text file holds, read line by line, or `Refused`."""
    lines = text.splitlines()
    fields = lines[0].split() if lines else []
    if len(fields) != 2 or not all(f.lstrip("-").isdigit() for f in fields) or min(int(f) for f in fields) < 1:
        raise Refused("width height", "sensor_size", "empty")
    width, height = (int(f) for f in fields)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(f) for f in parts]
        except ValueError:
            raise Refused(f"line {number}", "t x y p") from None
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise Refused(f"line {number}", "t x y p")
        rows.append(values)
    if not rows:
        raise Refused("no events")
    t, x, y, p = (np.array(c) for c in zip(*rows))
    for column, name in ((x, "x"), (y, "y"), (p, "p")):
        if not np.all(column == np.round(column)):
            raise Refused(f"column {name}", name)
    try:
        return naive_stream(x.astype(np.int64), y.astype(np.int64), t, p.astype(np.int64), (height, width))
    except Refused as refused:
        raise Refused(*refused.words, "sorted") from None


@PROPERTY
@given(text=text_files())
def test_text_files_read_as_a_naive_parser_reads_them_or_fail_naming_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("txt") / "drawn.txt"
    path.write_text(text)
    try:
        want = naive_text(text)
    except Refused as refused:
        with pytest.raises(ValueError) as info:
            read_events(path)
        message = str(info.value)
        assert "drawn.txt" in message and any(w in message for w in refused.words), (refused.words, message)
        return
    ev = read_events(path)
    assert (ev.x.tolist(), ev.y.tolist(), ev.t.tolist(), ev.p.tolist()) == want


@PROPERTY
@given(ev=streams(), ext=st.sampled_from(["txt", "npz", "h5"]), window=st.floats(1e-4, 0.2),
       chunk=st.integers(1, 50))
def test_windows_are_the_time_slices_of_one_read(tmp_path_factory, ev, ext, window, chunk):
    assume(ev.t_us.min() >= 0 or ext != "aedat4")
    assume(ev.duration / window < 2000)  # bounded number of windows
    path = tmp_path_factory.mktemp("win") / f"e.{ext}"
    write_events(path, ev)
    whole = read_events(path)
    windows = list(iter_event_windows(path, window, chunk_size=chunk))
    t0 = whole.t[0]
    for k, part in enumerate(windows):
        last = k == len(windows) - 1
        assert part == whole.time_window(t0 + k * window, np.inf if last else t0 + (k + 1) * window), k
    assert EventStream.concatenate(windows) == whole
