import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _reference import brute_partition, brute_tiles
from vmoba import get_partition, partition_blocks
from vmoba.partition import num_blocks

grids = st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7))


@st.composite
def scheme_chunk(draw):
    scheme = draw(st.sampled_from(["1d", "2d", "3d"]))
    length = {"1d": 1, "2d": 2, "3d": 3}[scheme]
    return scheme, tuple(draw(st.integers(1, 5)) for _ in range(length))


@settings(max_examples=150, deadline=None)
@given(grid=grids, sc=scheme_chunk())
def test_partition_matches_loops(grid, sc):
    scheme, chunk = sc
    ids = partition_blocks(grid, scheme, chunk)
    assert ids.dtype == torch.long and ids.shape == (math.prod(grid),)
    assert ids.tolist() == brute_partition(grid, scheme, chunk)
    assert int(ids.max()) + 1 == num_blocks(grid, scheme, chunk)
    assert set(ids.tolist()) == set(range(num_blocks(grid, scheme, chunk)))  # no empty block


@settings(max_examples=80, deadline=None)
@given(grid=grids, sc=scheme_chunk(), query_tile=st.integers(1, 20))
def test_blocked_order_and_tiles(grid, sc, query_tile):
    scheme, chunk = sc
    part = get_partition(grid, scheme, chunk)
    ids = part.block_ids
    # blocked order: blocks contiguous, ascending, stable inside a block
    blocked = ids[part.order]
    assert torch.all(blocked[1:] >= blocked[:-1])
    for j in range(part.num_blocks):
        seg = part.order[part.offsets[j] : part.offsets[j + 1]]
        assert torch.equal(seg, torch.nonzero(ids == j).flatten())
    assert torch.equal(part.order[part.inverse], torch.arange(part.num_tokens))
    tiles = part.tiles(query_tile)
    expected = brute_tiles(ids.tolist(), query_tile)
    got = [part.order[tiles.offsets[t] : tiles.offsets[t + 1]].tolist() for t in range(tiles.num_tiles)]
    assert got == expected
    assert tiles.max_tile <= query_tile


def test_wan_480p_defaults():
    grid = (21, 30, 52)  # Wan2.1 480p x 81 frames: 32,760 tokens
    assert num_blocks(grid, "1d", 2) == 11
    assert num_blocks(grid, "2d", (3, 4)) == 10 * 13
    assert num_blocks(grid, "3d", (4, 6, 4)) == 6 * 5 * 13
    ids = partition_blocks(grid, "3d", (4, 6, 4))
    sizes = torch.bincount(ids)
    assert sizes.max() == 96 and sizes.min() == 24  # the last frame group holds one frame: ragged


@pytest.mark.parametrize("grid", [(0, 2, 2), (2, 2), (1.5, 2, 2), "abc"])
def test_bad_grid(grid):
    with pytest.raises(ValueError, match="grid"):
        partition_blocks(grid, "1d", 1)


@pytest.mark.parametrize("scheme, chunk", [("2d", 3), ("3d", (1, 2)), ("1d", 0), ("4d", 1)])
def test_bad_chunk(scheme, chunk):
    with pytest.raises(ValueError, match="scheme|chunk"):
        partition_blocks((2, 2, 2), scheme, chunk)
