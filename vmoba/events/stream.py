"""`EventStream`: the validated in-memory form of an event-camera recording.

Timestamps are float64 **seconds** everywhere in vmoba. Files and sensors often count integer microseconds;
those come in through ``time_unit="us"`` (or `EventStream.from_microseconds`) and are converted once, here,
so no later stage has to guess the unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .. import checks

TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def validate_sensor_size(sensor_size: Any) -> tuple[int, int]:
    try:
        items = tuple(int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, bool) else s for s in sensor_size)
    except TypeError:
        raise ValueError(f"sensor_size must be a (height, width) pair of positive integers, got {sensor_size!r}") from None
    if len(items) != 2 or any(not isinstance(s, int) or s < 1 for s in items):
        raise ValueError(f"sensor_size must be a (height, width) pair of positive integers, got {sensor_size!r}")
    return items  # type: ignore[return-value]


def _as_1d(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"event array {name} must be one-dimensional, got shape {array.shape}")
    return array


def _coordinates(name: str, values: Any, limit: int, axis: str) -> np.ndarray:
    array = _as_1d(name, values)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise ValueError(f"event coordinates {name} must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi >= limit:
            bad = int(np.argmax((array < 0) | (array >= limit)))
            raise ValueError(
                f"event {name} coordinate outside the sensor: event {bad} has {name}={int(array[bad])}, "
                f"but the sensor {axis} is {limit} (valid {name} is 0..{limit - 1})"
            )
    return array


def polarity_to_signed(p: Any) -> np.ndarray:
    """Polarity as int8 in {-1, +1}; {0, 1} (any integer or bool dtype) maps 0 -> -1.

    Unsigned arrays are cast to a signed type *before* the mapping: ``2 * p - 1`` on a uint8 zero wraps to 255.
    """
    array = _as_1d("p", p)
    if array.dtype == bool:
        array = array.astype(np.int8)
    if array.size and np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isin(array, (-1.0, 0.0, 1.0))):
            raise ValueError(f"event polarity p must be in {{-1, +1}} or {{0, 1}}, got values {np.unique(array)[:5]}")
    elif array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"event polarity p must be integers or booleans, got dtype {array.dtype}")
    signed = array.astype(np.int64)
    values = set(np.unique(signed).tolist())
    if values <= {-1, 1}:
        return signed.astype(np.int8)
    if values <= {0, 1}:
        return (2 * signed - 1).astype(np.int8)
    raise ValueError(
        f"event polarity p must be in {{-1, +1}} or {{0, 1}} (not a mix of both), got values {sorted(values)[:5]}"
    )


@dataclass(frozen=True, eq=False)
class EventStream:
    """Events of one sensor, sorted by time.

    Args:
        x, y: integer pixel coordinates, ``0 <= x < width``, ``0 <= y < height``.
        t: timestamps. With the default ``time_unit="s"`` these are seconds (float64); with ``"ms"``, ``"us"``
            or ``"ns"`` they must be integers in that unit and are converted to float64 seconds.
        p: polarity in {-1, +1}; {0, 1} and booleans are accepted and mapped (0 -> -1).
        sensor_size: ``(height, width)``.

    Timestamps must be non-decreasing. An empty stream is valid (a static scene produces one); the stages
    that need at least one event say so.
    """

    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    p: np.ndarray
    sensor_size: tuple[int, int]

    def __init__(self, x: Any, y: Any, t: Any, p: Any, sensor_size: Sequence[int], *, time_unit: str = "s"):
        height, width = validate_sensor_size(sensor_size)
        checks.choice("time_unit", time_unit, tuple(TIME_UNITS))
        t_arr = _as_1d("t", t)
        lengths = {name: len(_as_1d(name, a)) for name, a in (("x", x), ("y", y), ("p", p))}
        lengths["t"] = len(t_arr)
        if len(set(lengths.values())) != 1:
            raise ValueError(f"event arrays must have one length, got {lengths}")
        if time_unit == "s":
            if t_arr.size and not (np.issubdtype(t_arr.dtype, np.floating) or np.issubdtype(t_arr.dtype, np.integer)):
                raise ValueError(f"event timestamps t must be numbers (seconds), got dtype {t_arr.dtype}")
            seconds = t_arr.astype(np.float64)
        else:
            if t_arr.size and not np.issubdtype(t_arr.dtype, np.integer):
                raise ValueError(
                    f"event timestamps with time_unit={time_unit!r} must be integers, got dtype {t_arr.dtype}; "
                    f"pass float seconds with time_unit='s'"
                )
            seconds = t_arr.astype(np.float64) * TIME_UNITS[time_unit]
        if seconds.size:
            if not np.all(np.isfinite(seconds)):
                raise ValueError("event timestamps t contain NaN or Inf")
            backwards = np.flatnonzero(np.diff(seconds) < 0)
            if backwards.size:
                i = int(backwards[0])
                raise ValueError(
                    f"event timestamps are not sorted: event {i + 1} (t={seconds[i + 1]!r} s) comes after "
                    f"event {i} (t={seconds[i]!r} s); sort the events by time first"
                )
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("x", _coordinates("x", x, width, "width"))
        set_("y", _coordinates("y", y, height, "height"))
        set_("t", seconds)
        set_("p", polarity_to_signed(p))
        set_("sensor_size", (height, width))
        for array in (self.x, self.y, self.t, self.p):
            array.setflags(write=False)

    @classmethod
    def from_microseconds(cls, x: Any, y: Any, t_us: Any, p: Any, sensor_size: Sequence[int]) -> "EventStream":
        """Build from integer microsecond timestamps (the unit of DSEC, AEDAT4 and most sensors)."""
        return cls(x, y, t_us, p, sensor_size, time_unit="us")

    @property
    def height(self) -> int:
        return self.sensor_size[0]

    @property
    def width(self) -> int:
        return self.sensor_size[1]

    @property
    def t_us(self) -> np.ndarray:
        """Timestamps as int64 microseconds, rounded to nearest."""
        return np.round(self.t * 1e6).astype(np.int64)

    @property
    def duration(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self) else 0.0

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def __repr__(self) -> str:
        span = f", t=[{self.t[0]:.6f}, {self.t[-1]:.6f}] s" if len(self) else ""
        return f"EventStream({len(self)} events, sensor_size={self.sensor_size}{span})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventStream):
            return NotImplemented
        return self.sensor_size == other.sensor_size and all(
            np.array_equal(getattr(self, n), getattr(other, n)) for n in ("x", "y", "t", "p")
        )

    def __getitem__(self, index: slice | np.ndarray) -> "EventStream":
        """A slice or boolean/integer mask of the events (order is kept, so the result stays sorted)."""
        if isinstance(index, (int, np.integer)):
            raise TypeError("index an EventStream with a slice or a mask; a single event is not a stream")
        index = np.asarray(index) if not isinstance(index, slice) else index
        if isinstance(index, np.ndarray) and index.dtype != bool:
            index = np.sort(index)
        return EventStream(self.x[index], self.y[index], self.t[index], self.p[index], self.sensor_size)

    def time_window(self, t_start: float, t_end: float) -> "EventStream":
        """Events with ``t_start <= t < t_end`` (binary search: the stream is sorted); +-inf for an open end."""
        t_start, t_end = checks.bound("t_start", t_start), checks.bound("t_end", t_end)
        lo, hi = np.searchsorted(self.t, [t_start, t_end], side="left")
        return self[int(lo) : int(hi)]

    @staticmethod
    def concatenate(streams: Sequence["EventStream"]) -> "EventStream":
        if not streams:
            raise ValueError("cannot concatenate an empty list of event streams")
        sizes = {s.sensor_size for s in streams}
        if len(sizes) != 1:
            raise ValueError(f"event streams come from different sensor sizes: {sorted(sizes)}")
        return EventStream(
            *(np.concatenate([getattr(s, n) for s in streams]) for n in ("x", "y", "t", "p")), sensor_size=sizes.pop()
        )


def checked_stream(events: Any, name: str = "events") -> EventStream:
    """``events`` itself when it is an `EventStream`; else the TypeError every public function gives."""
    if not isinstance(events, EventStream):
        raise TypeError(f"{name} must be an EventStream, got {type(events).__name__}")
    return events
