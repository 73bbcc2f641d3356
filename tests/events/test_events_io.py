import builtins
import zipfile

import numpy as np
import pytest

from vmoba.events import EventStream, iter_event_windows, read_events, write_events

FORMATS = ["txt", "npz", "h5", "aedat4"]
MICROSECOND_FORMATS = {"h5", "aedat4"}  # these store integer microseconds


def random_stream(n=3000, seed=0, sensor=(31, 47), microseconds=True):
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(5_000_000, 5_400_000, n))
    t = t_us * 1e-6 if microseconds else np.sort(rng.uniform(5.0, 5.4, n))
    return EventStream(rng.integers(0, sensor[1], n), rng.integers(0, sensor[0], n), t,
                       rng.integers(0, 2, n).astype(np.uint8), sensor)


def _without_module(monkeypatch, missing):
    """Make ``import missing`` fail as it does where the package is not installed."""
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name == missing:
            raise ImportError(f"No module named {missing!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip(tmp_path, ext):
    ev = random_stream()
    path = tmp_path / f"events.{ext}"
    write_events(path, ev)
    back = read_events(path)
    assert back.sensor_size == ev.sensor_size
    for name in ("x", "y", "p"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ev, name))
    np.testing.assert_array_equal(back.t_us, ev.t_us)
    if ext in MICROSECOND_FORMATS:
        np.testing.assert_allclose(back.t, ev.t, rtol=0, atol=1e-9)
    else:  # seconds are stored exactly
        np.testing.assert_array_equal(back.t, ev.t)


@pytest.mark.parametrize("ext", ["txt", "npz"])
def test_round_trip_exact_float_seconds(tmp_path, ext):
    ev = random_stream(microseconds=False)
    write_events(tmp_path / f"e.{ext}", ev)
    assert read_events(tmp_path / f"e.{ext}") == ev


@pytest.mark.parametrize("ext", FORMATS)
def test_streaming_windows_match_slicing(tmp_path, ext):
    ev = random_stream(n=5000, seed=1)
    path = tmp_path / f"events.{ext}"
    write_events(path, ev)
    full = read_events(path)
    window = 0.0137
    windows = list(iter_event_windows(path, window, chunk_size=333))
    t0 = full.t[0]
    assert sum(len(w) for w in windows) == len(full)
    for k, w in enumerate(windows):
        lo, hi = t0 + k * window, t0 + (k + 1) * window
        assert w == full.time_window(lo, hi if k < len(windows) - 1 else np.inf), k
    assert EventStream.concatenate(windows) == full


def test_streaming_keeps_empty_windows_aligned(tmp_path):
    ev = EventStream([0, 1, 2], [0, 0, 0], [0.0, 0.05, 0.31], [1, 1, 0], (1, 3))
    write_events(tmp_path / "e.npz", ev)
    windows = list(iter_event_windows(tmp_path / "e.npz", 0.1, t_start=0.0))
    assert [len(w) for w in windows] == [2, 0, 0, 1]


def test_text_layout_is_e2vid(tmp_path):
    ev = EventStream([3, 1], [0, 2], [0.5, 0.75], [1, -1], (4, 5))
    write_events(tmp_path / "e.txt", ev)
    lines = (tmp_path / "e.txt").read_text().splitlines()
    assert lines[0] == "5 4"  # width height
    assert [line.split() for line in lines[1:]] == [["0.5", "3", "0", "1"], ["0.75", "1", "2", "0"]]


def test_hdf5_layout_is_dsec(tmp_path):
    h5py = pytest.importorskip("h5py")
    ev = random_stream(n=2000)
    write_events(tmp_path / "e.h5", ev)
    with h5py.File(tmp_path / "e.h5") as f:
        assert sorted(f["events"]) == ["p", "t", "x", "y"]
        t_rel = f["events/t"][()]
        offset = int(f["t_offset"][()])
        np.testing.assert_array_equal(t_rel.astype(np.int64) + offset, ev.t_us)
        assert f["events/p"].dtype == np.uint8 and set(np.unique(f["events/p"][()])) <= {0, 1}
        ms_to_idx = f["ms_to_idx"][()]
        for ms in range(0, len(ms_to_idx) - 1, 37):  # the DSEC definition, checked event by event
            i = int(ms_to_idx[ms])
            assert (i == len(t_rel) or t_rel[i] >= 1000 * ms) and (i == 0 or t_rel[i - 1] < 1000 * ms)


def test_dsec_file_without_sensor_size_needs_it(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "dsec.h5", "w") as f:
        for name, values in (("x", [1, 2]), ("y", [0, 3]), ("t", [10, 20]), ("p", [0, 1])):
            f.create_dataset(f"events/{name}", data=np.array(values, np.uint32 if name == "t" else np.uint16))
        f.create_dataset("t_offset", data=np.int64(1_000_000))
    with pytest.raises(ValueError, match="sensor_size"):
        read_events(tmp_path / "dsec.h5")
    ev = read_events(tmp_path / "dsec.h5", sensor_size=(480, 640))
    np.testing.assert_allclose(ev.t, [1.00001, 1.00002])
    assert ev.p.tolist() == [-1, 1]


def test_refuses_to_overwrite(tmp_path):
    ev = random_stream(n=10)
    path = tmp_path / "e.npz"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_events(path, ev)
    assert path.read_bytes() == b"precious"
    write_events(path, ev, overwrite=True)
    assert read_events(path) == ev


def _fails_aedat4_negative_times():
    return EventStream([0], [0], [-1.0], [1], (4, 4)), "aedat4", "non-negative"


def _fails_aedat4_wide_sensor():
    return EventStream([0], [0], [1.0], [1], (4, 40000)), "aedat4", "int16"


@pytest.mark.parametrize("make", [_fails_aedat4_negative_times, _fails_aedat4_wide_sensor])
def test_a_failed_overwrite_keeps_the_old_file(tmp_path, make):
    bad, ext, words = make()
    path = tmp_path / f"e.{ext}"
    good = random_stream(n=20)
    write_events(path, good)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=words):
        write_events(path, bad, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind


def test_a_missing_hdf5_plugin_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "e.h5"
    write_events(path, random_stream(n=20))
    before = path.read_bytes()
    _without_module(monkeypatch, "hdf5plugin")
    with pytest.raises(ImportError, match="hdf5plugin"):
        write_events(path, random_stream(n=30, seed=1), overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_empty_streams_and_files(tmp_path):
    with pytest.raises(ValueError, match="empty event stream"):
        write_events(tmp_path / "e.npz", EventStream([], [], [], [], (2, 2)))
    (tmp_path / "header_only.txt").write_text("4 3\n")
    with pytest.raises(ValueError, match="contains no events"):
        read_events(tmp_path / "header_only.txt")
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_events(tmp_path / "blank.txt")


def test_unsorted_and_outside_sensor_in_files(tmp_path):
    (tmp_path / "unsorted.txt").write_text("4 3\n0.2 0 0 1\n0.1 1 1 0\n")
    with pytest.raises(ValueError, match="unsorted.txt.*not sorted"):
        read_events(tmp_path / "unsorted.txt")
    (tmp_path / "outside.txt").write_text("4 3\n0.1 4 0 1\n")
    with pytest.raises(ValueError, match="outside.txt.*x coordinate outside the sensor"):
        read_events(tmp_path / "outside.txt")
    # unsorted across a chunk boundary of the streaming reader
    with pytest.raises(ValueError, match="not sorted"):
        list(iter_event_windows(tmp_path / "unsorted.txt", 0.05, chunk_size=1))


@pytest.mark.parametrize("name, text, message", [
    ("bad", "4 3\n0.1 0 0 1\n0.2 1 oops 1\n", r"bad.txt, line 3: expected 't x y p'"),
    ("short", "4 3\n0.1 0 0 1\n0.2 1 1\n", r"short.txt, line 3"),
    ("header", "four three\n0.1 0 0 1\n", r"header.txt: the first line must be 'width height'"),
    ("nan", "4 3\n0.1 0 0 1\n\n0.2 1 1 nan\n", r"nan.txt, line 4: expected 't x y p' finite numbers"),
    ("half", "4 3\n0.1 0 0 1\n0.2 1.5 1 1\n", r"half.txt, line 3: column x must hold integers, got 1.5"),
    ("negative", "-4 3\n0.1 0 0 1\n", r"negative.txt: sensor_size must be"),
])
def test_corrupt_text_names_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / f"{name}.txt").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_events(tmp_path / f"{name}.txt")


@pytest.mark.parametrize("ext", ["npz", "h5", "aedat4"])
def test_truncated_binary_files(tmp_path, ext):
    ev = random_stream(n=70000)  # AEDAT4: two packets, so truncation hits the data, not the header
    path = tmp_path / f"e.{ext}"
    write_events(path, ev)
    raw = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ValueError, match=r"cut\.(npz|h5|aedat4).*(corrupt|truncated)"):
        read_events(cut)


@pytest.mark.parametrize("ext", ["npz", "h5", "aedat4"])
def test_garbage_binary_files(tmp_path, ext):
    path = tmp_path / f"junk.{ext}"
    path.write_bytes(b"\x00\x01 this is not an event file" * 10)
    with pytest.raises(ValueError, match="junk"):
        read_events(path)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "partial.npz", x=np.zeros(2), y=np.zeros(2))
    with pytest.raises(ValueError, match=r"lacks the arrays \['t', 'p', 'sensor_size'\]"):
        read_events(tmp_path / "partial.npz")


def test_npz_written_compressed_streams_too(tmp_path):
    ev = random_stream(n=500)
    np.savez_compressed(tmp_path / "c.npz", x=ev.x, y=ev.y, t=ev.t, p=ev.p, sensor_size=np.array(ev.sensor_size))
    assert zipfile.ZipFile(tmp_path / "c.npz").infolist()[0].compress_type == zipfile.ZIP_DEFLATED
    assert EventStream.concatenate(list(iter_event_windows(tmp_path / "c.npz", 0.01, chunk_size=64))) == ev


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="extension '.bin'"):
        write_events(tmp_path / "e.bin", random_stream(n=3))
    with pytest.raises(FileNotFoundError, match="no event file"):
        read_events(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match="format"):
        read_events(tmp_path / "nope.npz", format="mp4")


def test_aedat_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    write_events(tmp_path / "e.aedat4", random_stream(n=10))
    _without_module(monkeypatch, "aedat")
    with pytest.raises(ImportError, match="pip install aedat"):
        read_events(tmp_path / "e.aedat4")


def test_aedat4_file_reads_with_the_reference_decoder(tmp_path):
    aedat = pytest.importorskip("aedat")
    ev = random_stream(n=100)
    write_events(tmp_path / "e.aedat4", ev)
    decoder = aedat.Decoder(str(tmp_path / "e.aedat4"))
    assert decoder.id_to_stream() == {0: {"type": "events", "width": 47, "height": 31}}
    packet = next(iter(decoder))["events"]
    np.testing.assert_array_equal(packet["t"], ev.t_us)
    np.testing.assert_array_equal(packet["on"], ev.p > 0)
