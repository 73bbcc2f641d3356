"""Block partition of a latent video grid and its query tiles; the types live in `vmoba.layout`."""

from .layout import BlockPartition, TileLayout, get_partition, num_blocks, partition_blocks, validate_grid

__all__ = ["BlockPartition", "TileLayout", "get_partition", "num_blocks", "partition_blocks", "validate_grid"]
