"""Work lists of the Triton attention kernels, built with torch from a `BlockSelection`.

Keys live in blocked order with the text keys (if any) appended as one more *segment*; every list below
is CSR (a pointer array plus entries) of int32.

Tile granularity (``TileLists``): key chunks (runs of at most ``block_n`` keys of one segment); for every
``(batch*head, tile)`` a row of a table listing the key chunks of the segments it selected (forward, dQ;
built without a host sync, which matters at short sequences); for every ``(batch*head, segment)`` the
query chunks (runs of at most ``block_m`` rows of one tile) of the tiles that selected it (dK/dV).

Every list is built once per selection and kept on it (`BlockSelection.work_lists`): the backward walks
the lists the forward built.

Token granularity (``PairLists``): a *pair* is (query, segment it selected), numbered query-major, so
the pairs of one query are consecutive *slots*; per-pair partial results live in those slots. *Items* are
runs of at most ``block_m`` pairs of one segment (the forward / dQ work units: queries grouped by key
block); items of one segment are consecutive, which the dK/dV kernel walks.
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


def segment_offsets(selection: BlockSelection, text_len: int) -> torch.Tensor:
    offsets = selection.partition.offsets
    if text_len:
        offsets = torch.cat([offsets, offsets[-1:] + text_len])
    return offsets


def with_text_column(mask: torch.Tensor, text_len: int) -> torch.Tensor:
    """Append the always-selected text segment to a [..., n_blocks] selection."""
    if not text_len:
        return mask
    return torch.cat([mask, mask.new_ones(*mask.shape[:-1], 1)], -1)


@dataclass
class KeyChunks:
    start: torch.Tensor  # [n_chunks]
    end: torch.Tensor
    segment: torch.Tensor
    first_of_segment: torch.Tensor  # [n_seg] (int64, for building lists)
    per_segment: torch.Tensor  # [n_seg] (int64)


def key_chunks(seg_offsets: torch.Tensor, block_n: int) -> KeyChunks:
    sizes = seg_offsets[1:] - seg_offsets[:-1]
    per_segment = (sizes + block_n - 1) // block_n
    segment, rank = _expand(torch.zeros_like(per_segment), per_segment)
    start = seg_offsets[segment] + rank * block_n
    end = torch.minimum(start + block_n, seg_offsets[segment + 1])
    first = torch.cumsum(per_segment, 0) - per_segment
    return KeyChunks(_i32(start), _i32(end), _i32(segment), first, per_segment)


@dataclass
class TileLists:
    seg_offsets: torch.Tensor
    chunks: KeyChunks
    table: torch.Tensor  # [B*H*n_tiles, width] key-chunk ids, ascending; the first `count` are valid
    count: torch.Tensor  # [B*H*n_tiles]
    n_seg: int


@functools.lru_cache(maxsize=32)
def _cached_key_chunks(offsets: tuple, block_n: int, device: str) -> KeyChunks:
    return key_chunks(torch.tensor(offsets, device=device), block_n)


def tile_lists(selection: BlockSelection, text_len: int, block_n: int) -> TileLists:
    return selection.work_lists(("tile", text_len, block_n), lambda: _tile_lists(selection, text_len, block_n))


def _tile_lists(selection: BlockSelection, text_len: int, block_n: int) -> TileLists:
    B, H, nt, _ = selection.mask.shape
    seg_offsets = segment_offsets(selection, text_len)
    n_seg = seg_offsets.numel() - 1
    chunks = _cached_key_chunks(tuple(seg_offsets.tolist()), block_n, str(seg_offsets.device))
    n_chunks = chunks.start.numel()
    chosen = with_text_column(selection.mask, text_len).view(B * H * nt, n_seg)[:, chunks.segment.long()]
    count = chosen.sum(-1, dtype=torch.int32)
    slot = torch.cumsum(chosen, -1, dtype=torch.int32) - 1
    slot = torch.where(chosen, slot, n_chunks)  # unchosen chunks land in a spare last column
    ids = torch.arange(n_chunks, device=chosen.device, dtype=torch.int32).expand_as(slot)
    table = torch.zeros(B * H * nt, n_chunks + 1, device=chosen.device, dtype=torch.int32)
    table.scatter_(1, slot.long(), ids)
    return TileLists(_i32(seg_offsets), chunks, table, count, n_seg)


def tile_reverse_lists(selection: BlockSelection, lists: TileLists, text_len: int, block_m: int):
    """(q_start, q_end, rev_ptr, rev_chunks): query chunks, and per (batch*head, segment) those computing it."""
    key = ("tile_reverse", text_len, lists.chunks.start.numel(), block_m)
    return selection.work_lists(key, lambda: _tile_reverse_lists(selection, lists, text_len, block_m))


def _tile_reverse_lists(selection: BlockSelection, lists: TileLists, text_len: int, block_m: int):
    tiles = selection.tiles
    B, H, nt, _ = selection.mask.shape
    per_tile = (tiles.sizes + block_m - 1) // block_m
    q_tile, q_rank = _expand(torch.zeros_like(per_tile), per_tile)
    q_start = tiles.offsets[:-1][q_tile] + q_rank * block_m
    q_end = torch.minimum(q_start + block_m, tiles.offsets[1:][q_tile])
    first_q = torch.cumsum(per_tile, 0) - per_tile
    mask = with_text_column(selection.mask, text_len)
    bh, seg, t = mask.permute(0, 1, 3, 2).reshape(B * H, lists.n_seg, nt).nonzero(as_tuple=True)
    owner, q_chunks = _expand(first_q[t], per_tile[t])
    rev_ptr = _csr((bh * lists.n_seg + seg)[owner], B * H * lists.n_seg)
    return _i32(q_start), _i32(q_end), rev_ptr, _i32(q_chunks)


@dataclass
class PairLists:
    seg_offsets: torch.Tensor
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
    seg_offsets = segment_offsets(selection, text_len)[lo : hi + 1]
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
        seg_offsets=_i32(seg_offsets), n_seg=n_seg, num_pairs=row.numel(), query_ptr=query_ptr,
        pair_row=_i32(row), item_slots=_i32(item_slots), item_group=_i32(item_group), item_start=_i32(item_start),
        item_len=_i32(item_len), group_items=_csr(item_group, B * H * n_seg),
    )
