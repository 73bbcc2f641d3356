"""`balance_heads`: the order in which Ulysses deals heads to ranks, against brute force over every split."""

import itertools

import pytest
import torch

from vmoba.parallel import balance_heads


def _group_loads(loads, order, ranks):
    return loads[order].view(ranks, -1).sum(1)


def _best_max_load(loads, ranks):
    """The smallest possible largest group, over every split into equal groups (brute force)."""
    H = loads.numel()
    best = float("inf")

    def split(rest, groups):
        nonlocal best
        if not rest:
            best = min(best, max(float(loads[list(g)].sum()) for g in groups))
            return
        first, others = rest[0], rest[1:]
        for mates in itertools.combinations(others, H // ranks - 1):
            split([h for h in others if h not in mates], groups + [(first, *mates)])

    split(list(range(H)), [])
    return best


def test_heavy_heads_are_spread():
    loads = torch.tensor([8.0, 8.0, 8.0, 1.0, 1.0, 1.0])
    order = balance_heads(loads, 3)
    assert sorted(order.tolist()) == list(range(6))
    assert _group_loads(loads, order, 3).tolist() == [9.0, 9.0, 9.0]


@pytest.mark.parametrize("ranks", [2, 4])
def test_near_the_best_split(ranks):
    g = torch.Generator().manual_seed(ranks)
    for _ in range(20):
        loads = torch.rand(8, generator=g, dtype=torch.float64) + 0.5
        order = balance_heads(loads, ranks)
        assert sorted(order.tolist()) == list(range(8))
        got = float(_group_loads(loads, order, ranks).max())
        best = _best_max_load(loads, ranks)
        assert best <= got <= best * 1.15
        assert got <= float(_group_loads(loads, torch.arange(8), ranks).max()) + 1e-12


def test_heads_must_split_evenly():
    with pytest.raises(ValueError, match="5 heads"):
        balance_heads(torch.ones(5), 2)
