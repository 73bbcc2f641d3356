"""AEDAT4 (iniVation DV) files: reading through the optional ``aedat`` package, writing uncompressed files.

The writer emits the smallest file the format allows: the magic line, a size-prefixed ``IOHE`` flatbuffer
whose XML description declares one ``EVTS`` stream, then one size-prefixed ``EVTS`` flatbuffer per packet.
Flatbuffers are laid out by hand (the schemas involved are two tables and one 16-byte struct), which saves a
dependency and keeps every offset visible. Compression is ``NONE``: DV and ``aedat`` both read it.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import numpy as np

MAGIC = b"#!AER-DAT4.0\r\n"
_EVENT_DTYPE = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("_pad", "V3")])
PACKET_EVENTS = 65536  # events per packet, as DV's recorder does by default


def _description(height: int, width: int) -> bytes:
    return (
        '<dv version="2.0"><node name="outInfo" path="/mainloop/output_file/outInfo/">'
        '<node name="0" path="/mainloop/output_file/outInfo/0/">'
        '<attr key="compression" type="string">NONE</attr>'
        '<attr key="originalModuleName" type="string">vmoba</attr>'
        '<attr key="originalOutputName" type="string">events</attr>'
        '<attr key="typeDescription" type="string">Array of events (polarity ON/OFF).</attr>'
        '<attr key="typeIdentifier" type="string">EVTS</attr>'
        '<node name="info" path="/mainloop/output_file/outInfo/0/info/">'
        f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
        "</node></node></node></dv>"
    ).encode()


def _io_header(description: bytes) -> bytes:
    # root offset | "IOHE" | vtable (10 bytes) + 2 pad | table at 20: soffset, compression, pad, data-table
    # position (int64 at 32, 8-aligned), description offset at 40 | string at 44.
    vtable = struct.pack("<HHHHH", 10, 24, 4, 12, 20)
    table = struct.pack("<iii", 20 - 8, 0, 0) + struct.pack("<q", -1) + struct.pack("<I", 44 - 40)
    string = struct.pack("<I", len(description)) + description + b"\0"
    body = struct.pack("<I", 20) + b"IOHE" + vtable + b"\0\0" + table + string
    return body + b"\0" * (-len(body) % 4)


def _event_packet(t_us: np.ndarray, x: np.ndarray, y: np.ndarray, on: np.ndarray) -> bytes:
    # Size-prefixed buffer: size | root offset (-> table at 20) | "EVTS" | vtable at 12 | 2 pad |
    # table at 20: soffset, vector offset at 24 | vector length at 28 | 16-byte structs from 32 (8-aligned).
    elements = np.zeros(len(t_us), dtype=_EVENT_DTYPE)
    elements["t"], elements["x"], elements["y"], elements["on"] = t_us, x, y, on
    head = struct.pack("<I", 20 - 4) + b"EVTS" + struct.pack("<HHH", 6, 8, 4) + b"\0\0"
    head += struct.pack("<iII", 20 - 12, 28 - 24, len(t_us))
    body = head + elements.tobytes()
    return struct.pack("<I", len(body)) + body


def write_aedat4(file, height: int, width: int, t_us: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> None:
    if int(t_us.min()) < 0:
        raise ValueError(f"events: AEDAT4 stores non-negative int64 microseconds, got t={int(t_us.min())} us; "
                         f"shift the timestamps or write another format")
    if max(height, width) > 32767:
        raise ValueError(f"events: AEDAT4 stores int16 coordinates, so the sensor can be at most 32767 pixels a side, "
                         f"got sensor_size={(height, width)}; write another format")
    header = _io_header(_description(height, width))
    file.write(MAGIC + struct.pack("<I", len(header)) + header)
    for start in range(0, len(t_us), PACKET_EVENTS):
        part = slice(start, start + PACKET_EVENTS)
        packet = _event_packet(t_us[part], x[part], y[part], p[part] > 0)
        file.write(struct.pack("<II", 0, len(packet)) + packet)


# Exceptions of the Rust decoder: it raises RuntimeError/OSError, and on some damaged input a pyo3
# PanicException, which derives from BaseException; anything but an interrupt is a damaged file.
_NOT_DAMAGE = (KeyboardInterrupt, SystemExit, GeneratorExit)


def check_layout(path: str) -> None:
    """Walk the file's size fields before any decoder sees them: the magic, the IO header's size, then each
    packet's ``(stream id, size)`` prefix, each size within the bytes that remain. The decoder allocates what
    these fields claim (a 4 GB claim aborts the interpreter), so a file whose claims exceed its own length is
    refused here. Reads 8 bytes per packet."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path} is not an AEDAT4 file (it does not start with {MAGIC!r})")
        prefix = file.read(4)
        if len(prefix) < 4:
            raise ValueError(f"the AEDAT4 file {path} is truncated inside its header")
        header = struct.unpack("<I", prefix)[0]
        position = len(MAGIC) + 4 + header
        if position > size:
            raise ValueError(f"the AEDAT4 file {path} is corrupt or truncated: its header claims {header} bytes, "
                             f"but the file has {size - len(MAGIC) - 4} after the magic")
        while position < size:
            file.seek(position)
            prefix = file.read(8)
            if len(prefix) < 8:
                raise ValueError(f"the AEDAT4 file {path} is truncated: {size - position} stray bytes at byte {position}")
            _, length = struct.unpack("<iI", prefix)
            if position + 8 + length > size:
                raise ValueError(f"the AEDAT4 file {path} is corrupt or truncated: the packet at byte {position} claims "
                                 f"{length} bytes, but only {size - position - 8} remain")
            position += 8 + length


def _decoder(path: str):
    try:
        import aedat
    except ImportError:
        raise ImportError(
            f"reading the AEDAT4 file {path} needs the optional 'aedat' package: pip install aedat"
        ) from None
    check_layout(path)
    try:
        return aedat.Decoder(path)
    except _NOT_DAMAGE:
        raise
    except BaseException as error:
        raise ValueError(f"{path} is not a readable AEDAT4 file: {error}") from None


def aedat4_sensor_size(path: str) -> tuple[int, int]:
    streams = _decoder(path).id_to_stream()
    for info in streams.values():
        if info.get("type") == "events":
            return int(info["height"]), int(info["width"])
    raise ValueError(f"the AEDAT4 file {path} has no event stream (streams: {streams})")


def iter_aedat4_chunks(path: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(x, y, t_us, on)`` arrays, one per event packet of the first event stream."""
    decoder = _decoder(path)
    stream_ids = [i for i, info in decoder.id_to_stream().items() if info.get("type") == "events"]
    if not stream_ids:
        raise ValueError(f"the AEDAT4 file {path} has no event stream")
    packets = iter(decoder)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except _NOT_DAMAGE:
            raise
        except BaseException as error:
            raise ValueError(f"the AEDAT4 file {path} is corrupt or truncated: {error}") from None
        if packet["stream_id"] == stream_ids[0] and "events" in packet:
            ev = packet["events"]
            yield ev["x"], ev["y"], ev["t"].astype(np.int64), ev["on"]
