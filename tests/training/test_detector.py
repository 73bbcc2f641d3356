"""The shape detector (vmoba.training.detector) against what was drawn: closed-form geometry, the dataset
renderer's own specs, and shapes drawn here with plain numpy (rotated, blurred, stretched)."""

import dataclasses
import math

import numpy as np
import pytest

from vmoba.training.detector import (SQUARE_FOURFOLD, TRIANGLE_THREEFOLD, Detection, detect_clip, measure_frame,
                                     palette_color)
from vmoba.training.shapes import COLORS, DIRECTIONS, SHAPES, clip_spec, render_clip
from vmoba.training.shapes import detect_clip as detect_clip_from_shapes
from vmoba.video import read_video, write_video

SUPERSAMPLE = 8


def _polygon(corners):
    """Inside test of a convex polygon given counter-clockwise in image coordinates (y down)."""
    corners = np.asarray(corners, dtype=np.float64)

    def inside(x, y):
        ok = np.ones_like(x, dtype=bool)
        for (x0, y0), (x1, y1) in zip(corners, np.roll(corners, -1, axis=0)):
            ok &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) <= 0
        return ok

    return inside


def _regular(n, cx, cy, circumradius, angle):
    """Corners of a regular n-gon, the first at ``angle`` (radians, 0 = right, -pi/2 = up)."""
    a = angle - 2 * np.pi * np.arange(n) / n
    return _polygon(np.stack([cx + circumradius * np.cos(a), cy + circumradius * np.sin(a)], axis=1))


def _coverage(inside, size):
    sub = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(sub, sub)
    return inside(x, y).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def _frame(alpha, color=(220, 35, 35), background=30):
    out = background * (1 - alpha[..., None]) + np.asarray(color, dtype=np.float64) * alpha[..., None]
    return np.round(out).astype(np.uint8)


def _through_h264(tmp_path, frames, name="clip.mp4"):
    return read_video(write_video(tmp_path / name, frames))


def _fine_threefold_of_equilateral_triangle():
    n = 1500
    s = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = np.meshgrid(s, s)
    inside = _regular(3, 0.0, 0.0, 0.9, -np.pi / 2)(x, y).astype(np.float64)
    cx, cy = (inside * x).sum() / inside.sum(), (inside * y).sum() / inside.sum()
    z = (x - cx) + 1j * (y - cy)
    return abs((inside * z**3).sum()) / (inside * np.abs(z) ** 3).sum()


def test_measures_of_large_ideal_shapes_match_their_closed_forms():
    size = 160
    disc = measure_frame(_frame(_coverage(lambda x, y: (x - 80) ** 2 + (y - 80) ** 2 <= 50**2, size)))
    square = measure_frame(_frame(_coverage(lambda x, y: (abs(x - 80) <= 45) & (abs(y - 80) <= 45), size)))
    triangle = measure_frame(_frame(_coverage(_regular(3, 80, 85, 60, -np.pi / 2), size)))

    assert disc.area == pytest.approx(math.pi * 50**2, rel=2e-3)
    assert square.area == pytest.approx(90**2, rel=2e-3)
    assert triangle.area == pytest.approx(3 * math.sqrt(3) / 4 * 60**2, rel=2e-3)
    assert disc.compactness == pytest.approx(1.0, abs=5e-3)
    assert square.compactness == pytest.approx(3 / math.pi, abs=5e-3)
    assert triangle.compactness == pytest.approx(9 / (2 * math.pi * math.sqrt(3)), abs=5e-3)
    assert SQUARE_FOURFOLD == pytest.approx(3 / 7)
    assert TRIANGLE_THREEFOLD == pytest.approx(_fine_threefold_of_equilateral_triangle(), abs=2e-3)
    assert square.fourfold == pytest.approx(3 / 7, abs=5e-3) and square.threefold < 5e-3
    assert triangle.threefold == pytest.approx(TRIANGLE_THREEFOLD, abs=5e-3) and triangle.fourfold < 5e-3
    assert max(disc.elongation, disc.threefold, disc.fourfold) < 5e-3
    assert square.box_fill == pytest.approx(1.0, abs=0.03) and disc.box_fill == pytest.approx(math.pi / 4, abs=0.03)
    assert (disc.shape, square.shape, triangle.shape) == ("circle", "square", "triangle")
    assert disc.centroid == pytest.approx((79.5, 79.5), abs=0.05)  # pixel centres sit at integer coordinates


def _spec_clip(spec, frames=17, size=64):
    """The renderer's clip of ``spec`` with its path re-placed to stay whole inside the frame."""
    travel = spec.speed * (frames - 1)
    dx, dy = DIRECTIONS[spec.direction]
    margin = 1.2 * spec.radius + 2
    x = size / 2 - dx * travel / 2 if dx else float(np.clip(spec.start[0], margin, size - margin))
    y = size / 2 - dy * travel / 2 if dy else float(np.clip(spec.start[1], margin, size - margin))
    spec = dataclasses.replace(spec, start=(x, y))
    return spec, render_clip(spec, frames=frames, size=size)


def _ideal_area(spec):
    r = spec.radius
    # the renderer's sizes: square side 1.8 r, equilateral triangle of circumradius 1.2 r
    return {"circle": math.pi * r * r, "square": (1.8 * r) ** 2,
            "triangle": 3 * math.sqrt(3) / 4 * (1.2 * r) ** 2}[spec.shape]


@pytest.mark.slow
def test_rendered_clips_of_every_color_shape_and_direction_are_read_right_through_h264(tmp_path):
    rows = []
    index = 0
    for color in COLORS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                for repeat in range(2):
                    spec = clip_spec(index, seed=23)
                    index += 1
                    # the spec's own jitter of its colour, carried over to this colour
                    rgb = tuple(int(np.clip(c + s - p, 0, 255))
                                for c, s, p in zip(COLORS[color], spec.rgb, COLORS[spec.color]))
                    spec = dataclasses.replace(spec, color=color, shape=shape, direction=direction, rgb=rgb)
                    spec, frames = _spec_clip(spec)
                    found = detect_clip(_through_h264(tmp_path, frames, f"{index}.mp4"))
                    rows.append((spec, found))
    wrong = [(s.color, s.shape, s.direction, f.color, f.shape, f.direction) for s, f in rows
             if (f.color, f.shape, f.direction) != (s.color, s.shape, s.direction)]
    assert len(wrong) <= 0.02 * len(rows), wrong
    # every frame: the spec's colour, and the area of the ideal shape (H.264 blurs the edge a little)
    for spec, found in rows:
        assert found.colors == [spec.color] * 17, (spec, found.colors)
        assert np.allclose(found.areas, _ideal_area(spec), rtol=0.06), (spec, found.areas, _ideal_area(spec))
        along = 0 if spec.direction in ("left", "right") else 1
        assert abs(found.velocity[along]) == pytest.approx(spec.speed, rel=0.05)


def test_per_frame_colour_and_area_follow_a_change_in_the_middle_of_a_clip(tmp_path):
    first = dataclasses.replace(clip_spec(3, seed=1), color="red", shape="circle", direction="right",
                                rgb=COLORS["red"], background="dark", background_level=30, radius=6.5)
    first, frames_a = _spec_clip(first)
    second = dataclasses.replace(first, color="blue", rgb=COLORS["blue"], radius=9.5)
    frames_b = render_clip(second, frames=17, size=64)
    clip = np.concatenate([frames_a[:9], frames_b[9:]])
    found = detect_clip(_through_h264(tmp_path, clip))
    assert found.colors == ["red"] * 9 + ["blue"] * 8
    expected = np.array([math.pi * 6.5**2] * 9 + [math.pi * 9.5**2] * 8)
    assert np.allclose(found.areas, expected, rtol=0.06), (found.areas, expected)
    assert found.direction == "right" and found.shape == "circle"
    assert found.color == "red"  # red in 9 of the 17 frames: more than half


def test_shapes_drawn_independently_any_rotation_and_a_blob_is_none_of_them(tmp_path):
    size, count = 64, 9

    def clip(make, color, background=30):
        return np.stack([_frame(_coverage(make(20 + 2.5 * f), size), color, background) for f in range(count)])

    cases = {
        "diamond": (lambda x: _regular(4, x, 32, 11, 0.0), "square"),       # a square on its corner
        "tilted": (lambda x: _regular(4, x, 32, 11, 0.3), "square"),
        "down": (lambda x: _regular(3, x, 30, 11, np.pi / 2), "triangle"),  # pointing down
        "sideways": (lambda x: _regular(3, x, 32, 11, 0.0), "triangle"),
        "disc": (lambda x: (lambda px, py: (px - x) ** 2 + (py - 32) ** 2 <= 8**2), "circle"),
        "ellipse": (lambda x: (lambda px, py: ((px - x) / 11) ** 2 + ((py - 32) / 5.5) ** 2 <= 1), None),
    }
    for name, (make, expected) in cases.items():
        found = detect_clip(_through_h264(tmp_path, clip(make, (40, 75, 230), 225), f"{name}.mp4"))
        assert (found.shape, found.color, found.direction) == (expected, "blue", "right"), (name, found.shapes)

    # a blurred disc: round, never read as a square or a triangle
    def blurred(x):
        alpha = _coverage(lambda px, py: (px - x) ** 2 + (py - 32) ** 2 <= 7**2, size)
        kernel = np.exp(-0.5 * (np.arange(-8, 9) / 2.5) ** 2)
        kernel /= kernel.sum()
        for axis in (0, 1):
            alpha = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, alpha)
        return _frame(alpha / alpha.max(), (35, 175, 55), 200)

    found = detect_clip(_through_h264(tmp_path, np.stack([blurred(20 + 2.5 * f) for f in range(count)]), "blob.mp4"))
    assert found.shape in ("circle", None) and not {"square", "triangle"} & set(found.shapes), found.shapes
    assert found.color == "green"


def test_an_empty_clip_and_a_shape_leaving_the_frame():
    empty = detect_clip(np.full((9, 32, 32, 3), 128, np.uint8))
    assert (empty.color, empty.shape, empty.direction, empty.velocity) == (None, None, None, None)
    assert empty.areas == [0.0] * 9 and empty.colors == [None] * 9

    # a square cut by the left edge is no square in that frame
    frames = np.stack([_frame(_coverage(lambda x, y, c=c: (abs(x - c) <= 7) & (abs(y - 32) <= 7), 64))
                       for c in (40, 30, 20, 10, 3)])
    found = detect_clip(frames)
    assert found.shapes == ["square"] * 4 + [None] and found.shape == "square" and found.shape_share == 4 / 5


def test_hue_classes_and_the_old_import_path():
    assert detect_clip_from_shapes is detect_clip
    from vmoba.training.shapes import Detection as DetectionFromShapes

    assert DetectionFromShapes is Detection
    for name, rgb in COLORS.items():
        assert palette_color(float(np.degrees(np.arctan2(math.sqrt(3) * (rgb[1] - rgb[2]),
                                                         2 * rgb[0] - rgb[1] - rgb[2]))) % 360) == name
    assert palette_color(280.0) is None  # purple is none of the four
    with pytest.raises(ValueError, match="frames"):
        detect_clip(np.zeros((4, 32, 32), np.uint8))
