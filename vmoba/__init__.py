"""vmoba: block-sparse (VMoBA) and criss-cross attention, event and motion front ends for diffusers."""

from .attention import AttentionStats, dense_attention, select_blocks, vmoba_attention
from .config import VMoBAConfig
from .crisscross import CrissCrossAttention, CrissCrossAttention3D, RecurrentCrissCrossAttention, criss_cross_attention
from .partition import BlockPartition, get_partition, partition_blocks
from .processors import CrissCrossAttnProcessor, SelectionRecord, VMoBAProcessor, disable, enable
from .selection import BlockSelection, compute_selection

__version__ = "0.1.0"

__all__ = [
    "AttentionStats",
    "BlockPartition",
    "BlockSelection",
    "CrissCrossAttention",
    "CrissCrossAttention3D",
    "CrissCrossAttnProcessor",
    "RecurrentCrissCrossAttention",
    "SelectionRecord",
    "VMoBAConfig",
    "VMoBAProcessor",
    "compute_selection",
    "criss_cross_attention",
    "dense_attention",
    "disable",
    "enable",
    "get_partition",
    "partition_blocks",
    "select_blocks",
    "vmoba_attention",
]
