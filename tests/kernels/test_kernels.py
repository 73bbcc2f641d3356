"""Triton kernels against their PyTorch references, in the interpreter on CPU (TRITON_INTERPRET=1, set by
conftest) and compiled on a GPU (the `gpu` tests). Kernel outputs are poisoned before every launch."""

import math

import pytest
import torch

from _reference import brute_select, dense_masked_attention
from vmoba import VMoBAConfig, get_partition, vmoba_attention
from vmoba.kernels import _triton
from vmoba.kernels.block_pool import pool_segments_reference, pool_segments_triton
from vmoba.kernels.sparse_attention import block_sparse_attention_torch
from vmoba.kernels.sparse_attention_triton import block_sparse_attention_triton
from vmoba.selection import compute_selection

pytestmark = pytest.mark.skipif(not _triton.triton_available, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() and not _triton.INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(_triton, "POISON", True)


def rand(*shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


GRIDS = [((3, 4, 5), "3d", (2, 3, 2)), ((2, 5, 7), "2d", (2, 3)), ((5, 3, 3), "1d", (2,))]


@pytest.mark.parametrize("grid, scheme, chunk", GRIDS)
def test_pool_matches_reference(grid, scheme, chunk):
    part = get_partition(grid, scheme, chunk, DEVICE)
    x = rand(2, part.num_tokens, 3, 20, seed=1)
    for offsets in (part.offsets, part.tiles(4).offsets):
        got = pool_segments_triton(x, part.order, offsets)
        want = pool_segments_reference(x, part.order, offsets)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pool_offsets_past_int32():
    # b * stride_b passes 2**31 at b = 2: a 32-bit offset wraps and reads the wrong rows. The buffer is
    # virtual (only the pages written take memory), with room below the view so a wrapped read stays inside.
    part = get_partition((2, 2, 2), "3d", (1, 2, 1), DEVICE)
    B, S, H, D = 3, part.num_tokens, 2, 4
    stride_b, below = (1 << 30) + 64, 1 << 31
    storage = torch.empty(below + B * stride_b, dtype=torch.int8, device=DEVICE)
    x = storage.as_strided((B, S, H, D), (stride_b, H * D, D, 1), below)
    g = torch.Generator().manual_seed(5)
    x.copy_(torch.randint(-100, 100, (B, S, H, D), generator=g, dtype=torch.int8))
    got = pool_segments_triton(x, part.order, part.offsets)
    torch.testing.assert_close(got, pool_segments_reference(x, part.order, part.offsets), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("select_mode", ["threshold", "topk"])
@pytest.mark.parametrize("granularity", ["token", "tile"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_fused_selection_matches_brute_force(select_mode, granularity, threshold):
    grid = (4, 5, 6)
    cfg = VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 3), st_chunk=(2, 2, 3), select_mode=select_mode,
                      threshold=threshold, topk=(2, 4, 5), granularity=granularity, query_tile=5)
    q, k = rand(2, 120, 2, 16, seed=2), rand(2, 120, 2, 16, seed=3)
    robust_total = 0.0
    for layer in range(3):
        scheme = cfg.scheme_for_layer(layer)
        part = get_partition(grid, scheme, cfg.chunk_for_scheme(scheme), DEVICE)
        got = compute_selection(q, k, part, cfg, scheme, backend="triton").token_mask().cpu()
        want, fragile = brute_select(
            q.cpu(), k.cpu(), grid, scheme, cfg.chunk_for_scheme(scheme), select_mode=select_mode,
            threshold=threshold, topk=cfg.topk_for_scheme(scheme), granularity=granularity, query_tile=5, tol=2e-6,
        )
        assert torch.equal(got[~fragile], want[~fragile])
        robust_total += (~fragile).float().mean().item()
    assert robust_total / 3 > 0.9


def test_fused_selection_flat_scores_and_ties():
    # constant keys: flat gate, all n = 0: threshold > 0 keeps everything, threshold 0 the lowest-index other
    grid = (4, 2, 2)
    q = rand(1, 16, 1, 16, seed=4)
    k = torch.ones(1, 16, 1, 16, device=DEVICE)
    part = get_partition(grid, "1d", (1,), DEVICE)
    cfg = VMoBAConfig(layer_schedule=("1d",), temporal_chunk=1)
    assert compute_selection(q, k, part, cfg, "1d", backend="triton").token_mask().all()
    sel = compute_selection(q, k, part, cfg.replace(threshold=0.0), "1d", backend="triton").token_mask()
    own = part.block_ids.view(1, 1, -1)
    first_other = torch.where(own == 0, 1, 0)
    expected = torch.zeros_like(sel)
    expected.scatter_(-1, own.unsqueeze(-1), True).scatter_(-1, first_other.unsqueeze(-1), True)
    assert torch.equal(sel, expected)


def _case(grid, scheme, chunk, granularity, text_len, B=2, H=2, D=16, seed=0, threshold=0.3):
    cfg = VMoBAConfig(layer_schedule=(scheme,), temporal_chunk=chunk[0] if scheme == "1d" else 2,
                      spatial_chunk=chunk if scheme == "2d" else (3, 4), st_chunk=chunk if scheme == "3d" else (4, 6, 4),
                      threshold=threshold, granularity=granularity, query_tile=6)
    S = math.prod(grid)
    q, k, v = (rand(B, S, H, D, seed=seed + i) for i in range(3))
    tk = tv = None
    if text_len:
        tk, tv = rand(B, text_len, H, D, seed=seed + 3), rand(B, text_len, H, D, seed=seed + 4)
    part = get_partition(grid, scheme, chunk, DEVICE)
    sel = compute_selection(q, k, part, cfg, scheme)
    return q, k, v, tk, tv, sel


@pytest.mark.parametrize("grid, scheme, chunk", GRIDS)
@pytest.mark.parametrize("granularity", ["token", "tile"])
@pytest.mark.parametrize("text_len", [0, 3])
def test_forward_matches_torch_path(grid, scheme, chunk, granularity, text_len):
    q, k, v, tk, tv, sel = _case(grid, scheme, chunk, granularity, text_len)
    out, lse = block_sparse_attention_triton(q, k, v, sel, 0.25, tk, tv)
    ref_out, ref_lse = block_sparse_attention_torch(q.double(), k.double(), v.double(), sel, 0.25,
                                                    None if tk is None else tk.double(), None if tv is None else tv.double())
    assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-5
    assert (lse.double() - ref_lse.double()).abs().max() < 1e-4


@pytest.mark.parametrize("grid, scheme, chunk", GRIDS)
@pytest.mark.parametrize("granularity", ["token", "tile"])
@pytest.mark.parametrize("text_len", [0, 2])
def test_backward_matches_torch_path(grid, scheme, chunk, granularity, text_len):
    q, k, v, tk, tv, sel = _case(grid, scheme, chunk, granularity, text_len, B=1, seed=10)
    inputs = [x for x in (q, k, v, tk, tv) if x is not None]
    fast = [x.clone().requires_grad_() for x in inputs]
    ref = [x.double().clone().requires_grad_() for x in inputs]

    def call(fn, xs):
        q_, k_, v_ = xs[:3]
        tk_, tv_ = (xs[3], xs[4]) if len(xs) == 5 else (None, None)
        return fn(q_, k_, v_, sel, 0.3, tk_, tv_)

    out, lse = call(block_sparse_attention_triton, fast)
    ref_out, ref_lse = call(block_sparse_attention_torch, ref)
    w_out = rand(*out.shape, seed=20)
    w_lse = rand(*lse.shape, seed=21)
    # both outputs carry gradient: lse feeds merges with other attention results
    g_fast = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), fast)
    g_ref = torch.autograd.grad((ref_out * w_out.double()).sum() + (ref_lse * w_lse.double()).sum(), ref)
    for name, a, b in zip("q k v tk tv".split(), g_fast, g_ref):
        err = (a.double() - b).norm() / b.norm()
        assert err < 1e-4, f"d{name}: relative error {err:.2e}"


def test_vmoba_attention_triton_backend_end_to_end():
    grid = (3, 4, 6)
    S = math.prod(grid) + 4
    q, k, v = (rand(1, S, 2, 16, seed=30 + i) for i in range(3))
    for layer in range(3):
        for granularity in ("token", "tile"):
            cfg = VMoBAConfig(spatial_chunk=(2, 3), st_chunk=(2, 2, 3), granularity=granularity, query_tile=6)
            a = vmoba_attention(q, k, v, grid, layer, cfg.replace(backend="triton"), text_len=4, text_first=False)
            b = vmoba_attention(q, k, v, grid, layer, cfg.replace(backend="torch"), text_len=4, text_first=False)
            assert (a - b).norm() / b.norm() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", ["token", "tile"])
def test_gpu_half_precision_against_float64(dtype, granularity):
    grid = (6, 12, 16)
    S = math.prod(grid) + 7
    q, k, v = (rand(2, S, 4, 64, seed=40 + i, dtype=dtype).requires_grad_() for i in range(3))
    cfg = VMoBAConfig(granularity=granularity, backend="triton", spatial_chunk=(3, 4), st_chunk=(2, 6, 4))
    for layer in range(3):
        out = vmoba_attention(q, k, v, grid, layer, cfg, text_len=7)
        sel = compute_selection(q[:, 7:].detach(), k[:, 7:].detach(),
                                get_partition(grid, cfg.scheme_for_layer(layer),
                                              cfg.chunk_for_scheme(cfg.scheme_for_layer(layer)), DEVICE),
                                cfg, cfg.scheme_for_layer(layer), backend="triton")
        mask = torch.ones(2, 4, S, S, dtype=torch.bool, device=DEVICE)
        mask[:, :, 7:, 7:] = sel.dense_mask()
        qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = dense_masked_attention(qd, kd, vd, mask)
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2
        w = torch.randn_like(ref)
        g = torch.autograd.grad((out.double() * w).sum(), (q, k, v))
        g_ref = torch.autograd.grad((ref * w).sum(), (qd, kd, vd))
        for a, b in zip(g, g_ref):
            assert ((a.double() - b).norm() / b.norm()).item() < 1e-2


def test_token_path_in_segment_groups_matches_single_group(monkeypatch):
    # a tiny partial buffer forces one pass per few segments, with the running merge in between
    import vmoba.kernels.sparse_attention_triton as sat

    q, k, v, tk, tv, sel = _case((3, 4, 5), "3d", (2, 3, 2), "token", 3, B=1, seed=50)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, tk, tv)]
    ref = [x.double().clone().requires_grad_() for x in (q, k, v, tk, tv)]
    monkeypatch.setattr(sat, "PAIR_BUFFER_BYTES", 60 * (4 * 16 + 4))  # about 60 pairs per group
    assert len(sat._pair_groups(sel, 3, 16)) > 3
    out, lse = block_sparse_attention_triton(*inputs[:3], sel, 0.3, *inputs[3:])
    ref_out, ref_lse = block_sparse_attention_torch(*ref[:3], sel, 0.3, *ref[3:])
    assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-5
    assert (lse.double() - ref_lse.double()).abs().max() < 1e-4
    w = rand(*out.shape, seed=51)
    g = torch.autograd.grad((out * w).sum(), inputs)
    g_ref = torch.autograd.grad((ref_out * w.double()).sum(), ref)
    for a, b in zip(g, g_ref):
        assert (a.double() - b).norm() / b.norm() < 1e-4


@pytest.mark.parametrize("granularity", ["token", "tile"])
def test_backward_reuses_the_work_lists_of_the_forward(monkeypatch, granularity):
    import vmoba.kernels.work_lists as wl

    built = []
    for name in ("_tile_lists", "_tile_reverse_lists", "_segment_groups", "_pair_lists"):
        original = getattr(wl, name)
        monkeypatch.setattr(wl, name, lambda *a, _f=original, _n=name: built.append(_n) or _f(*a))
    q, k, v, tk, tv, sel = _case((3, 4, 5), "3d", (2, 3, 2), granularity, 2, B=1, seed=60)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, tk, tv)]
    out, _ = block_sparse_attention_triton(*inputs[:3], sel, 0.3, *inputs[3:])
    forward_built = list(built)
    torch.autograd.grad(out.sum(), inputs)
    # the interpreter's forward and backward use the same launch sizes: nothing is built twice
    assert len(built) == len(set(built)) and set(forward_built) <= set(built)
    assert set(forward_built) == ({"_tile_lists"} if granularity == "tile" else {"_segment_groups", "_pair_lists"})


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", ["token", "tile"])
def test_gpu_bf16_d128_ragged_3d_per_row_error(granularity):
    # production tiles (4x6x4 cubes) on a grid that leaves ragged edge blocks in every dimension, D=128,
    # text tokens in the forward and the backward; the worst row, not only the average, must stay close
    grid, L, H = (5, 14, 26), 16, 2
    S = math.prod(grid) + L
    q, k, v = (rand(1, S, H, 128, seed=70 + i, dtype=torch.bfloat16).requires_grad_() for i in range(3))
    cfg = VMoBAConfig(layer_schedule=("3d",), granularity=granularity, backend="triton", validate_inputs=False)
    out = vmoba_attention(q, k, v, grid, 0, cfg, text_len=L)
    part = get_partition(grid, "3d", cfg.st_chunk, DEVICE)
    sel = compute_selection(q[:, L:].detach(), k[:, L:].detach(), part, cfg, "3d", backend="triton")
    mask = torch.ones(1, H, S, S, dtype=torch.bool, device=DEVICE)
    mask[:, :, L:, L:] = sel.dense_mask()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = dense_masked_attention(qd, kd, vd, mask)

    def worst_row(a, b):  # max over rows of (max |error| in the row / max |value| in the row)
        return ((a.double() - b).abs().amax(-1) / b.abs().amax(-1).clamp_min(1e-6)).max().item()

    assert worst_row(out, ref) < 3e-2
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out.double() * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (qd, kd, vd))
    for name, a, b in zip("qkv", grads, ref_grads):
        assert ((a.double() - b).norm() / b.norm()).item() < 2e-2, name
        # the text keys and values get their video-query gradients from the sparse kernels' text segment
        assert ((a[:, :L].double() - b[:, :L]).norm() / b[:, :L].norm()).item() < 2e-2, f"text {name}"


@pytest.mark.gpu
def test_gpu_selection_with_1024_blocks_matches_torch_path():
    # the largest block count the fused selection kernel takes, against the PyTorch rules on the same scores
    grid = (2, 64, 64)
    cfg = VMoBAConfig(layer_schedule=("2d",), spatial_chunk=(2, 2), validate_inputs=False)
    part = get_partition(grid, "2d", (2, 2), DEVICE)
    assert part.num_blocks == 1024
    q, k = (rand(1, math.prod(grid), 2, 64, seed=80 + i) for i in range(2))
    got = compute_selection(q, k, part, cfg, "2d", backend="triton").mask
    want = compute_selection(q, k, part, cfg, "2d", backend="torch").mask
    # the two gates sum in different orders: only near-ties may differ
    assert (got != want).float().mean().item() < 1e-3
    assert torch.equal(got.sum(-1) >= 2, want.sum(-1) >= 2)
