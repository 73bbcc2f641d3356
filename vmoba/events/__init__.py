"""Event cameras: streams, files, dense representations, an ESIM-style simulator and the event conditioner.

Timestamps are float64 seconds throughout; integer microseconds come in through ``time_unit="us"``.
"""

from .conditioner import EventResidualConditioner
from .io import FORMATS, detect_format, iter_event_windows, read_events, write_events
from .representations import (
    events_to_frame,
    events_to_time_surface,
    events_to_voxel_grid,
    render_events,
    render_voxel_grid,
)
from .simulator import simulate_events
from .stream import EventStream, polarity_to_signed

__all__ = [
    "FORMATS",
    "EventResidualConditioner",
    "EventStream",
    "detect_format",
    "events_to_frame",
    "events_to_time_surface",
    "events_to_voxel_grid",
    "iter_event_windows",
    "polarity_to_signed",
    "read_events",
    "render_events",
    "render_voxel_grid",
    "simulate_events",
    "write_events",
]
