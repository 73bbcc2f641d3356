"""Work lists of the Triton attention kernels, against loops over the selection."""

import pytest
import torch

from vmoba import get_partition
from vmoba.kernels import work_lists as wl
from vmoba.layout import BlockSelection


def _tile_selection(device="cpu", B=2, H=2, seed=0):
    part = get_partition((3, 5, 7), "3d", (2, 2, 3), device)
    tiles = part.tiles(5)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, H, tiles.num_tiles, part.num_blocks, generator=g) < 0.4
    return BlockSelection(part, tiles, "tile", mask.to(device))


@pytest.mark.parametrize("text_len", [0, 4])
def test_tile_lists_match_loops(text_len):
    sel = _tile_selection()
    part, tiles = sel.partition, sel.tiles
    B, H, nt, nb = sel.mask.shape
    seg_offsets = part.offsets.tolist() + ([part.offsets[-1].item() + text_len] if text_len else [])
    chosen = lambda b, h, t, seg: seg == nb or bool(sel.mask[b, h, t, seg])  # noqa: E731 (text: always)

    fwd = wl.tile_lists(sel, text_len, block_n=4)
    keys = fwd.chunks
    key_runs = [(s, e, seg) for s, e, seg in zip(keys.start.tolist(), keys.end.tolist(), keys.segment.tolist())]
    want_runs = [(p, min(p + 4, seg_offsets[j + 1]), j) for j in range(len(seg_offsets) - 1)
                 for p in range(seg_offsets[j], seg_offsets[j + 1], 4)]
    assert key_runs == want_runs
    for row, (b, h, t) in enumerate((b, h, t) for b in range(B) for h in range(H) for t in range(nt)):
        listed = fwd.table[row, : fwd.count[row]].tolist()
        assert listed == [c for c, (_, _, seg) in enumerate(key_runs) if chosen(b, h, t, seg)]

    rev = wl.tile_reverse_lists(sel, text_len, block_m=3)
    q_runs = list(zip(rev.queries.start.tolist(), rev.queries.length.tolist(), rev.queries.segment.tolist()))
    to = tiles.offsets.tolist()
    assert q_runs == [(p, min(3, to[t + 1] - p), t) for t in range(nt) for p in range(to[t], to[t + 1], 3)]
    n_seg = len(seg_offsets) - 1
    for row, (b, h, seg) in enumerate((b, h, s) for b in range(B) for h in range(H) for s in range(n_seg)):
        listed = rev.table[row, : rev.count[row]].tolist()
        assert listed == [i for i, (_, _, t) in enumerate(q_runs) if chosen(b, h, t, seg)]


def test_tile_lists_build_without_reading_the_device():
    # meta tensors hold no data: any read-back (.item, .tolist, nonzero, data-dependent sizes) raises here,
    # as it would cost a host synchronisation on a GPU
    sel = _tile_selection("meta")
    fwd = wl.tile_lists(sel, 3, block_n=4)
    rev = wl.tile_reverse_lists(sel, 3, block_m=3)
    assert fwd.table.device.type == rev.table.device.type == "meta"
    assert rev.table.shape == (2 * 2 * (sel.partition.num_blocks + 1), rev.queries.start.numel() + 1)
