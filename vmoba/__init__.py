"""vmoba: block-sparse (VMoBA) and criss-cross attention, event and motion front ends for diffusers.

``import vmoba`` loads nothing heavy: each name below, and each sub-package (``vmoba.events``,
``vmoba.motion``, ``vmoba.pipelines``, ...), is imported the first time it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AttentionStats": "attention",
    "dense_attention": "attention",
    "select_blocks": "attention",
    "vmoba_attention": "attention",
    "VMoBAConfig": "config",
    "CrissCrossAttention": "crisscross",
    "CrissCrossAttention3D": "crisscross",
    "RecurrentCrissCrossAttention": "crisscross",
    "criss_cross_attention": "crisscross",
    "BlockPartition": "partition",
    "get_partition": "partition",
    "partition_blocks": "partition",
    "CrissCrossAttnProcessor": "processors",
    "SelectionRecord": "processors",
    "VMoBAProcessor": "processors",
    "disable": "processors",
    "enable": "processors",
    "BlockSelection": "selection",
    "compute_selection": "selection",
}
_SUBMODULES = ("attention", "checks", "cli", "config", "crisscross", "events", "kernels", "layout", "motion",
               "parallel", "partition", "pipelines", "processors", "selection", "synthetic", "training", "ui", "video")

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _SUBMODULES, _EXPORTS)

if TYPE_CHECKING:  # what static tools and IDEs see; at run time the table above resolves the same names
    from . import events, motion, pipelines
    from .attention import AttentionStats, dense_attention, select_blocks, vmoba_attention
    from .config import VMoBAConfig
    from .crisscross import (CrissCrossAttention, CrissCrossAttention3D, RecurrentCrissCrossAttention,
                             criss_cross_attention)
    from .partition import BlockPartition, get_partition, partition_blocks
    from .processors import CrissCrossAttnProcessor, SelectionRecord, VMoBAProcessor, disable, enable
    from .selection import BlockSelection, compute_selection
