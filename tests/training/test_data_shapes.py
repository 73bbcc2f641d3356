"""The synthetic shapes dataset (`vmoba data shapes`) and the detector that reads clips back."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from vmoba.pipelines.default import VOCABULARY
from vmoba.training.shapes import (BACKGROUNDS, COLORS, DIRECTIONS, RADIUS, SHAPES, clip_spec, detect_clip,
                                   prompt_grid, write_shapes_dataset)
from vmoba.video import read_video, write_video


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "vmoba.cli", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_writes_h264_clips_with_plain_captions_and_refuses_non_empty_folders(tmp_path):
    res = _cli("data", "shapes", "--out", "shapes", "--count", "6", "--frames", "5", "--size", "32", "--seed", "2",
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "shapes/captions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        words = row["caption"].split()
        assert words[:2] == ["a", row["color"]] and words[2] == row["shape"] and words[4] == row["direction"]
        assert set(words) <= set(VOCABULARY), row["caption"]
        assert read_video(tmp_path / "shapes" / row["file"]).shape == (5, 32, 32, 3)

    mine = tmp_path / "shapes/notes.txt"
    mine.write_text("keep me")
    again = _cli("data", "shapes", "--out", "shapes", "--count", "3", cwd=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr and "--force" in again.stderr
    assert len((tmp_path / "shapes/captions.jsonl").read_text().splitlines()) == 6

    forced = _cli("data", "shapes", "--out", "shapes", "--count", "3", "--frames", "5", "--size", "32", "--force",
                  cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in (tmp_path / "shapes/videos").iterdir()) == [f"{i:06d}.mp4" for i in range(3)]
    assert mine.read_text() == "keep me"  # --force replaces the dataset's own files only

    large = _cli("data", "shapes", "--out", "large", "--count", "4", "--frames", "5", "--size", "32", "--radius",
                 "0.2", "0.25", cwd=tmp_path)
    assert large.returncode == 0, large.stderr
    radii = [json.loads(line)["radius"] for line in (tmp_path / "large/captions.jsonl").read_text().splitlines()]
    assert len(radii) == 4 and all(0.2 * 32 <= r <= 0.25 * 32 for r in radii)

    for bad, message in ((["--frames", "6"], "4k\\+1"), (["--size", "40"], "multiple of 16"),
                         (["--radius", "0.3", "0.1"], "0 < low <= high")):
        res = _cli("data", "shapes", "--out", "other", *bad, cwd=tmp_path)
        assert res.returncode == 2 and __import__("re").search(message, res.stderr), res.stderr


def test_specs_are_balanced_seeded_and_stay_inside_the_frame():
    combos = [(s.color, s.shape, s.direction, s.background) for s in (clip_spec(i, seed=5) for i in range(96))]
    assert Counter(combos) == Counter({(c, s, d, b): 1 for c in COLORS for s in SHAPES for d in DIRECTIONS
                                       for b in BACKGROUNDS})
    assert clip_spec(17, seed=5) == clip_spec(17, seed=5) and clip_spec(17, seed=5) != clip_spec(17, seed=6)
    for i in range(200):
        s = clip_spec(i, frames=17, size=64, seed=1)
        dx, dy = DIRECTIONS[s.direction]
        for f in (0, 16):
            x, y = s.start[0] + dx * s.speed * f, s.start[1] + dy * s.speed * f
            assert 1.2 * s.radius < x < 64 - 1.2 * s.radius and 1.2 * s.radius < y < 64 - 1.2 * s.radius


@pytest.mark.parametrize("size", [32, 64])
def test_larger_shapes_keep_their_size_range_and_their_whole_path_inside_the_frame(size):
    for radius in ((0.17, 0.23), (0.3, 0.3)):
        for i in range(150):
            s = clip_spec(i, frames=17, size=size, seed=2, radius=radius)
            assert radius[0] * size <= s.radius <= radius[1] * size
            dx, dy = DIRECTIONS[s.direction]
            assert s.speed > 0
            for f in (0, 16):
                x, y = s.start[0] + dx * s.speed * f, s.start[1] + dy * s.speed * f
                assert 1.2 * s.radius < x < size - 1.2 * s.radius and 1.2 * s.radius < y < size - 1.2 * s.radius
    # the default range is what a dataset without the option gets
    assert [clip_spec(i, seed=3) for i in range(40)] == [clip_spec(i, seed=3, radius=RADIUS) for i in range(40)]


def test_detector_reads_ground_truth_clips_through_h264(tmp_path):
    data = write_shapes_dataset(tmp_path / "d", count=48, frames=17, size=64, seed=11)
    rows = [json.loads(line) for line in (data / "captions.jsonl").read_text().splitlines()]
    found = [detect_clip(read_video(data / r["file"])) for r in rows]
    assert [f.color for f in found] == [r["color"] for r in rows]
    assert [f.direction for f in found] == [r["direction"] for r in rows]
    assert sum(f.shape == r["shape"] for f, r in zip(found, rows)) >= 0.9 * len(rows)


def test_detector_on_clips_drawn_independently(tmp_path):
    # plain numpy rectangles, not the dataset renderer: a yellow box moving down on black, a blue one moving
    # left on white; and a clip with nothing in it
    frames = np.zeros((9, 32, 32, 3), np.uint8)
    light = np.full((9, 32, 32, 3), 230, np.uint8)
    for f in range(9):
        frames[f, 4 + 2 * f : 10 + 2 * f, 12:18] = (240, 210, 20)
        light[f, 12:18, 24 - 2 * f : 30 - 2 * f] = (30, 60, 220)
    clip = read_video(write_video(tmp_path / "a.mp4", frames))
    got = detect_clip(clip)
    assert (got.color, got.direction, got.shape) == ("yellow", "down", "square")
    assert got.velocity[1] == pytest.approx(2.0, abs=0.2) and abs(got.velocity[0]) < 0.2
    got = detect_clip(light)
    assert (got.color, got.direction) == ("blue", "left")
    empty = detect_clip(np.full((9, 32, 32, 3), 128, np.uint8))
    assert empty.color is None and empty.direction is None


def test_prompt_grid_covers_every_color_shape_and_direction():
    grid = prompt_grid()
    assert len(grid) == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    assert {"prompt": "a red circle moves right", "color": "red", "shape": "circle", "direction": "right"} in grid
    assert all(set(g["prompt"].split()) <= set(VOCABULARY) for g in grid)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_force_never_replaces_a_users_own_dataset(tmp_path):
    own = tmp_path / "mine"
    (own / "videos").mkdir(parents=True)
    (own / "videos/000000.mp4").write_bytes(b"my holiday video")
    (own / "videos/holiday.mp4").write_bytes(b"another one")
    (own / "captions.jsonl").write_text('{"file": "videos/holiday.mp4", "caption": "a beach"}\n')
    before = _tree(own)
    with pytest.raises(FileExistsError, match=r"only replaces files that 'vmoba data shapes' wrote.*2 it did not "
                                              r"write \(captions.jsonl, videos/000000.mp4\)"):
        write_shapes_dataset(own, count=2, frames=5, size=32, force=True)
    assert _tree(own) == before
    res = _cli("data", "shapes", "--out", str(own), "--count", "2", "--frames", "5", "--size", "32", "--force",
               cwd=tmp_path)
    assert res.returncode == 2 and "did not write" in res.stderr, res.stderr
    assert _tree(own) == before


def test_force_replaces_its_own_files_but_not_ones_changed_since(tmp_path):
    out = tmp_path / "d"
    write_shapes_dataset(out, count=3, frames=5, size=32, seed=1)
    first = _tree(out)
    # unchanged own files are replaced, extra own clips of a larger earlier run removed, other files kept
    (out / "notes.txt").write_text("keep me")
    write_shapes_dataset(out, count=2, frames=5, size=32, seed=1, force=True)
    after = _tree(out)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["000000.mp4", "000001.mp4"]
    assert after["videos/000000.mp4"] == first["videos/000000.mp4"] and after["notes.txt"] == b"keep me"
    # a clip the user edited afterwards is theirs now
    (out / "videos/000001.mp4").write_bytes(b"edited by hand")
    edited = _tree(out)
    with pytest.raises(FileExistsError, match=r"1 changed since it wrote them \(videos/000001.mp4\)"):
        write_shapes_dataset(out, count=2, frames=5, size=32, seed=2, force=True)
    assert _tree(out) == edited


def test_a_failed_clip_leaves_the_previous_files_and_stays_replaceable(tmp_path, monkeypatch):
    import vmoba.training.shapes as shapes

    out = tmp_path / "d"
    write_shapes_dataset(out, count=2, frames=5, size=32)
    before = _tree(out)
    real = shapes.write_video
    calls = []

    def fail_second(path, frames, **kwargs):
        calls.append(path)
        real(path, frames, **kwargs)
        if len(calls) == 2:
            raise OSError("No space left on device")

    monkeypatch.setattr(shapes, "write_video", fail_second)
    with pytest.raises(OSError, match="No space"):
        write_shapes_dataset(out, count=2, frames=5, size=32, seed=9, force=True)
    assert _tree(out)["videos/000001.mp4"] == before["videos/000001.mp4"]
    assert not [p for p in out.rglob("*partial*")]
    monkeypatch.undo()
    write_shapes_dataset(out, count=2, frames=5, size=32, seed=9, force=True)  # still all its own files


def test_arguments_are_checked_before_anything_is_written(tmp_path):
    for kwargs, error, words in (({"count": 0}, ValueError, "count must be >= 1"),
                                 ({"count": 2.5}, TypeError, "count must be an integer"),
                                 ({"fps": 0}, ValueError, "fps must be >= 1"),
                                 ({"force": "yes"}, TypeError, "force must be True or False"),
                                 ({"frames": 6}, ValueError, "4k\\+1"),
                                 ({"radius": (0.2, 0.1)}, ValueError, "0 < low <= high <= 0.3"),
                                 ({"radius": (0.1, 0.35)}, ValueError, "0 < low <= high <= 0.3"),
                                 ({"radius": 0.2}, ValueError, "radius must be two fractions")):
        with pytest.raises(error, match=words):
            write_shapes_dataset(tmp_path / "d", **{"count": 1, "frames": 5, "size": 32, **kwargs})
        assert not (tmp_path / "d").exists()
    write_shapes_dataset(tmp_path / "d", count=np.int64(1), frames=np.int32(5), size=32)
    assert len((tmp_path / "d/captions.jsonl").read_text().splitlines()) == 1
