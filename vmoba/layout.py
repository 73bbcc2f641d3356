"""The layout types every layer shares: the block partition of a latent grid, its query tiles, and the
selection result. Imports nothing but torch, so the kernels below and the selection above both build on it.

Tokens come in frame-major ``(t, h, w)`` order. A partition assigns each token a block id; the *blocked
order* lists tokens block by block (stable, so frame-major inside a block), which makes every block a
contiguous range. Everything downstream (block means, selection, the attention kernels) works in blocked
order and maps back to the original order only at the very end.

A `BlockSelection` says which key blocks each query (or query tile) attends: computed by `vmoba.selection`,
consumed by the kernels. Like FlexAttention's ``BlockMask`` it carries the kernels' work lists once they
are built, so the backward reuses the forward's lists instead of rebuilding them.
"""

from __future__ import annotations

import itertools
import math
import numbers
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch

__all__ = [
    "SCHEMES", "BlockPartition", "BlockSelection", "TileLayout", "get_partition", "num_blocks", "partition_blocks",
    "validate_grid",
]

CHUNK_LENGTH = {"1d": 1, "2d": 2, "3d": 3}  # entries of the chunk of each scheme
SCHEMES = tuple(CHUNK_LENGTH)


def validate_grid(grid: Sequence[int]) -> tuple[int, int, int]:
    try:
        items = tuple(grid)
    except TypeError:
        raise ValueError(f"grid must be a (frames, height, width) tuple of positive integers, got {grid!r}") from None
    if len(items) != 3 or any(isinstance(g, bool) or not isinstance(g, numbers.Integral) or g < 1 for g in items):
        raise ValueError(f"grid must be a (frames, height, width) tuple of positive integers, got {grid!r}")
    return tuple(int(g) for g in items)  # type: ignore[return-value]  (numpy integers become ints)


def _validate_chunk(scheme: str, chunk: int | Sequence[int]) -> tuple[int, ...]:
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    items = (chunk,) if isinstance(chunk, int) and not isinstance(chunk, bool) else tuple(chunk)
    if len(items) != CHUNK_LENGTH[scheme] or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in items):
        raise ValueError(
            f"the {scheme} scheme needs a chunk of {CHUNK_LENGTH[scheme]} positive integer(s), got {chunk!r}"
        )
    return items


def partition_blocks(grid: Sequence[int], scheme: str, chunk: int | Sequence[int]) -> torch.Tensor:
    """Block id of each token of a ``(T, H, W)`` grid in frame-major order (LongTensor of shape ``[T*H*W]``).

    ``"1d"``: ``chunk = c`` whole frames per block, id ``t // c``.
    ``"2d"``: ``chunk = (ch, cw)`` tiles through all frames, id ``(h // ch) * ceil(W / cw) + w // cw``.
    ``"3d"``: ``chunk = (ct, ch, cw)`` cubes, id ``((t // ct) * nH + h // ch) * nW + w // cw``.
    Edge blocks are smaller when a chunk does not divide the grid.
    """
    T, H, W = validate_grid(grid)
    chunk = _validate_chunk(scheme, chunk)
    t = torch.arange(T).view(T, 1, 1)
    h = torch.arange(H).view(1, H, 1)
    w = torch.arange(W).view(1, 1, W)
    if scheme == "1d":
        ids = (t // chunk[0]).expand(T, H, W)
    elif scheme == "2d":
        ch, cw = chunk
        ids = ((h // ch) * math.ceil(W / cw) + w // cw).expand(T, H, W)
    else:
        ct, ch, cw = chunk
        n_h, n_w = math.ceil(H / ch), math.ceil(W / cw)
        ids = ((t // ct) * n_h + h // ch) * n_w + w // cw
    return ids.reshape(-1).contiguous()


def num_blocks(grid: Sequence[int], scheme: str, chunk: int | Sequence[int]) -> int:
    T, H, W = validate_grid(grid)
    chunk = _validate_chunk(scheme, chunk)
    if scheme == "1d":
        return math.ceil(T / chunk[0])
    if scheme == "2d":
        return math.ceil(H / chunk[0]) * math.ceil(W / chunk[1])
    return math.ceil(T / chunk[0]) * math.ceil(H / chunk[1]) * math.ceil(W / chunk[2])


@dataclass(frozen=True, eq=False)
class TileLayout:
    """Query tiles: consecutive runs of at most ``query_tile`` tokens of one block, in blocked order.

    A block of ``n`` tokens is cut into ``ceil(n / query_tile)`` tiles of near-equal size.
    """

    offsets: torch.Tensor  # [n_tiles + 1] start of each tile in blocked order
    block: torch.Tensor  # [n_tiles] block id of each tile
    token_tile: torch.Tensor  # [S] tile of each blocked position
    max_tile: int
    offsets_i32: torch.Tensor  # offsets as int32, for the kernels
    host_offsets: tuple[int, ...]  # offsets on the host: work lists sized from them need no device sync

    @property
    def num_tiles(self) -> int:
        return self.block.numel()

    @property
    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass(frozen=True, eq=False)
class BlockPartition:
    """A partition in the form the attention code consumes (all index tensors on one device)."""

    grid: tuple[int, int, int]
    scheme: str
    chunk: tuple[int, ...]
    block_ids: torch.Tensor  # [S] block of each token, original order
    order: torch.Tensor  # [S] original index of each blocked position
    inverse: torch.Tensor  # [S] blocked position of each original token
    offsets: torch.Tensor  # [n_blocks + 1] block j is blocked positions offsets[j]:offsets[j+1]
    max_block_size: int
    blocked_block_ids: torch.Tensor  # [S] block id of each blocked position (non-decreasing)
    host_offsets: tuple[int, ...]  # offsets on the host: work lists sized from them need no device sync

    @property
    def num_tokens(self) -> int:
        return self.block_ids.numel()

    @property
    def num_blocks(self) -> int:
        return self.offsets.numel() - 1

    @property
    def sizes(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def device(self) -> torch.device:
        return self.block_ids.device

    def blocked_ids(self) -> torch.Tensor:
        """Block id of each blocked position (non-decreasing)."""
        return self.blocked_block_ids

    def tiles(self, query_tile: int) -> TileLayout:
        return _cached("tiles", self.grid, self.scheme, self.chunk, int(query_tile), str(self.device))


# Layouts are cached per (grid, scheme, chunk[, query tile], device), each under its own attribute of
# `_LAYOUTS`, which torch.compile reads and guards on like any global: `_cache` builds a missing entry at
# trace time (`assume_constant_result` runs it for real and hands back only the attribute's name), so the
# compiler never traces the data-dependent sorts and counts of a build.
_LAYOUTS = types.SimpleNamespace()
_LAYOUT_NAMES: dict[tuple, str] = {}
_LAYOUT_COUNTER = itertools.count()
MAX_CACHED_LAYOUTS = 128


@torch.compiler.assume_constant_result
def _cache(key: tuple) -> str:
    name = _LAYOUT_NAMES.get(key)
    if name is None:
        if len(_LAYOUT_NAMES) >= MAX_CACHED_LAYOUTS:
            delattr(_LAYOUTS, _LAYOUT_NAMES.pop(next(iter(_LAYOUT_NAMES))))  # the oldest
        name = _LAYOUT_NAMES[key] = f"layout_{next(_LAYOUT_COUNTER)}"
        setattr(_LAYOUTS, name, _partition(*key[1:]) if key[0] == "partition" else _tiles(*key[1:]))
    return name


def _partition(grid: tuple, scheme: str, chunk: tuple, device: str) -> BlockPartition:
    ids = partition_blocks(grid, scheme, chunk)
    n = num_blocks(grid, scheme, chunk)
    order = torch.sort(ids, stable=True).indices
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    counts = torch.bincount(ids, minlength=n)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(counts, 0)
    dev = torch.device(device)
    return BlockPartition(
        grid=grid,
        scheme=scheme,
        chunk=chunk,
        block_ids=ids.to(dev),
        order=order.to(dev),
        inverse=inverse.to(dev),
        offsets=offsets.to(dev),
        max_block_size=int(counts.max()),
        blocked_block_ids=ids[order].to(dev),
        host_offsets=tuple(offsets.tolist()),
    )


def _tiles(grid: tuple, scheme: str, chunk: tuple, query_tile: int, device: str) -> TileLayout:
    part = _cached("partition", grid, scheme, chunk, "cpu")
    sizes = part.sizes
    per_block = (sizes + query_tile - 1) // query_tile  # tiles in each block
    block = torch.repeat_interleave(torch.arange(sizes.numel()), per_block)
    # tile r of a block with n tokens and m tiles starts at floor(r * n / m): near-equal sizes
    first_tile = torch.cumsum(per_block, 0) - per_block
    rank = torch.arange(block.numel()) - first_tile[block]
    starts = part.offsets[:-1][block] + (rank * sizes[block]) // per_block[block]
    offsets = torch.cat([starts, part.offsets[-1:]])
    token_tile = torch.repeat_interleave(torch.arange(block.numel()), offsets[1:] - offsets[:-1])
    dev = torch.device(device)
    return TileLayout(
        offsets=offsets.to(dev),
        block=block.to(dev),
        token_tile=token_tile.to(dev),
        max_tile=int((offsets[1:] - offsets[:-1]).max()),
        offsets_i32=offsets.to(device=dev, dtype=torch.int32),
        host_offsets=tuple(offsets.tolist()),
    )


def get_partition(
    grid: Sequence[int], scheme: str, chunk: int | Sequence[int], device: torch.device | str = "cpu"
) -> BlockPartition:
    """Cached `BlockPartition` of ``grid`` on ``device``."""
    grid = validate_grid(grid)
    chunk = _validate_chunk(scheme, chunk)
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _cached("partition", grid, scheme, chunk, str(device))


def _cached(*key):
    return getattr(_LAYOUTS, _cache(key))


@dataclass(frozen=True, eq=False)
class BlockSelection:
    """Which key blocks each query attends: the structure the attention backends consume.

    ``mask[b, h, r, j]`` says whether row ``r`` attends key block ``j``. Rows are in blocked order: one row
    per query tile in ``tile`` granularity (every query of the tile shares the row), one row per query in
    ``token`` granularity.
    """

    partition: BlockPartition
    tiles: TileLayout
    granularity: str
    mask: torch.Tensor  # [B, H, rows, n_blocks] bool; never modified once the selection is built
    _work_lists: dict = field(default_factory=dict, init=False, repr=False)

    def work_lists(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The kernels' work lists named ``key`` (kind and launch sizes), built by ``build()`` on first use and
        kept with the selection: the backward reads the lists the forward built."""
        lists = self._work_lists.get(key)
        if lists is None:
            lists = self._work_lists[key] = build()
        return lists

    def query_mask(self) -> torch.Tensor:
        """[B, H, S, n_blocks] selection of every query, blocked order."""
        if self.granularity == "token":
            return self.mask
        return self.mask.index_select(2, self.tiles.token_tile)

    def token_mask(self) -> torch.Tensor:
        """[B, H, S, n_blocks] selection of every query, original token order (what `select_blocks` returns)."""
        return self.query_mask().index_select(2, self.partition.inverse)

    def dense_mask(self) -> torch.Tensor:
        """[B, H, S, S] boolean query-key mask in original order. Quadratic: for tests and small inputs."""
        return self.token_mask().index_select(3, self.partition.block_ids)

    def density(self) -> torch.Tensor:
        """[B, H] fraction of video query-key pairs attended (and computed: both backends do exact work)."""
        S = self.partition.num_tokens
        pairs = self.mask.to(torch.float32) @ self.partition.sizes.to(torch.float32)  # keys per row
        if self.granularity == "tile":
            pairs = pairs * self.tiles.sizes.to(torch.float32)
        return pairs.sum(-1) / (S * S)
