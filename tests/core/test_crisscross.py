import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import vmoba
from _reference import naive_criss_cross
from vmoba.crisscross import (
    CrissCrossAttention,
    CrissCrossAttention3D,
    RecurrentCrissCrossAttention,
    criss_cross_attention,
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
    q = torch.randn(1, 24, 2, 4)
    with pytest.raises(ValueError, match="grid"):
        criss_cross_attention(q, q, q, (2, 3, 5))
    with pytest.raises(ValueError, match="text_len"):
        criss_cross_attention(q, q, q, (2, 3, 4), text_len=30)
    # a mask over text tokens that do not exist used to be accepted and ignored
    with pytest.raises(ValueError, match="text_mask was given but text_len=0"):
        criss_cross_attention(q, q, q, (2, 3, 4), text_mask=torch.ones(1, 3, dtype=torch.bool))
    grid = (2, 3, 3)  # 18 video tokens + 6 text tokens
    bad = [
        (dict(recurrence=0), ValueError, "recurrence"),
        (dict(recurrence=True), TypeError, "recurrence"),
        (dict(recurrence=1.5), TypeError, "recurrence"),
        (dict(text_len=6, text_first="yes"), TypeError, "text_first"),
        (dict(text_len=6, scale=float("nan")), ValueError, "scale"),
        (dict(text_len=6, scale=0.0), ValueError, "scale"),
        (dict(text_len=6, scale="1"), TypeError, "scale"),
        (dict(text_len=6, text_mask=torch.ones(1, 5, dtype=torch.bool)), ValueError, r"text_mask .*\(1, 6\)"),
        (dict(text_len=6, text_mask=torch.ones(1, 6)), ValueError, "bool"),
        (dict(text_len=6, text_mask=[True] * 6), TypeError, "text_mask"),
        (dict(text_len=6, text_mask=torch.zeros(1, 6, dtype=torch.bool)), ValueError, "no valid text token"),
        (dict(text_len=-1), ValueError, "text_len"),
        (dict(text_len=6.0), TypeError, "text_len"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            criss_cross_attention(q, q, q, grid, **kwargs)
    # numbers of every numeric type are accepted
    out = criss_cross_attention(q, q, q, grid, text_len=np.int64(6), recurrence=np.int32(2), scale=np.float32(0.5))
    torch.testing.assert_close(out, criss_cross_attention(q, q, q, grid, text_len=6, recurrence=2, scale=0.5))


# -- the token form against a naive per-position loop in float64 ------------------------------------------

TOKEN_CASES = [  # grid, text_len, text_first, masked
    ((3, 4, 5), 0, True, False),
    ((1, 4, 5), 0, True, False),
    ((3, 1, 4), 3, True, False),
    ((2, 3, 4), 4, False, False),
    ((2, 3, 3), 4, True, True),
    ((1, 3, 4), 5, False, True),
]


@pytest.mark.parametrize("recurrence", [1, 2])
@pytest.mark.parametrize("grid, text_len, text_first, masked", TOKEN_CASES)
def test_token_form_matches_per_position_loop(grid, text_len, text_first, masked, recurrence):
    g = torch.Generator().manual_seed(hash((grid, text_len, text_first, masked)) % 1000)
    S = math.prod(grid) + text_len
    q, k, v = (torch.randn(2, S, 2, 6, generator=g, dtype=torch.float64) for _ in range(3))
    mask = None
    if masked:
        mask = torch.rand(2, text_len, generator=g) < 0.6
        mask[:, 0] = True
        mask[1, -1] = False
    kwargs = dict(text_len=text_len, text_first=text_first, text_mask=mask, recurrence=recurrence)
    want = naive_criss_cross(q, k, v, grid, **kwargs)
    torch.testing.assert_close(criss_cross_attention(q, k, v, grid, **kwargs), want, rtol=1e-10, atol=1e-10)
    # float32 inputs: float32 accumulation, close to the float64 loop
    got32 = criss_cross_attention(q.float(), k.float(), v.float(), grid, **kwargs)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("recurrence", [1, 2])
@pytest.mark.parametrize("grid, text_len, text_first, masked", [TOKEN_CASES[0], TOKEN_CASES[3], TOKEN_CASES[5]])
def test_token_form_gradients_match_per_position_loop(grid, text_len, text_first, masked, recurrence):
    g = torch.Generator().manual_seed(7)
    S = math.prod(grid) + text_len
    inputs = [torch.randn(1, S, 2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = None
    if masked:
        mask = torch.ones(1, text_len, dtype=torch.bool)
        mask[0, 1] = False
    upstream = torch.randn(1, S, 2, 4, generator=g, dtype=torch.float64)
    kwargs = dict(text_len=text_len, text_first=text_first, text_mask=mask, recurrence=recurrence, scale=0.7)
    got = torch.autograd.grad((criss_cross_attention(*inputs, grid, **kwargs) * upstream).sum(), inputs)
    want = torch.autograd.grad((naive_criss_cross(*inputs, grid, **kwargs) * upstream).sum(), inputs)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=f"d{name}")


def _reach(grid, recurrence, text_len=0):
    """[Sv, Sv] bool: video output i depends on some input (q, k or v) of video token j (full Jacobian)."""
    S = math.prod(grid) + text_len
    q, k, v = (torch.randn(1, S, 1, 2, dtype=torch.float64) for _ in range(3))

    def f(q, k, v):
        return criss_cross_attention(q, k, v, grid, text_len=text_len, recurrence=recurrence)

    jac = torch.autograd.functional.jacobian(f, (q, k, v))  # each [1, S, 1, 2, 1, S, 1, 2]
    dep = sum(j.abs().sum((0, 2, 3, 4, 6, 7)) for j in jac) > 0  # [S_out, S_in]
    return dep[text_len:, text_len:]


def _differ_at_most(grid, n):
    coords = torch.tensor(list(itertools.product(*(range(g) for g in grid))))
    return (coords[:, None] != coords[None]).sum(-1) <= n


def test_recurrence_two_connects_every_video_pair_on_a_2d_grid():
    for grid in ((1, 4, 5), (4, 1, 3), (3, 4, 1)):
        one = _reach(grid, 1)
        assert torch.equal(one, _differ_at_most(grid, 1)) and not one.all()  # one loop: exactly the lines
        assert _reach(grid, 2).all()


def test_recurrence_on_a_3d_grid_and_through_text():
    grid = (2, 3, 4)
    assert torch.equal(_reach(grid, 1), _differ_at_most(grid, 1))
    two = _reach(grid, 2)
    assert torch.equal(two, _differ_at_most(grid, 2)) and not two.all()  # each loop changes one coordinate
    assert _reach(grid, 3).all()
    # text tokens attend densely, so a second loop reaches every video token through them
    assert not _reach(grid, 1, text_len=2).all()
    assert _reach(grid, 2, text_len=2).all()


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


def test_token_form_memory_stays_within_the_budget():
    # 2048 video tokens, 4 heads: every logit of a head at once would be 4 x 2048 x 40 float64 values (2.5 MiB);
    # with a 1 MiB budget the logits come in runs of a few frames of one head
    grid, L = (8, 16, 16), 8
    S = math.prod(grid) + L
    q, k, v = (torch.randn(1, S, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(1, L, dtype=torch.bool)
    mask[0, 3] = False
    kwargs = dict(text_len=L, text_mask=mask, recurrence=2)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        small = criss_cross_attention(q, k, v, grid, memory_budget_mb=1, **kwargs)
    assert max(saved) <= 1 << 20
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        whole = criss_cross_attention(q, k, v, grid, memory_budget_mb=1024, **kwargs)
    assert max(saved) >= 4 * 2048 * 40 * 8  # one run: every logit of every head
    torch.testing.assert_close(small, whole, rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # the path without autograd writes runs into the output in place
        torch.testing.assert_close(criss_cross_attention(q, k, v, grid, memory_budget_mb=1, **kwargs), whole)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        criss_cross_attention(q, k, v, grid, memory_budget_mb=0, **kwargs)


TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}


@settings(max_examples=40, deadline=None)
@given(grid=st.tuples(*(st.integers(1, 3),) * 3), text_len=st.integers(0, 3), text_first=st.booleans(),
       masked=st.booleans(), recurrence=st.integers(1, 2), heads=st.integers(1, 2), dim=st.integers(1, 5),
       dtype=st.sampled_from(list(TOLERANCE)), budget=st.sampled_from([1, 256]), seed=st.integers(0, 2**16))
def test_token_form_property(grid, text_len, text_first, masked, recurrence, heads, dim, dtype, budget, seed):
    """Any grid, text layout, mask, dtype and budget: finite and equal to the float64 per-position loop."""
    g = torch.Generator().manual_seed(seed)
    S = math.prod(grid) + text_len
    q, k, v = (torch.randn(2, S, heads, dim, generator=g).to(dtype) for _ in range(3))
    mask = None
    if masked and text_len:
        mask = torch.rand(2, text_len, generator=g) < 0.5
        mask[:, seed % text_len] = True
    kwargs = dict(text_len=text_len, text_first=text_first, text_mask=mask, recurrence=recurrence)
    out = criss_cross_attention(q, k, v, grid, memory_budget_mb=budget, **kwargs)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out).all()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), naive_criss_cross(q, k, v, grid, **kwargs), rtol=tol, atol=tol)


def test_module_arguments_checked_like_every_other_integer():
    # bools and floats were ValueErrors, numpy integers were refused
    np = __import__("numpy")
    for bad in (True, 1.5):
        with pytest.raises(TypeError, match="recurrence"):
            RecurrentCrissCrossAttention(8, recurrence=bad)
        with pytest.raises(TypeError, match="in_channels"):
            CrissCrossAttention(bad)
    with pytest.raises(ValueError, match="in_channels"):
        CrissCrossAttention3D(0)
    module = RecurrentCrissCrossAttention(np.int64(8), recurrence=np.int64(2))
    assert module.recurrence == 2 and type(module.recurrence) is int
    assert module.cca.in_channels == 8 and type(module.cca.in_channels) is int
    x = torch.randn(1, 8, 3, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(module(x), x)  # gamma starts at 0: the identity
