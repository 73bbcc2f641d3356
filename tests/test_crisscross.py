import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vmoba
from vmoba.crisscross import (
    CrissCrossAttention,
    CrissCrossAttention3D,
    RecurrentCrissCrossAttention,
    crisscross_flops,
    non_local_flops,
)


def criss_cross_mask(shape):
    """[P, P] bool: position j is on one of position i's lines (same coordinates but for one axis)."""
    coords = list(itertools.product(*(range(n) for n in shape)))
    mask = torch.zeros(len(coords), len(coords), dtype=torch.bool)
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            mask[i, j] = sum(u != v for u, v in zip(a, b)) <= 1
    return mask


def dense_reference(module, x):
    """Full attention over all positions with an explicit criss-cross mask, float64, straight from the weights."""
    B, C = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.double().reshape(B, C, -1)

    def proj(conv):
        return torch.einsum("oc,bcp->bop", conv.weight.double().reshape(conv.out_channels, C), flat) + conv.bias.double()[None, :, None]

    q, k, v = proj(module.query), proj(module.key), proj(module.value)
    energy = torch.einsum("bcp,bcr->bpr", q, k)  # no scaling
    energy = energy.masked_fill(~criss_cross_mask(spatial), float("-inf"))
    out = torch.einsum("bpr,bcr->bcp", torch.softmax(energy, -1), v)
    return (module.gamma.double() * out + flat).reshape(x.shape)


@pytest.mark.parametrize("shape", [(5, 7), (1, 4), (6, 1), (3, 3)])
def test_2d_matches_dense_masked_attention(shape):
    m = CrissCrossAttention(16).double()
    torch.nn.init.normal_(m.gamma)
    x = torch.randn(2, 16, *shape, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_reference(m, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 3, 2), (4, 1, 1)])
def test_3d_matches_dense_masked_attention(shape):
    m = CrissCrossAttention3D(8).double()
    torch.nn.init.normal_(m.gamma)
    x = torch.randn(1, 8, *shape, dtype=torch.float64)
    torch.testing.assert_close(m(x), dense_reference(m, x), rtol=1e-10, atol=1e-10)


def test_line_lengths_match_the_design():
    assert criss_cross_mask((5, 7)).sum(1).unique().tolist() == [5 + 7 - 1]
    assert criss_cross_mask((3, 4, 5)).sum(1).unique().tolist() == [3 + 4 + 5 - 2]


def test_fresh_module_is_identity_and_float32_is_close():
    x = torch.randn(2, 32, 6, 5)
    assert torch.equal(CrissCrossAttention(32)(x), x)
    m = CrissCrossAttention(32)
    m.gamma.data.fill_(0.7)
    torch.testing.assert_close(m(x).double(), dense_reference(m, x), rtol=1e-4, atol=1e-4)


def test_recurrence_reaches_every_position():
    H, W = 6, 7
    for R, expect_all in ((1, False), (2, True)):
        torch.manual_seed(0)
        m = RecurrentCrissCrossAttention(8, recurrence=R).double()
        m.cca.gamma.data.fill_(1.0)
        x = torch.randn(1, 8, H, W, dtype=torch.float64, requires_grad=True)
        m(x)[0, :, 2, 3].sum().backward()
        reached = x.grad[0].abs().sum(0) > 0
        if expect_all:
            assert reached.all()
        else:  # one pass: exactly the row and column of (2, 3)
            expected = torch.zeros(H, W, dtype=torch.bool)
            expected[2, :] = True
            expected[:, 3] = True
            assert torch.equal(reached, expected)


def test_3d_recurrence_three_reaches_everything():
    m = RecurrentCrissCrossAttention(8, recurrence=3, volumetric=True).double()
    m.cca.gamma.data.fill_(1.0)
    x = torch.randn(1, 8, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    m(x)[0, :, 1, 2, 3].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()


def test_memory_is_linear_in_positions_times_lines():
    H = W = 40
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    m = RecurrentCrissCrossAttention(16)
    x = torch.randn(1, 16, H, W, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x).sum().backward()
    positions = H * W
    # the largest saved tensor is the energies of every position over its row and column, never P x P
    assert max(sizes) == positions * (H + W)
    assert max(sizes) < positions * positions / 10


def test_flop_formula_counts_the_work_done():
    for module, x, kwargs in (
        (RecurrentCrissCrossAttention(32), torch.randn(1, 32, 9, 7), {}),
        (RecurrentCrissCrossAttention(24, recurrence=3), torch.randn(1, 24, 5, 11), {"recurrence": 3}),
        (RecurrentCrissCrossAttention(16, volumetric=True), torch.randn(1, 16, 3, 6, 5), {"frames": 3}),
    ):
        with FlopCounterMode(display=False) as counter:
            module(x)
        H, W = x.shape[-2:]
        assert counter.get_total_flops() == crisscross_flops(H, W, x.shape[1], **kwargs)


def test_non_local_formula_counts_dense_attention():
    # a non-local block written out: the same projections, then attention over every position
    C, qk, H, W = 32, 4, 6, 5
    q, k, v = torch.nn.Conv2d(C, qk, 1), torch.nn.Conv2d(C, qk, 1), torch.nn.Conv2d(C, C, 1)
    x = torch.randn(1, C, H, W)
    with FlopCounterMode(display=False) as counter:
        e = torch.einsum("bcp,bcr->bpr", q(x).flatten(2), k(x).flatten(2))
        torch.einsum("bpr,bcr->bcp", e.softmax(-1), v(x).flatten(2))
    assert counter.get_total_flops() == non_local_flops(H, W, C, qk)


def test_ccnet_cost_claim():
    # CCNet: at 97x97, C = 512, C' = 64, a non-local block costs 108 GFLOPs, recurrent criss-cross (R=2) 16.5
    assert round(non_local_flops(97, 97, 512, 64) / 1e9) == 108
    assert round(crisscross_flops(97, 97, 512, 64, recurrence=2) / 1e9, 1) == 16.5


def test_errors_and_exports():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        CrissCrossAttention(8)(torch.randn(8, 4, 4))
    with pytest.raises(ValueError, match="built for 8 channels"):
        CrissCrossAttention(8)(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        CrissCrossAttention3D(8)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="recurrence"):
        RecurrentCrissCrossAttention(8, recurrence=0)
    assert vmoba.CrissCrossAttention is CrissCrossAttention
    assert vmoba.CrissCrossAttention3D is CrissCrossAttention3D
    assert vmoba.RecurrentCrissCrossAttention is RecurrentCrissCrossAttention
