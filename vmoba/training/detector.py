"""What a person sees in a clip of one moving shape: its colour and size in every frame, its shape, its direction.

The measuring stick for generated clips (``benchmarks/default_model_check.py``) and for the synthetic dataset
(``vmoba.training.shapes``). Nothing here is trained: every measure is plain geometry of the foreground, taken
per frame and aggregated over the clip.

**Foreground.** The background of a frame is its median colour (the shape covers a few percent of it). The
shape's colour is the median of the pixels farthest from the background (at least 60% of the largest
distance). Every pixel gets a coverage ``alpha`` in [0, 1]: its colour's projection onto the line from the
background to the shape's colour, so an anti-aliased edge pixel half covered by the shape reads 0.5. This uses
all three channels, so the full-resolution luma of H.264 carries the outline where the half-resolution chroma
blurs it. The shape is the largest 4-connected region with ``alpha > 0.5``; its measures use ``alpha`` over
that region grown by two pixels (its soft edge).

**Measures of one frame** (``FrameMeasure``):

- ``area``: sum of ``alpha``, pixels; exact for an anti-aliased render (an ideal disc of radius 8 reads about
  201 pixels).
- ``color``: the palette colour whose hue is nearest the hue of the region's chroma-weighted mean colour, if
  it is within ``HUE_TOLERANCE`` (40 degrees): teal and olive still read green, purple (280 degrees) is
  nothing. ``None`` also when the mean is nearly grey (chroma below ``MIN_COLOR_CHROMA``): black, white and grey
  have no hue. The dataset's colours vary by about 7 degrees around the palette's (red 0, yellow 52, green
  128, blue 230).
- ``elongation``, ``threefold``, ``fourfold``: angular harmonics of the mass around the centroid,
  ``|sum alpha z^n| / sum alpha |z|^n`` for n = 2, 3, 4 with ``z`` the pixel's offset from the centroid as a
  complex number. They do not change with position, size or rotation. A disc has 0 for every n. A square has
  four corners on its diagonals and ``fourfold`` 3/7 (0.4286), ``threefold`` 0. An equilateral triangle has
  ``threefold`` 0.659, ``fourfold`` 0. Any shape stretched along one axis has a large ``elongation`` (an
  ellipse with axes 2:1 has 0.6) while all three shapes have 0. This is the corner count of the outline read
  from the whole area at once: at 16 pixels across, after H.264, corners are rounded to a pixel or two and a
  corner detector on the contour is fragile, while the harmonics lose only 5-10% of their value.
- ``compactness``: ``area^2 / (2 pi * polar second moment)``: 1 for a disc, 3/pi (0.955) for a square, 0.827
  for an equilateral triangle, lower for ragged or hollow outlines.
- ``box_fill``: area over the area of the axis-aligned bounding box of the ``alpha > 0.5`` region: pi/4 for a
  disc, 1 for an upright square, 1/2 for a triangle. Reported, not used to decide (it depends on rotation).
- ``shape``: ``"triangle"`` when ``threefold`` reaches half the triangle's value and exceeds its share of the
  square's; ``"square"`` likewise with ``fourfold``; ``"circle"`` when both stay under a quarter of those
  values and the outline is compact (``compactness >= 0.9``). Anything else, an elongated or ragged blob or a
  shape cut by the frame's border, is ``None``: it is none of the three.

**The clip** (``Detection``): ``shape`` is the label of more than half of the frames where a shape is seen
(``None`` when no label has that majority; ``shape_share`` is the winner's share), ``color`` likewise of the
per-frame colours, ``direction`` the dominant axis and sign of the centroid's least-squares velocity (``None``
under 0.1 pixel per frame). ``colors``, ``areas`` and ``shapes`` list the frames' own readings.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..video import to_uint8
from .shapes import COLORS

# Distance (RGB units, 0-255) from the background that something must reach to count as a shape at all;
# H.264 noise on a plain background stays under 20.
MIN_CONTRAST = 60.0
# Chroma (max - min channel) of the shape's mean colour under which it has no hue (black, white, grey).
MIN_COLOR_CHROMA = 40.0
HUE_TOLERANCE = 40.0  # degrees either side of a palette hue
# Harmonics of the ideal shapes (a disc has zero in every one).
SQUARE_FOURFOLD = 3 / 7
TRIANGLE_THREEFOLD = 0.659  # equilateral triangle; numerically, fine rasterisation (tests check it)
MAX_ELONGATION = 0.15  # the three shapes have 0; a 1.35:1 ellipse has 0.29
MIN_ROUND_COMPACTNESS = 0.9  # a disc has 1 (0.94-0.99 measured through H.264 at this size)
CORNER_RATIO = 0.5  # a harmonic at half the ideal shape's value calls that shape
ROUND_RATIO = 0.25  # both harmonics under a quarter of the ideal values: round
MIN_VELOCITY = 0.1  # pixels per frame


@dataclass(frozen=True)
class FrameMeasure:
    """What one frame shows; all ``None`` (and ``area`` 0) when no shape is seen in it."""

    area: float  # pixels covered (sum of coverage)
    centroid: tuple[float, float] | None  # (x, y), pixels
    color: str | None
    rgb: tuple[float, float, float] | None  # the shape's chroma-weighted mean colour
    hue: float | None  # degrees
    chroma: float | None  # max - min channel of ``rgb``
    elongation: float | None
    threefold: float | None
    fourfold: float | None
    compactness: float | None
    box_fill: float | None
    touches_border: bool
    shape: str | None


@dataclass(frozen=True)
class Detection:
    """What the detector read from a clip; ``None`` fields could not be measured."""

    color: str | None
    direction: str | None
    shape: str | None
    foreground_frames: int  # frames with a visible shape
    velocity: tuple[float, float] | None  # centroid motion (x, y), pixels per frame
    shape_share: float = 0.0  # share of the frames with a shape that carry the clip's shape label
    frames: tuple[FrameMeasure, ...] = ()

    @property
    def colors(self) -> list[str | None]:
        """Colour of every frame (``None`` where none is seen or it has no hue)."""
        return [f.color for f in self.frames]

    @property
    def areas(self) -> list[float]:
        """Area of the shape in every frame, pixels (0 where none is seen)."""
        return [f.area for f in self.frames]

    @property
    def shapes(self) -> list[str | None]:
        return [f.shape for f in self.frames]


def hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of float RGB rows ``[..., 3]``."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360


PALETTE_HUES = {name: float(hue(np.asarray(rgb, dtype=np.float64))) for name, rgb in COLORS.items()}


def hue_distance(a: float, b: float) -> float:
    """Degrees between two hues on the colour circle."""
    d = abs(a - b) % 360
    return min(d, 360 - d)


def palette_color(degrees: float) -> str | None:
    """The palette colour whose hue is nearest ``degrees``, if within ``HUE_TOLERANCE``, else ``None``."""
    name = min(PALETTE_HUES, key=lambda n: hue_distance(degrees, PALETTE_HUES[n]))
    return name if hue_distance(degrees, PALETTE_HUES[name]) <= HUE_TOLERANCE else None


def _grow(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask`` (flood fills; the masks here hold a few hundred pixels)."""
    left, best = mask.copy(), np.zeros_like(mask)
    while left.sum() > best.sum():
        region = np.zeros_like(mask)
        region[np.unravel_index(np.argmax(left), mask.shape)] = True
        while True:
            grown = _grow(region) & left
            if grown.sum() == region.sum():
                break
            region = grown
        if region.sum() > best.sum():
            best = region
        left &= ~region
    return best


def classify_shape(elongation: float, threefold: float, fourfold: float, compactness: float,
                   touches_border: bool = False) -> str | None:
    """The shape a frame's measures describe, or ``None`` when they describe none of the three."""
    if touches_border or elongation > MAX_ELONGATION:
        return None
    three, four = threefold / TRIANGLE_THREEFOLD, fourfold / SQUARE_FOURFOLD
    if max(three, four) >= CORNER_RATIO:
        return "triangle" if three > four else "square"
    if max(three, four) < ROUND_RATIO and compactness >= MIN_ROUND_COMPACTNESS:
        return "circle"
    return None


_ABSENT = FrameMeasure(0.0, None, None, None, None, None, None, None, None, None, None, False, None)


def measure_frame(frame: np.ndarray, *, min_pixels: int = 6) -> FrameMeasure:
    """The measures of one uint8 frame ``(H, W, 3)`` (see the module's description)."""
    image = np.asarray(frame, dtype=np.float64)
    background = np.median(image.reshape(-1, 3), axis=0)
    offset = image - background
    distance = np.linalg.norm(offset, axis=-1)
    peak = float(distance.max())
    if peak < MIN_CONTRAST:
        return _ABSENT
    shape_rgb = np.median(image[distance >= 0.6 * peak], axis=0)
    direction = shape_rgb - background
    alpha = np.clip(offset @ direction / float(direction @ direction), 0.0, 1.0)
    region = _largest_region(alpha > 0.5)
    if region.sum() < min_pixels:
        return _ABSENT
    edge = _grow(_grow(region))
    weight = alpha * edge
    area = float(weight.sum())

    rows, cols = np.nonzero(region)
    H, W = region.shape
    touches = bool(rows.min() == 0 or cols.min() == 0 or rows.max() == H - 1 or cols.max() == W - 1)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    cx, cy = float((weight * xs).sum() / area), float((weight * ys).sum() / area)
    z = (xs - cx) + 1j * (ys - cy)
    r = np.abs(z)

    def harmonic(n: int) -> float:
        return float(abs((weight * z**n).sum()) / max((weight * r**n).sum(), 1e-12))

    # each pixel is a unit square, not a point: its own polar second moment is 1/6
    polar = float((weight * r * r).sum()) + area / 6
    compactness = area * area / (2 * math.pi * polar)
    box_fill = area / float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))

    pixels = image[region]
    chroma = pixels.max(-1) - pixels.min(-1)
    mean_rgb = (pixels * chroma[:, None]).sum(0) / chroma.sum() if chroma.sum() > 0 else pixels.mean(0)
    mean_chroma = float(mean_rgb.max() - mean_rgb.min())
    degrees = float(hue(mean_rgb))
    color = palette_color(degrees) if mean_chroma >= MIN_COLOR_CHROMA else None

    elongation, threefold, fourfold = harmonic(2), harmonic(3), harmonic(4)
    return FrameMeasure(
        area=area, centroid=(cx, cy), color=color, rgb=tuple(float(v) for v in mean_rgb), hue=degrees,
        chroma=mean_chroma, elongation=elongation, threefold=threefold, fourfold=fourfold,
        compactness=compactness, box_fill=box_fill, touches_border=touches,
        shape=classify_shape(elongation, threefold, fourfold, compactness, touches))


def _majority(labels: list[str | None]) -> tuple[str | None, float]:
    """The label carried by more than half of ``labels`` (``None`` entries count against every label), and
    the share of the most common one."""
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        return None, 0.0
    label, count = counts.most_common(1)[0]
    share = count / len(labels)
    return (label if share > 0.5 else None), share


def detect_clip(frames, *, min_pixels: int = 6) -> Detection:
    """Read colour, size, shape and direction of the moving shape in ``frames`` ((F, H, W, 3) uint8 or [0, 1])."""
    video = to_uint8(frames)
    measures = tuple(measure_frame(frame, min_pixels=min_pixels) for frame in video)
    seen = [i for i, m in enumerate(measures) if m.centroid is not None]
    if len(seen) < max(2, len(video) // 2):
        return Detection(None, None, None, len(seen), None, 0.0, measures)

    color, _ = _majority([measures[i].color for i in seen])
    shape, share = _majority([measures[i].shape for i in seen])

    t = np.asarray(seen, dtype=np.float64)
    vx = float(np.polyfit(t, [measures[i].centroid[0] for i in seen], 1)[0])
    vy = float(np.polyfit(t, [measures[i].centroid[1] for i in seen], 1)[0])
    direction = None
    if max(abs(vx), abs(vy)) >= MIN_VELOCITY:
        direction = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
    return Detection(color, direction, shape, len(seen), (vx, vy), share, measures)
