"""Event files: E2VID text, npz, DSEC-layout HDF5 and AEDAT4; whole-file reads and streaming by time window.

Every format is read through one chunk reader that yields raw ``(x, y, t_seconds, p)`` arrays in file order
and never holds more than ``chunk_size`` events. `read_events` concatenates the chunks, `iter_event_windows`
cuts them into fixed time windows, so a recording larger than memory is processed window by window.

Format notes:
    text (``.txt``): first line ``width height``, then one ``t x y p`` row per event, t in seconds.
    npz: arrays ``x``, ``y``, ``t`` (float64 seconds), ``p`` and ``sensor_size`` = ``(height, width)``.
    HDF5 (``.h5``, ``.hdf5``), DSEC layout: ``events/{x,y,t,p}`` with t in integer microseconds relative
        to the scalar ``t_offset`` (microseconds), ``ms_to_idx``; Blosc-compressed, so ``hdf5plugin`` is
        needed. DSEC files carry no sensor size: pass ``sensor_size=`` (files written here store it as
        attributes of ``events``). Timestamps are stored to the microsecond.
    AEDAT4 (``.aedat4``): read with the optional ``aedat`` package; written uncompressed. Microseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import zipfile
from typing import Iterator, Sequence

import numpy as np

from .. import checks
from . import aedat4
from .stream import EventStream, checked_stream, validate_sensor_size

FORMATS = ("text", "npz", "hdf5", "aedat4")
_EXTENSIONS = {".txt": "text", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".aedat4": "aedat4"}
DEFAULT_CHUNK = 1 << 20

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def detect_format(path: str | os.PathLike, format: str | None = None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown event file format {format!r}; use one of {FORMATS}")
        return format
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"cannot tell the event file format of {os.fspath(path)} from its extension {ext!r}; "
            f"use one of {sorted(_EXTENSIONS)} or pass format= (one of {FORMATS})"
        )
    return _EXTENSIONS[ext]


def _h5py(path: str):
    try:
        import h5py
        import hdf5plugin  # noqa: F401  (registers the Blosc filter that DSEC files use)
    except ImportError:
        raise ImportError(f"reading or writing the HDF5 file {path} needs h5py and hdf5plugin: pip install 'vmoba[events]'") from None
    return h5py


@contextlib.contextmanager
def _damaged(path: str) -> Iterator[None]:
    """Turn what a damaged file makes zipfile, numpy or h5py raise (BadZipFile, KeyError, RuntimeError, struct
    and zlib errors, OSError, messages without the file's name) into a ValueError that names the file."""
    try:
        yield
    except ValueError as error:
        if path in str(error):
            raise
        raise ValueError(f"{path} is corrupt or truncated: {error}") from None
    except (ImportError, MemoryError, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as error:
        raise ValueError(f"{path} is corrupt or truncated: {type(error).__name__}: {error}") from None


# ---------------------------------------------------------------------------------------------- text


def _text_header(path: str, line: str) -> tuple[int, int]:
    fields = line.split()
    try:
        width, height = (int(f) for f in fields)
    except ValueError:
        raise ValueError(f"{path}: the first line must be 'width height' (two integers), got {line.strip()!r}") from None
    return validate_sensor_size((height, width))


def _parse_text_rows(path: str, lines: list[str], first_line: int) -> np.ndarray:
    try:
        rows = np.loadtxt(lines, dtype=np.float64, ndmin=2)
    except ValueError:
        rows = None
    if rows is None or rows.shape[1] != 4:
        for offset, line in enumerate(lines):
            fields = line.split()
            try:
                ok = len(fields) == 4 and all(np.isfinite(float(f)) for f in fields)
            except ValueError:
                ok = False
            if not ok and fields:
                raise ValueError(f"{path}, line {first_line + offset}: expected 't x y p', got {line.strip()!r}")
        raise ValueError(f"{path}: rows from line {first_line} are not 't x y p' numbers")
    return rows


def _iter_text_chunks(path: str, chunk_size: int) -> Iterator[Chunk]:
    with open(path, encoding="ascii", errors="replace") as file:
        next(file, None)  # header, read by _text_header
        line_no = 2
        while True:
            lines = list(itertools.islice(file, chunk_size))
            if not lines:
                return
            rows = _parse_text_rows(path, lines, line_no)
            if rows.size == 0:
                line_no += len(lines)
                continue
            where = _row_lines(lines, line_no)
            line_no += len(lines)
            bad = ~np.isfinite(rows).all(axis=1)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"{path}, line {where[i]}: expected 't x y p' finite numbers, got {rows[i].tolist()}")
            yield (_as_int(path, "x", rows[:, 1], where), _as_int(path, "y", rows[:, 2], where), rows[:, 0],
                   _as_int(path, "p", rows[:, 3], where))


def _row_lines(lines: list[str], first_line: int) -> np.ndarray:
    """File line number of each parsed row (blank lines give no row)."""
    return np.array([first_line + i for i, line in enumerate(lines) if line.split()], dtype=np.int64)


def _as_int(path: str, name: str, values: np.ndarray, where: np.ndarray) -> np.ndarray:
    fractional = values != np.round(values)
    if fractional.any():
        i = int(np.argmax(fractional))
        raise ValueError(f"{path}, line {where[i]}: column {name} must hold integers, got {float(values[i])!r}")
    return values.astype(np.int64)


def _write_text(path: str, events: EventStream) -> None:
    with open(path, "w", encoding="ascii") as file:
        file.write(f"{events.width} {events.height}\n")
        rows = np.empty(len(events), dtype=[("t", "f8"), ("x", "i8"), ("y", "i8"), ("p", "i8")])
        rows["t"], rows["x"], rows["y"], rows["p"] = events.t, events.x, events.y, (events.p > 0)
        np.savetxt(file, rows, fmt=["%.17g", "%d", "%d", "%d"])


# ---------------------------------------------------------------------------------------------- npz

_NPZ_KEYS = ("x", "y", "t", "p", "sensor_size")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _open_npz(path: str) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a readable npz file (corrupt or truncated): {error}") from None
    missing = [k for k in _NPZ_KEYS if f"{k}.npy" not in archive.namelist()]
    if missing:
        archive.close()
        raise ValueError(f"{path} lacks the arrays {missing}; an event npz holds {list(_NPZ_KEYS)}")
    return archive


def _npy_layout(path: str, key: str, member) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's .npy header, before any data is read (the header is a claim: nothing
    is allocated from it until the bytes are there)."""
    version = np.lib.format.read_magic(member)
    read_header = _NPY_HEADERS.get(version)
    if read_header is None:
        raise ValueError(f"{path}: array {key} uses .npy format version {version}, not 1.0 or 2.0")
    shape, fortran, dtype = read_header(member)
    if dtype.kind not in "biuf" or dtype.itemsize > 8 or fortran and len(shape) > 1:
        raise ValueError(f"{path}: array {key} must hold plain numbers, got dtype {dtype.str}")
    return shape, dtype


def _npz_sensor_size(path: str) -> tuple[int, int]:
    with _damaged(path), _open_npz(path) as archive, archive.open("sensor_size.npy") as member:
        shape, dtype = _npy_layout(path, "sensor_size", member)
        if shape != (2,):
            raise ValueError(f"{path}: sensor_size must be a (height, width) pair, got an array of shape {shape}")
        raw = member.read(2 * dtype.itemsize)
        if len(raw) != 2 * dtype.itemsize:
            raise ValueError(f"{path}: array sensor_size is truncated")
        return validate_sensor_size(np.frombuffer(raw, dtype=dtype).tolist())


def _iter_npz_chunks(path: str, chunk_size: int) -> Iterator[Chunk]:
    # Each member is read as a stream (zipfile inflates incrementally), so only one chunk of each array is
    # ever in memory, whether the npz was saved compressed or not.
    with _damaged(path), _open_npz(path) as archive:
        members = {k: archive.open(f"{k}.npy") for k in ("x", "y", "t", "p")}
        try:
            layouts = {}
            for key, member in members.items():
                shape, dtype = _npy_layout(path, key, member)
                if len(shape) != 1:
                    raise ValueError(f"{path}: array {key} must be one-dimensional, got shape {shape}")
                layouts[key] = (shape[0], dtype)
            lengths = {k: n for k, (n, _) in layouts.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"{path}: event arrays must have one length, got {lengths}")
            total = lengths["x"]
            for start in range(0, total, chunk_size):
                count = min(chunk_size, total - start)
                parts = []
                for key in ("x", "y", "t", "p"):
                    dtype = layouts[key][1]
                    raw = members[key].read(count * dtype.itemsize)
                    if len(raw) != count * dtype.itemsize:
                        raise ValueError(f"{path}: array {key} is truncated (its header claims {total} values)")
                    parts.append(np.frombuffer(raw, dtype=dtype))
                yield parts[0], parts[1], parts[2].astype(np.float64), parts[3]
        finally:
            for member in members.values():
                member.close()


def _write_npz(path: str, events: EventStream) -> None:
    coord = np.uint16 if max(events.sensor_size) <= 65535 else np.int64
    with open(path, "wb") as file:
        np.savez(file, x=events.x.astype(coord), y=events.y.astype(coord), t=events.t, p=events.p,
                 sensor_size=np.asarray(events.sensor_size, dtype=np.int64))


# ---------------------------------------------------------------------------------------------- HDF5


def _open_h5(path: str):
    h5py = _h5py(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file (corrupt or truncated): {error}") from None
    missing = [k for k in ("x", "y", "t", "p") if f"events/{k}" not in file]
    if missing:
        file.close()
        raise ValueError(f"{path} lacks the datasets {['events/' + k for k in missing]} of the DSEC layout")
    return file


def _h5_sensor_size(path: str) -> tuple[int, int] | None:
    with _damaged(path), _open_h5(path) as file:
        attrs = file["events"].attrs
        if "height" in attrs and "width" in attrs:
            height, width = (np.asarray(attrs[k]) for k in ("height", "width"))
            if height.shape != () or width.shape != ():
                raise ValueError(f"{path}: events.attrs height and width must be single integers, got "
                                 f"{height.tolist()!r} and {width.tolist()!r}")
            return validate_sensor_size((height.item(), width.item()))
    return None


def _h5_check_stored(path: str, name: str, data) -> None:
    """Refuse a dataset whose shape claims more values than the file stores: HDF5 reads unwritten chunks as
    fill values, so a header claiming 2**40 events would otherwise stream terabytes of zeros."""
    needed = data.shape[0] if data.shape else 1
    if needed == 0:
        return
    if data.chunks is not None:
        chunks = -(-needed // data.chunks[0])
        stored = data.id.get_num_chunks()
        if stored < chunks:
            raise ValueError(f"{path}: {name} claims {needed} values, but only {stored} of its {chunks} chunks are "
                             f"stored (truncated or damaged)")
    elif data.id.get_storage_size() == 0:  # contiguous storage is allocated whole or not at all
        raise ValueError(f"{path}: {name} claims {needed} values, but none are stored")


def _iter_h5_chunks(path: str, chunk_size: int) -> Iterator[Chunk]:
    with _damaged(path), _open_h5(path) as file:
        data = {k: file[f"events/{k}"] for k in ("x", "y", "t", "p")}
        lengths = {k: d.shape for k, d in data.items()}
        if len(set(lengths.values())) != 1 or len(lengths["t"]) != 1:
            raise ValueError(f"{path}: events/x, y, t, p must be one-dimensional and of one length, got {lengths}")
        for key, dataset in data.items():
            if dataset.dtype.kind not in "biuf":
                raise ValueError(f"{path}: events/{key} must hold numbers, got dtype {dataset.dtype}")
            _h5_check_stored(path, f"events/{key}", dataset)
        if not np.issubdtype(data["t"].dtype, np.integer):
            raise ValueError(f"{path}: events/t must hold integer microseconds, got dtype {data['t'].dtype}")
        offset = 0
        if "t_offset" in file:
            stored = file["t_offset"]
            if not hasattr(stored, "shape") or stored.shape not in ((), (1,)) or stored.dtype.kind not in "iu":
                raise ValueError(f"{path}: t_offset must be one integer (microseconds), got "
                                 f"{getattr(stored, 'shape', type(stored).__name__)}")
            offset = int(np.asarray(stored[()]).reshape(-1)[0])
        total = lengths["t"][0]
        for start in range(0, total, chunk_size):
            part = slice(start, min(total, start + chunk_size))
            t_us = data["t"][part].astype(np.int64) + offset
            yield data["x"][part], data["y"][part], t_us * 1e-6, data["p"][part]


def _write_h5(path: str, events: EventStream) -> None:
    h5py = _h5py(path)
    import hdf5plugin

    t_us = events.t_us
    offset = int(t_us[0])
    relative = t_us - offset
    t_dtype = np.uint32 if int(relative[-1]) < 2**32 else np.int64
    coord = np.uint16 if max(events.sensor_size) <= 65535 else np.int64
    blosc = hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE)
    ms = np.arange(int(relative[-1]) // 1000 + 2, dtype=np.int64) * 1000
    with h5py.File(path, "w") as file:
        group = file.create_group("events")
        for name, values in (("x", events.x.astype(coord)), ("y", events.y.astype(coord)),
                             ("t", relative.astype(t_dtype)), ("p", (events.p > 0).astype(np.uint8))):
            group.create_dataset(name, data=values, chunks=(min(len(values), 1 << 16),), **blosc)
        group.attrs["height"], group.attrs["width"] = events.sensor_size
        file.create_dataset("t_offset", data=np.int64(offset))
        file.create_dataset("ms_to_idx", data=np.searchsorted(relative, ms, side="left").astype(np.uint64))


# ---------------------------------------------------------------------------------------------- AEDAT4


def _iter_aedat4_chunks(path: str, chunk_size: int) -> Iterator[Chunk]:
    for x, y, t_us, on in aedat4.iter_aedat4_chunks(path):
        yield x, y, t_us * 1e-6, on


def _write_aedat4(path: str, events: EventStream) -> None:
    with open(path, "wb") as file:
        aedat4.write_aedat4(file, events.height, events.width, events.t_us, events.x, events.y, events.p)


# ---------------------------------------------------------------------------------------------- public API

_READERS = {"text": _iter_text_chunks, "npz": _iter_npz_chunks, "hdf5": _iter_h5_chunks, "aedat4": _iter_aedat4_chunks}
_WRITERS = {"text": _write_text, "npz": _write_npz, "hdf5": _write_h5, "aedat4": _write_aedat4}


def _stored_sensor_size(path: str, fmt: str) -> tuple[int, int] | None:
    if fmt == "text":
        with open(path, encoding="ascii", errors="replace") as file:
            header = file.readline()
        if not header:
            raise ValueError(f"{path} is empty: an E2VID text file starts with a 'width height' line")
        return _text_header(path, header)
    if fmt == "npz":
        return _npz_sensor_size(path)
    if fmt == "hdf5":
        return _h5_sensor_size(path)
    return aedat4.aedat4_sensor_size(path)


def _file_sensor_size(path: str, fmt: str, sensor_size: Sequence[int] | None) -> tuple[int, int]:
    try:
        stored = _stored_sensor_size(path, fmt)
    except ValueError as error:
        if path in str(error):
            raise
        raise ValueError(f"{path}: {error}") from None
    if sensor_size is not None:
        wanted = validate_sensor_size(sensor_size)
        if stored is not None and stored != wanted:
            raise ValueError(f"{path} declares sensor size {stored} (height, width), but sensor_size={wanted} was passed")
        return wanted
    if stored is None:
        raise ValueError(f"{path} does not record the sensor size (DSEC files do not): pass sensor_size=(height, width)")
    return stored


def _open_chunks(path: str | os.PathLike, format: str | None, sensor_size, chunk_size: int):
    path = os.fspath(path)
    fmt = detect_format(path, format)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no event file at {path}")
    chunk_size = checks.integer("chunk_size", chunk_size, min=1)
    size = _file_sensor_size(path, fmt, sensor_size)
    return path, size, _READERS[fmt](path, chunk_size)


def _checked(path: str, chunk: Chunk, size: tuple[int, int], previous_t: float | None) -> EventStream:
    try:
        events = EventStream(*chunk, sensor_size=size)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if previous_t is not None and len(events) and events.t[0] < previous_t:
        raise ValueError(
            f"{path}: event timestamps are not sorted: t={events.t[0]!r} s follows t={previous_t!r} s; "
            f"sort the events by time first"
        )
    return events


def read_events(path: str | os.PathLike, *, sensor_size: Sequence[int] | None = None, format: str | None = None) -> EventStream:
    """Read a whole event file into an `EventStream` (see the module docstring for the formats)."""
    path, size, chunks = _open_chunks(path, format, sensor_size, DEFAULT_CHUNK)
    parts: list[EventStream] = []
    for chunk in chunks:
        parts.append(_checked(path, chunk, size, parts[-1].t[-1] if parts and len(parts[-1]) else None))
    events = EventStream.concatenate(parts) if parts else None
    if events is None or len(events) == 0:
        raise ValueError(f"{path} contains no events")
    return events


def iter_event_windows(
    path: str | os.PathLike,
    window: float,
    *,
    t_start: float | None = None,
    sensor_size: Sequence[int] | None = None,
    format: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> Iterator[EventStream]:
    """Consecutive windows ``[t_start + k * window, t_start + (k + 1) * window)`` of a file, in seconds.

    Memory stays bounded by ``chunk_size`` events plus one window, so recordings larger than memory stream
    through. Windows without events are yielded as empty streams, so window ``k`` always covers the k-th
    interval (frame-aligned processing needs that). ``t_start`` defaults to the first timestamp.
    """
    window = checks.real("window", window, min=0, min_exclusive=True)
    path, size, chunks = _open_chunks(path, format, sensor_size, chunk_size)
    origin = None if t_start is None else checks.real("t_start", t_start)
    pending: EventStream | None = None  # events of the window still open
    k = 0  # index of that window; edges are origin + k * window (no drift from repeated addition)
    for chunk in chunks:
        events = _checked(path, chunk, size, None if pending is None or not len(pending) else float(pending.t[-1]))
        if not len(events):
            continue
        if origin is None:
            origin = float(events.t[0])
        if events.t[0] < origin:
            raise ValueError(f"{path}: events before t_start={origin!r} s (first at {events.t[0]!r} s)")
        buffered = events if pending is None else EventStream.concatenate([pending, events])
        last_t = float(buffered.t[-1])
        closed = k
        while origin + (closed + 1) * window <= last_t:  # a window is complete once a later event is seen
            closed += 1
        # one binary search for all completed windows, so a chunk is sliced, never copied per window
        edges = origin + np.arange(k, closed + 1) * window
        bounds = np.searchsorted(buffered.t, edges, side="left")
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            yield buffered[int(lo) : int(hi)]
        k = closed
        pending = buffered[int(bounds[-1]) :]
    if pending is None:
        raise ValueError(f"{path} contains no events")
    if len(pending):
        yield pending


def write_events(path: str | os.PathLike, events: EventStream, *, format: str | None = None, overwrite: bool = False) -> None:
    """Write events in the format the extension (or ``format``) names; an existing file is kept unless ``overwrite``.

    The file is written under a temporary name beside ``path`` and renamed over it only once complete, so a
    writer that fails (AEDAT4 with negative times, a missing HDF5 plugin, a full disk) leaves ``path`` as it was.
    """
    checked_stream(events)
    overwrite = checks.boolean("overwrite", overwrite)
    path = os.fspath(path)
    fmt = detect_format(path, format)
    if len(events) == 0:
        raise ValueError(f"refusing to write an empty event stream to {path}")
    checks.writable_destination(path, "event file")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    with checks.atomic_output(path) as partial:
        _WRITERS[fmt](os.fspath(partial), events)
