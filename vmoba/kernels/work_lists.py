"""Work lists of the Triton attention kernels, built with torch from a `BlockSelection`.

Keys live in blocked order with the text keys (if any) appended as one more *segment*; every list below
holds int32.

Tile granularity (``TileLists``): key chunks (runs of at most ``block_n`` keys of one segment); for every
``(batch*head, tile)`` a row of a table listing the key chunks of the segments it selected (forward, dQ);
for every ``(batch*head, segment)`` a row listing the query chunks (runs of at most ``block_m`` rows of
one tile) of the tiles that selected it (dK/dV). The chunk layouts come from the partition's host-side
offsets and every table has a static width (all chunks), so the tile lists are built on the device
without a host synchronisation: the call can be queued ahead and captured in a CUDA graph.

Token granularity (``PairLists``): a *pair* is (query, segment it selected), numbered query-major, so
the pairs of one query are consecutive *slots*; per-pair partial results live in those slots. *Items* are
runs of at most ``block_m`` pairs of one segment (the forward / dQ work units: queries grouped by key
block); items of one segment are consecutive, which the dK/dV kernel walks. The number of pairs depends
on the selection, so these lists read their sizes back from the device.

Every list is built once per selection and kept on it (`BlockSelection.work_lists`): the backward walks
the lists the forward built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..layout import BlockSelection


def _csr(groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """int32 row pointers for entries sorted by ``groups``."""
    counts = torch.bincount(groups, minlength=n_groups)
    ptr = torch.zeros(n_groups + 1, dtype=torch.int64, device=groups.device)
    ptr[1:] = torch.cumsum(counts, 0)
    return ptr.to(torch.int32)


def _expand(first: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ranges ``[first_i, first_i + count_i)``: (range index of each element, element value)."""
    owner = torch.repeat_interleave(torch.arange(first.numel(), device=first.device), count)
    start_of_owner = torch.cumsum(count, 0) - count
    return owner, first[owner] + torch.arange(owner.numel(), device=first.device) - start_of_owner[owner]


def _i32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int32).contiguous()


def _listed(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a [rows, M] bool matrix: ``(table [rows, M + 1] int32, count [rows] int32)``, row ``r`` of the
    table listing the chosen columns of row ``r`` ascending in its first ``count[r]`` entries. Static shapes:
    no host synchronisation."""
    rows, M = chosen.shape
    count = chosen.sum(-1, dtype=torch.int32)
    slot = torch.cumsum(chosen, -1, dtype=torch.int32) - 1
    slot = torch.where(chosen, slot, M)  # unchosen columns land in a spare last column
    ids = torch.arange(M, device=chosen.device, dtype=torch.int32).expand_as(slot)
    table = torch.zeros(rows, M + 1, device=chosen.device, dtype=torch.int32)
    table.scatter_(1, slot.long(), ids)
    return table, count


def host_segment_offsets(selection: BlockSelection, text_len: int) -> tuple[int, ...]:
    offsets = selection.partition.host_offsets
    return offsets + (offsets[-1] + text_len,) if text_len else offsets


def with_text_column(mask: torch.Tensor, text_len: int) -> torch.Tensor:
    """Append the always-selected text segment to a [..., n_blocks] selection."""
    if not text_len:
        return mask
    return torch.cat([mask, mask.new_ones(*mask.shape[:-1], 1)], -1)


@dataclass(frozen=True)
class Chunks:
    """Runs of at most ``size`` consecutive positions of one segment (of keys or of query rows)."""

    offsets: torch.Tensor  # [n_seg + 1] int32, the segments
    start: torch.Tensor  # [n_chunks] int32
    end: torch.Tensor  # [n_chunks] int32
    length: torch.Tensor  # [n_chunks] int32
    segment: torch.Tensor  # [n_chunks] int32 (int64 in `segment_index`, for indexing)
    segment_index: torch.Tensor


@functools.lru_cache(maxsize=64)
def device_offsets(offsets: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32).to(device)


@functools.lru_cache(maxsize=64)
def chunks(offsets: tuple[int, ...], size: int, device: str) -> Chunks:
    """Chunks of the segments ``offsets`` (host integers): built on the host once, then kept on ``device``."""
    start, end, segment = [], [], []
    for seg, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        for first in range(lo, hi, size):
            start.append(first)
            end.append(min(first + size, hi))
            segment.append(seg)

    def on_device(values, dtype=torch.int32):
        return torch.tensor(values, dtype=dtype).to(device)

    return Chunks(device_offsets(offsets, device), on_device(start), on_device(end),
                  on_device([e - s for s, e in zip(start, end)]), on_device(segment), on_device(segment, torch.int64))


@dataclass
class TileLists:
    chunks: Chunks  # key chunks
    table: torch.Tensor  # [B*H*n_tiles, n_chunks + 1] key-chunk ids, ascending; the first `count` are valid
    count: torch.Tensor  # [B*H*n_tiles]
    n_seg: int


def tile_lists(selection: BlockSelection, text_len: int, block_n: int) -> TileLists:
    return selection.work_lists(("tile", text_len, block_n), lambda: _tile_lists(selection, text_len, block_n))


def _tile_lists(selection: BlockSelection, text_len: int, block_n: int) -> TileLists:
    B, H, nt, _ = selection.mask.shape
    offsets = host_segment_offsets(selection, text_len)
    key = chunks(offsets, block_n, str(selection.mask.device))
    n_seg = len(offsets) - 1
    chosen = with_text_column(selection.mask, text_len).reshape(B * H * nt, n_seg)[:, key.segment_index]
    table, count = _listed(chosen)
    return TileLists(key, table, count, n_seg)


@dataclass
class TileReverseLists:
    queries: Chunks  # query chunks; segments are the tiles
    table: torch.Tensor  # [B*H*n_seg, n_query_chunks + 1] query chunks of the tiles that selected each segment
    count: torch.Tensor  # [B*H*n_seg]


def tile_reverse_lists(selection: BlockSelection, text_len: int, block_m: int) -> TileReverseLists:
    """Per (batch*head, key segment) the query chunks of the tiles that selected it (dK/dV)."""
    key = ("tile_reverse", text_len, block_m)
    return selection.work_lists(key, lambda: _tile_reverse_lists(selection, text_len, block_m))


def _tile_reverse_lists(selection: BlockSelection, text_len: int, block_m: int) -> TileReverseLists:
    B, H, nt, _ = selection.mask.shape
    queries = chunks(selection.tiles.host_offsets, block_m, str(selection.mask.device))
    mask = with_text_column(selection.mask, text_len)  # [B, H, nt, n_seg]
    n_seg = mask.shape[-1]
    chosen = mask.reshape(B * H, nt, n_seg)[:, queries.segment_index].transpose(1, 2)  # [B*H, n_seg, n_qc]
    table, count = _listed(chosen.reshape(B * H * n_seg, -1))
    return TileReverseLists(queries, table, count)


@dataclass
class PairLists:
    host_offsets: tuple[int, ...]  # the segments of these lists
    seg_offsets: torch.Tensor  # the same, on the device (int32)
    n_seg: int
    num_pairs: int
    query_ptr: torch.Tensor  # [B*H*S + 1] slots of each query
    pair_row: torch.Tensor  # [P] blocked query position of each slot
    item_slots: torch.Tensor  # [P] slots in segment-major order; items index into it
    item_group: torch.Tensor  # [n_items] batch*head*n_seg + segment
    item_start: torch.Tensor  # [n_items] first position in item_slots
    item_len: torch.Tensor  # [n_items]
    group_items: torch.Tensor  # [B*H*n_seg + 1] items of each (batch*head, segment)


def segment_groups(selection: BlockSelection, text_len: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive segment ranges whose pairs fit ``max_pairs`` (a segment alone may exceed it)."""
    key = ("segment_groups", text_len, max_pairs)
    return selection.work_lists(key, lambda: _segment_groups(selection, text_len, max_pairs))


def _segment_groups(selection: BlockSelection, text_len: int, max_pairs: int) -> list[tuple[int, int]]:
    counts = with_text_column(selection.mask, text_len).sum((0, 1, 2)).tolist()
    groups, lo, total = [], 0, 0
    for seg, c in enumerate(counts):
        if seg > lo and total + c > max_pairs:
            groups.append((lo, seg))
            lo, total = seg, 0
        total += c
    groups.append((lo, len(counts)))
    return groups


def pair_lists(selection: BlockSelection, text_len: int, block_m: int, segments: tuple[int, int]) -> PairLists:
    """Pair lists of the segments ``segments = (first, end)``; segment ids in them are relative to ``first``."""
    key = ("pairs", text_len, block_m, tuple(segments))
    return selection.work_lists(key, lambda: _pair_lists(selection, text_len, block_m, segments))


def _pair_lists(selection: BlockSelection, text_len: int, block_m: int, segments: tuple[int, int]) -> PairLists:
    B, H, S, _ = selection.mask.shape
    lo, hi = segments
    host_offsets = host_segment_offsets(selection, text_len)[lo : hi + 1]
    n_seg = hi - lo
    mask = with_text_column(selection.mask, text_len)[..., lo:hi].reshape(B * H, S, n_seg)
    bh, row, seg = mask.nonzero(as_tuple=True)  # query-major: the slot numbering
    query_ptr = _csr(bh * S + row, B * H * S)
    group = bh * n_seg + seg
    item_slots = torch.argsort(group, stable=True)  # segment-major, queries ascending inside
    count = torch.bincount(group, minlength=B * H * n_seg)
    group_start = torch.cumsum(count, 0) - count
    n_items = (count + block_m - 1) // block_m
    item_group, rank = _expand(torch.zeros_like(n_items), n_items)
    item_start = group_start[item_group] + rank * block_m
    item_len = torch.minimum(count[item_group] - rank * block_m, torch.full_like(rank, block_m))
    return PairLists(
        host_offsets=host_offsets, seg_offsets=device_offsets(host_offsets, str(mask.device)), n_seg=n_seg, num_pairs=row.numel(), query_ptr=query_ptr,
        pair_row=_i32(row), item_slots=_i32(item_slots), item_group=_i32(item_group), item_start=_i32(item_start),
        item_len=_i32(item_len), group_items=_csr(item_group, B * H * n_seg),
    )
