"""Events to video for the demo: events from an uploaded clip (simulated) or an event file, the
`EventToVideoPipeline` reconstruction beside its regression baseline and, for clips, the ground truth."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import checks
from ..events import EventStream, read_events, render_events, simulate_events
from ..events.evaluate import ssim
from .limits import Limits
from .media import check_upload, fit_side, grey, read_clip, resize_clip

EVENT_SUFFIXES = (".txt", ".npz", ".h5", ".hdf5", ".aedat4")
SUBSTEPS = 4  # simulator sub-frames per frame interval, as in the pipeline's training data


@dataclass
class EventInput:
    events: EventStream
    boundaries: np.ndarray  # N + 1 frame times (seconds)
    truth: np.ndarray | None  # (N + 1, H, W) grey frames for a clip, None for an event file
    source: str


def events_from_clip(path: str | os.PathLike | None, limits: Limits, *, frames: int, side: int,
                     contrast_threshold: float) -> EventInput:
    """The first ``frames + 1`` frames of an uploaded clip, grey, at most ``side`` pixels, and the events an ideal
    sensor would report for them (simulated on sub-frames interpolated between the frames, so event times
    follow the motion): ``frames`` intervals to reconstruct."""
    frames = checks.integer("frames", frames, min=1, max=limits.event_max_frames)
    side = checks.integer("size", side, min=32, max=limits.event_max_side)
    threshold = checks.real("contrast threshold", contrast_threshold, min=0.05, max=1.0)
    clip, fps = read_clip(path, limits, max_frames=frames + 1)
    if len(clip) < 2:
        raise ValueError("the video must have at least 2 frames")
    clip = grey(resize_clip(clip, fit_side(clip.shape[1], clip.shape[2], side)))
    n = len(clip)
    coarse = torch.from_numpy(clip).double()
    w = (torch.arange(SUBSTEPS, dtype=torch.float64) / SUBSTEPS)[None, :, None, None]
    fine = coarse[:-1, None] * (1 - w) + coarse[1:, None] * w  # (n - 1, SUBSTEPS, H, W)
    fine = torch.cat([fine.reshape(-1, *coarse.shape[1:]), coarse[-1:]])
    seconds = torch.arange(len(fine), dtype=torch.float64) / (fps * SUBSTEPS)
    events = simulate_events(fine.clamp(0, 1), seconds, contrast_threshold=threshold, seed=0)
    return EventInput(events, np.arange(n) / fps, clip, "clip")


def events_from_file(path: str | os.PathLike | None, limits: Limits, *, frames: int) -> EventInput:
    """An uploaded event file, binned down to at most ``limits.event_max_side`` pixels, cut into ``frames``
    equal intervals."""
    frames = checks.integer("frames", frames, min=1, max=limits.event_max_frames)
    path = check_upload(path, "event file", limits, EVENT_SUFFIXES)
    try:
        events = read_events(path)
    except (ValueError, OSError, KeyError) as exc:
        raise ValueError(f"event file {path.name!r} could not be read: {exc}") from None
    except ImportError as exc:
        raise ValueError(f"event file {path.name!r} needs an optional package: {exc}") from None
    if len(events) == 0:
        raise ValueError(f"event file {path.name!r} holds no events")
    if len(events) > limits.max_events:
        raise ValueError(f"event file {path.name!r} holds {len(events):,} events; the limit is {limits.max_events:,}")
    if events.duration <= 0:
        raise ValueError(f"the events in {path.name!r} all have one timestamp; they cannot be cut into frames")
    factor = -(-max(events.sensor_size) // limits.event_max_side)
    if factor > 1:  # a coarser virtual sensor: each output pixel collects a factor x factor patch
        events = EventStream(events.x // factor, events.y // factor, events.t, events.p,
                             sensor_size=(-(-events.height // factor), -(-events.width // factor)))
    boundaries = np.linspace(events.t[0], events.t[-1], frames + 1)
    boundaries[-1] = np.nextafter(boundaries[-1], np.inf)  # the last event belongs to the last interval
    return EventInput(events, boundaries, None, path.name)


def event_images(data: EventInput) -> np.ndarray:
    """``(N, H, W, 3)`` uint8: the events of each frame interval, red ON and blue OFF on white."""
    b = data.boundaries
    return np.stack([render_events(data.events.time_window(b[k], b[k + 1])) for k in range(len(b) - 1)])


@dataclass
class Reconstruction:
    frames: np.ndarray  # (N, H, W) the diffusion pipeline's frames, intervals 1..N
    baseline: np.ndarray  # (N, H, W) the low-frequency regression estimate
    ssim: dict[str, float] | None  # mean SSIM against the truth, per method (clips only)


def reconstruct(pipe, data: EventInput, *, steps: int, seed: int, limits: Limits,
                on_frame: Callable[[int, int], None] | None = None) -> Reconstruction:
    """Run the pipeline over every interval (given the first true frame when there is one); ``on_frame(done,
    total)`` after each reconstructed frame."""
    steps = checks.integer("steps", steps, min=1, max=limits.event_max_steps)
    seed = checks.integer("seed", seed, min=0, max=2**31 - 1)
    total = len(data.boundaries) - 1
    done = 0

    def frame_done(module, inputs, output):
        nonlocal done
        done += 1
        if on_frame is not None:
            on_frame(done, total)

    first = None if data.truth is None else data.truth[0]
    hook = pipe.conditioner.register_forward_hook(frame_done)  # the conditioner runs once per frame
    try:
        out = pipe(data.events, frame_timestamps=data.boundaries.tolist(), first_frame=first,
                   num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    finally:
        hook.remove()
    scores = None
    if data.truth is not None:
        truth = torch.from_numpy(data.truth[1:])
        if min(truth.shape[-2:]) >= 11:
            scores = {name: float(ssim(torch.from_numpy(np.asarray(x)), truth).mean())
                      for name, x in (("diffusion", out.frames), ("baseline", out.lowfreq))}
    return Reconstruction(np.asarray(out.frames), np.asarray(out.lowfreq), scores)
