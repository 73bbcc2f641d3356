"""Fuzzing `read_events` in every format: truncated, corrupted, random and lying files.

Each format starts from a valid file written by `write_events`, then is cut at many places, has bytes flipped,
is replaced by random bytes (with and without its magic), or has its header claim billions of events that
are not there. Every case must end, within a time bound, in either a valid `EventStream` or a
``ValueError`` / ``TypeError`` whose message names the file; never a crash of the interpreter, a hang, an
unrelated exception or a memory allocation sized by the header's claim.

The reads run in one child process under an address-space limit (``RLIMIT_AS``), so a reader that believes a
header and allocates for it fails there with MemoryError (reported) instead of taking the machine down, and
a reader that crashes the interpreter (a Rust panic turned abort, a segfault) shows as a dead child. Every
case is seeded: the same files are generated on every run.
"""

import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from vmoba.events import EventStream, write_events
from vmoba.events.aedat4 import MAGIC

SEED = 1234
CASE_SECONDS = 5.0  # per read; real reads here take milliseconds
MEMORY_LIMIT = 3 << 30  # address space of the child: the interpreter, numpy, torch, h5py and room to read
CHILD = r"""
import json, os, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
from vmoba.events import read_events
for name in sorted(os.listdir(sys.argv[1])):
    path = os.path.join(sys.argv[1], name)
    start = time.perf_counter()
    try:
        ev = read_events(path)
        outcome = {"result": "events", "count": len(ev)}
    except Exception as error:
        outcome = {"result": type(error).__name__, "message": str(error)[:300]}
    outcome.update(name=name, seconds=time.perf_counter() - start)
    print(json.dumps(outcome), flush=True)
"""


def _stream(n, seed):
    rng = np.random.default_rng(seed)
    return EventStream(rng.integers(0, 64, n), rng.integers(0, 48, n),
                       np.sort(rng.integers(1_000_000, 3_000_000, n)) * 1e-6, rng.integers(0, 2, n), (48, 64))


def _mutations(raw: bytes, rng: np.random.Generator) -> dict[str, bytes]:
    """Cuts, flips and random bytes of one valid file."""
    cases = {}
    for i, fraction in enumerate([0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]):
        cases[f"cut{i:02d}"] = raw[: int(len(raw) * fraction)]
    for i in range(24):
        data = bytearray(raw)
        flips = int(rng.choice([1, 4, 32, 256]))
        # half the flips land in the first 512 bytes, where the headers and the format's bookkeeping live
        limit = min(len(data), 512) if i % 2 else len(data)
        for position in rng.integers(0, limit, flips):
            data[position] = int(rng.integers(0, 256))
        cases[f"flip{i:02d}"] = bytes(data)
    for i, size in enumerate([1, 16, 300, 5000, 100_000]):
        noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        cases[f"noise{i:02d}"] = noise
        cases[f"magic-noise{i:02d}"] = raw[:32] + noise
    return cases


def _npy_header(shape, dtype="<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _lying_npz(folder, ev) -> None:
    def npz(name, members):
        with zipfile.ZipFile(folder / name, "w") as z:
            for key, data in members.items():
                z.writestr(f"{key}.npy", data)

    arrays = {"x": ev.x, "y": ev.y, "t": ev.t, "p": ev.p}
    honest = {k: _npy_header((len(v),), v.dtype.str) + v.tobytes() for k, v in arrays.items()}
    size = _npy_header((2,), "<i8") + np.array(ev.sensor_size, dtype=np.int64).tobytes()
    npz("claim-billions-of-events.npz", {**{k: _npy_header((10**10,), arrays[k].dtype.str) + arrays[k].tobytes()
                                            for k in arrays}, "sensor_size": size})
    npz("claim-huge-sensor-array.npz", {**honest, "sensor_size": _npy_header((10**11,), "<i8") + b"\0" * 16})
    npz("claim-huge-itemsize.npz", {**honest, "t": _npy_header((len(ev),), "|V1000000000") + b"\0" * 64,
                                    "sensor_size": size})
    npz("object-arrays.npz", {**honest, "x": _npy_header((len(ev),), "|O"), "sensor_size": size})


def _lying_h5(folder, ev) -> None:
    h5py = pytest.importorskip("h5py")  # an optional dependency of vmoba[events]
    with h5py.File(folder / "claim-billions-unwritten.h5", "w") as f:
        for key in "xytp":  # chunked datasets of 2**40 events whose chunks were never written
            f.create_dataset(f"events/{key}", shape=(2**40,), dtype="u4", chunks=(4096,))
        f["events"].attrs["height"], f["events"].attrs["width"] = 48, 64
    with h5py.File(folder / "claim-huge-offset.h5", "w") as f:
        for key, values in (("x", ev.x), ("y", ev.y), ("t", ev.t_us - ev.t_us[0]), ("p", ev.p > 0)):
            f.create_dataset(f"events/{key}", data=values)
        f["events"].attrs["height"], f["events"].attrs["width"] = 48, 64
        f.create_dataset("t_offset", shape=(2**40,), dtype="i8", chunks=(4096,))
    with h5py.File(folder / "attrs-are-arrays.h5", "w") as f:
        for key, values in (("x", ev.x), ("y", ev.y), ("t", ev.t_us), ("p", ev.p > 0)):
            f.create_dataset(f"events/{key}", data=values)
        f["events"].attrs["height"], f["events"].attrs["width"] = np.arange(5), "wide"


def _lying_aedat4(folder, raw: bytes) -> None:
    header_size = struct.unpack_from("<I", raw, len(MAGIC))[0]
    first_packet = len(MAGIC) + 4 + header_size
    stream_id, packet_size = struct.unpack_from("<iI", raw, first_packet)
    for name, size in (("claim-4gb-packet", 0xFFFFFFF0), ("claim-1gb-packet", 1 << 30), ("claim-bigger", packet_size + 9)):
        data = bytearray(raw)
        struct.pack_into("<I", data, first_packet + 4, size)
        (folder / f"{name}.aedat4").write_bytes(bytes(data))
    data = bytearray(raw)
    struct.pack_into("<I", data, len(MAGIC), 0xFFFFFFF0)  # the IO header claims 4 GB
    (folder / "claim-4gb-header.aedat4").write_bytes(bytes(data))
    # the event vector inside the first packet claims 2**31 events
    data = bytearray(raw)
    struct.pack_into("<I", data, first_packet + 8 + 4 + 28, 2**31 - 1)
    (folder / "claim-vector-length.aedat4").write_bytes(bytes(data))


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    valid = tmp_path_factory.mktemp("valid")
    for ext, n in (("txt", 400), ("npz", 3000), ("h5", 3000), ("aedat4", 70_000)):
        ev = _stream(n, SEED)
        write_events(valid / f"e.{ext}", ev)
        raw = (valid / f"e.{ext}").read_bytes()
        for name, data in _mutations(raw, rng).items():
            (folder / f"{name}.{ext}").write_bytes(data)
    ev = _stream(3000, SEED)
    _lying_npz(folder, ev)
    _lying_h5(folder, ev)
    _lying_aedat4(folder, (valid / "e.aedat4").read_bytes())
    (folder / "claim-huge-sensor.txt").write_text("1000000000 1000000000\n0.1 5 5 1\n")
    (folder / "one-endless-line.txt").write_text("64 48\n" + "0.1 " * 250_000)
    return folder


@pytest.mark.slow  # a child interpreter imports torch, then reads 194 files
def test_no_file_crashes_hangs_or_allocates_for_its_claims(fuzz_folder):
    files = sorted(os.listdir(fuzz_folder))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, str(fuzz_folder), str(MEMORY_LIMIT)], capture_output=True,
                           text=True, env=env, timeout=120 + CASE_SECONDS * len(files))
    outcomes = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    done = {o["name"] for o in outcomes}
    assert child.returncode == 0, (f"the reader crashed the interpreter (exit {child.returncode}) on the file after "
                                   f"{sorted(done)[-1:]}: {child.stderr[-2000:]}")
    assert done == set(files)
    problems = []
    for o in outcomes:
        if o["seconds"] > CASE_SECONDS:
            problems.append(f"{o['name']}: {o['seconds']:.1f} s")
        if o["result"] == "events":
            continue
        if o["result"] not in ("ValueError", "TypeError"):
            problems.append(f"{o['name']}: {o['result']}: {o['message']}")
        elif o["name"] not in o["message"]:
            problems.append(f"{o['name']}: the message does not name the file: {o['message']}")
    assert not problems, "\n".join(problems)
    # the fuzzing is not vacuous: most damaged files are refused, and some damage goes unnoticed by design
    # (a flipped bit in a timestamp still makes a valid stream)
    refused = sum(o["result"] != "events" for o in outcomes)
    assert refused > len(outcomes) // 2
