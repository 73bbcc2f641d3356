"""Event cameras: streams, files, dense representations, an ESIM-style simulator and the event conditioner.

Timestamps are float64 seconds throughout; integer microseconds come in through ``time_unit="us"``.

The readers, representations and simulator load only NumPy and PyTorch; ``EventResidualConditioner`` (a diffusers
model) and the ``conditioner``, ``data`` and ``evaluate`` modules are imported the first time they are used.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
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

__getattr__, __dir__ = lazy_attributes(__name__, globals(), ("conditioner", "data", "evaluate"),
                                       {"EventResidualConditioner": "conditioner"})

if TYPE_CHECKING:  # what static tools see; at run time the table above resolves the same name
    from .conditioner import EventResidualConditioner
