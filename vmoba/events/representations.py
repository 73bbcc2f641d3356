"""Dense tensors from events: voxel grids (E2VID), event frames, time surfaces, and images to look at."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .. import checks
from .stream import EventStream, checked_stream


def _time_range(events: EventStream, t_range: tuple[float, float] | None, what: str) -> tuple[float, float]:
    if t_range is None:
        if len(events) == 0:
            raise ValueError(f"{what} of an empty event stream needs an explicit t_range=(t0, t1)")
        return float(events.t[0]), float(events.t[-1])
    try:
        t0, t1 = t_range
    except (TypeError, ValueError):
        raise ValueError(f"t_range must be a pair (t0, t1) of times in seconds, got {t_range!r}") from None
    t0, t1 = checks.real("t_range[0]", t0), checks.real("t_range[1]", t1)
    if not t1 >= t0:
        raise ValueError(f"t_range must satisfy t0 <= t1, got {t_range!r}")
    if len(events) and (events.t[0] < t0 or events.t[-1] > t1):
        raise ValueError(
            f"events span [{events.t[0]!r}, {events.t[-1]!r}] s, outside t_range=({t0!r}, {t1!r}); "
            f"cut them with EventStream.time_window first"
        )
    return t0, t1


def _flat_index(events: EventStream) -> torch.Tensor:
    return torch.from_numpy(events.y * events.width + events.x)


def events_to_voxel_grid(
    events: EventStream,
    num_bins: int,
    normalize: bool = False,
    *,
    t_range: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """E2VID voxel grid ``[num_bins, H, W]``.

    With ``t0, t1`` the first and last timestamps (or ``t_range``), each event sits at
    ``t* = (B - 1)(t - t0) / (t1 - t0)`` and adds ``p (1 - frac)`` to bin ``floor(t*)`` and ``p frac`` to the
    next bin, ``frac = t* - floor(t*)`` (bilinear in time). When ``t1 == t0`` every event lands in bin 0.
    ``normalize`` shifts and scales the non-zero voxels to zero mean and unit (population) standard deviation;
    zeros stay zero so "no events" remains distinguishable.
    """
    events = checked_stream(events)
    num_bins = checks.integer("num_bins", num_bins, min=1)
    normalize = checks.boolean("normalize", normalize)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    t0, t1 = _time_range(events, t_range, "a voxel grid")
    H, W = events.sensor_size
    # accumulate in float64 so long streams do not lose small contributions, cast at the end
    grid = torch.zeros(num_bins * H * W, dtype=torch.float64)
    if len(events):
        t = torch.tensor(events.t)
        scale = (num_bins - 1) / (t1 - t0) if t1 > t0 else 0.0
        ts = (t - t0) * scale
        lower = ts.floor().clamp_(0, num_bins - 1)
        frac = ts - lower
        p = torch.from_numpy(events.p.astype(np.float64))
        pix = _flat_index(events)
        lower = lower.long()
        grid.index_add_(0, lower * H * W + pix, p * (1 - frac))
        upper = lower + 1
        inside = upper < num_bins
        grid.index_add_(0, upper[inside] * H * W + pix[inside], (p * frac)[inside])
    grid = grid.view(num_bins, H, W)
    if normalize:
        nonzero = grid != 0
        if nonzero.any():
            values = grid[nonzero]
            mean, std = values.mean(), values.std(correction=0)
            grid[nonzero] = (values - mean) / std if std > 0 else values - mean
    return grid.to(dtype)


def events_to_voxel_windows(events: EventStream, boundaries: Sequence[float], num_bins: int) -> torch.Tensor:
    """``[N, num_bins, H, W]`` voxel grids of the N intervals between consecutive ``boundaries`` (seconds).

    Each interval is ``[b_k, b_{k+1})`` except the last, which is closed so an event at the final boundary counts.
    """
    events = checked_stream(events)
    num_bins = checks.integer("num_bins", num_bins, min=1)
    try:
        edges = np.asarray(boundaries, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"boundaries must be at least 2 strictly increasing times, got {boundaries!r}") from None
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)) or not np.all(np.diff(edges) > 0):
        raise ValueError(f"boundaries must be at least 2 strictly increasing times, got {boundaries!r}")
    if len(events) and (events.t[0] < edges[0] or events.t[-1] > edges[-1]):
        raise ValueError(
            f"events span [{events.t[0]!r}, {events.t[-1]!r}] s, outside the boundaries [{edges[0]!r}, {edges[-1]!r}]"
        )
    grids = []
    for k in range(len(edges) - 1):
        last = k == len(edges) - 2
        window = events.time_window(edges[k], np.nextafter(edges[k + 1], np.inf) if last else edges[k + 1])
        grids.append(events_to_voxel_grid(window, num_bins, t_range=(edges[k], edges[k + 1])))
    return torch.stack(grids)


def events_to_frame(events: EventStream, *, split_polarity: bool = True) -> torch.Tensor:
    """Event counts per pixel: ``[2, H, W]`` (OFF, ON) or, with ``split_polarity=False``, ``[H, W]`` net polarity."""
    events = checked_stream(events)
    split_polarity = checks.boolean("split_polarity", split_polarity)
    H, W = events.sensor_size
    pix = _flat_index(events)
    if split_polarity:
        frame = torch.zeros(2 * H * W, dtype=torch.float32)
        on = torch.from_numpy(events.p > 0).long()
        frame.index_add_(0, on * H * W + pix, torch.ones(len(events)))
        return frame.view(2, H, W)
    frame = torch.zeros(H * W, dtype=torch.float32)
    frame.index_add_(0, pix, torch.from_numpy(events.p.astype(np.float32)))
    return frame.view(H, W)


def events_to_time_surface(
    events: EventStream, tau: float, *, t_ref: float | None = None, split_polarity: bool = True
) -> torch.Tensor:
    """Exponentially decaying time surface ``exp(-(t_ref - t_last) / tau)``, 0 where a pixel never fired.

    ``t_ref`` defaults to the last timestamp; ``[2, H, W]`` (OFF, ON) or ``[H, W]`` for both polarities together.
    """
    events = checked_stream(events)
    tau = checks.real("tau", tau, min=0, min_exclusive=True)
    split_polarity = checks.boolean("split_polarity", split_polarity)
    if t_ref is None:
        if len(events) == 0:
            raise ValueError("a time surface of an empty event stream needs an explicit t_ref")
        t_ref = float(events.t[-1])
    t_ref = checks.real("t_ref", t_ref)
    if len(events) and events.t[-1] > t_ref:
        raise ValueError(f"t_ref={t_ref!r} s is before the last event ({events.t[-1]!r} s)")
    H, W = events.sensor_size
    channels = 2 if split_polarity else 1
    index = _flat_index(events)
    if split_polarity:
        index = index + torch.from_numpy(events.p > 0).long() * H * W
    last = torch.full((channels * H * W,), -np.inf, dtype=torch.float64)
    # timestamps are sorted, so the last write per pixel is the latest event; scatter_reduce(amax) says so
    # without relying on write order
    last.scatter_reduce_(0, index, torch.tensor(events.t), reduce="amax")
    surface = torch.exp((last - t_ref) / tau).to(torch.float32).view(channels, H, W)
    return surface if split_polarity else surface[0]


def render_events(events: EventStream, *, background: str = "white") -> np.ndarray:
    """``uint8 [H, W, 3]`` image: pixels whose net polarity is positive in red, negative in blue."""
    events = checked_stream(events)
    checks.choice("background", background, ("white", "black"))
    net = events_to_frame(events, split_polarity=False).numpy()
    image = np.full((*events.sensor_size, 3), 255 if background == "white" else 0, dtype=np.uint8)
    image[net > 0] = (220, 40, 40)
    image[net < 0] = (40, 80, 220)
    return image


def render_voxel_grid(voxels: torch.Tensor) -> np.ndarray:
    """``uint8 [H, B * W, 3]``: the bins side by side, red positive, blue negative, white zero."""
    if not isinstance(voxels, torch.Tensor):
        raise TypeError(f"voxels must be a torch.Tensor (num_bins, H, W), got {type(voxels).__name__}")
    if voxels.dim() != 3 or voxels.numel() == 0:
        raise ValueError(f"voxels must have shape (num_bins, H, W), got {tuple(voxels.shape)}")
    if not torch.isfinite(voxels).all():
        raise ValueError("voxels must be finite, got NaN or Inf values")
    v = voxels.detach().double().cpu()
    peak = float(v.abs().max()) or 1.0
    v = (v / peak).clamp(-1, 1)
    strip = torch.cat(list(v), dim=1)  # [H, B*W]
    pos, neg = strip.clamp(min=0), (-strip).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - pos - neg, 1 - pos], dim=-1).clamp(0, 1)
    return (rgb * 255).round().to(torch.uint8).numpy()
