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


# -- token-level criss-cross attention and its processor -------------------------------------------------


def _line_mask(grid, text_len, text_first):
    """[S, S] float64-reference mask: same (t, h), same (t, w) or same (h, w), plus every text token."""
    T, H, W = grid
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    t, h, w = t.flatten(), h.flatten(), w.flatten()
    video = (((t[:, None] == t) & (h[:, None] == h)) | ((t[:, None] == t) & (w[:, None] == w))
             | ((h[:, None] == h) & (w[:, None] == w)))
    Sv = T * H * W
    S = Sv + text_len
    mask = torch.ones(S, S, dtype=torch.bool)
    vs = slice(text_len, S) if text_first else slice(0, Sv)
    mask[vs, vs] = video
    return mask


@pytest.mark.parametrize("grid", [(3, 4, 5), (1, 3, 3), (4, 1, 2)])
@pytest.mark.parametrize("text_len, text_first", [(0, True), (3, True), (3, False)])
def test_token_criss_cross_matches_dense_masked_attention(grid, text_len, text_first):
    from vmoba import criss_cross_attention

    torch.manual_seed(0)
    S = grid[0] * grid[1] * grid[2] + text_len
    q, k, v = (torch.randn(2, S, 3, 8, dtype=torch.float64) for _ in range(3))
    out = criss_cross_attention(q, k, v, grid, text_len=text_len, text_first=text_first)
    mask = _line_mask(grid, text_len, text_first)
    logits = torch.einsum("bihd,bjhd->bhij", q, k) / 8**0.5
    ref = torch.einsum("bhij,bjhd->bihd", logits.masked_fill(~mask, float("-inf")).softmax(-1), v)
    torch.testing.assert_close(out, ref)
    # each video query sees T + H + W - 2 video keys
    assert int(mask[text_len if text_first else 0].sum()) == sum(grid) - 2 + text_len


def test_token_criss_cross_errors():
    from vmoba import criss_cross_attention

    q = torch.randn(1, 24, 2, 4)
    with pytest.raises(ValueError, match="grid"):
        criss_cross_attention(q, q, q, (2, 3, 5))
    with pytest.raises(ValueError, match="text_len"):
        criss_cross_attention(q, q, q, (2, 3, 4), text_len=30)


def test_criss_cross_processor_in_a_wan_transformer():
    diffusers = pytest.importorskip("diffusers")
    import vmoba

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                            in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32,
                                            num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                            rope_max_seq_len=32).double()
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 8, 12, dtype=torch.float64), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 7, 16, dtype=torch.float64), return_dict=False)
    with torch.no_grad():
        reference = model(**inputs)[0]
        procs = vmoba.enable(model, processor=vmoba.CrissCrossAttnProcessor)
        out = model(**inputs)[0]
    proc = procs["transformer"]
    assert isinstance(proc, vmoba.CrissCrossAttnProcessor) and sorted(proc.last_stats) == [0, 1]
    assert proc.last_stats[0].density == pytest.approx((3 + 4 + 6 - 2) / 72)
    assert torch.isfinite(out).all() and (out - reference).abs().max() > 1e-6
    vmoba.disable(model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs)[0], reference)
