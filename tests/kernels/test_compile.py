"""`torch.compile(fullgraph=True)` through `vmoba_attention`: selection and sparse attention are custom ops
with fake implementations and an autograd formula, so nothing breaks the graph; results and gradients
match eager mode. The op's backward, run eagerly, against float64 references."""

import math

import pytest
import torch

from vmoba import VMoBAConfig, get_partition, vmoba_attention
from vmoba.kernels import _triton
from vmoba.kernels.sparse_attention import block_sparse_attention_torch, block_sparse_attention_torch_backward
from vmoba.kernels.sparse_attention_op import block_sparse_attention
from vmoba.selection import compute_selection


def _inputs(S, seed, B=1, H=2, D=16, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, H, D, generator=g).to(device).requires_grad_() for _ in range(3)]


def _check(backend, granularity, compiler, text_len=5, seed=0, device="cpu"):
    grid = (3, 4, 6)
    cfg = VMoBAConfig(spatial_chunk=(2, 3), st_chunk=(2, 2, 3), granularity=granularity, query_tile=6,
                      validate_inputs=False, backend=backend)

    def step(q, k, v):
        return sum(vmoba_attention(q, k, v, grid, layer, cfg, text_len=text_len).square().sum() for layer in range(3))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    inputs = _inputs(math.prod(grid) + text_len, seed, device=device)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    want = step(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["token", "tile"])
def test_compiled_torch_backend_matches_eager(granularity):
    _check("torch", granularity, "aot_eager")


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", ["token", "tile"])
def test_compiled_triton_backend_on_gpu_matches_eager(granularity):
    _check("triton", granularity, "inductor", seed=9, device="cuda")


@pytest.mark.skipif(not (_triton.triton_available and _triton.INTERPRET), reason="CPU tensors: needs the Triton interpreter")
@pytest.mark.parametrize("granularity, text_len", [("token", 3), ("tile", 0)])
def test_triton_op_forward_and_backward_match_float64(granularity, text_len):
    # the op's own backward (a second custom op), called eagerly, against autograd through the float64
    # PyTorch path
    grid = (3, 4, 5)
    cfg = VMoBAConfig(layer_schedule=("3d",), st_chunk=(2, 3, 2), granularity=granularity, query_tile=4)
    q, k, v = _inputs(math.prod(grid), seed=3)
    text = _inputs(text_len, seed=4)[:2] if text_len else []
    sel = compute_selection(q.detach(), k.detach(), get_partition(grid, "3d", (2, 3, 2)), cfg, "3d")
    inputs = [q, k, v, *text]
    ref = [x.detach().double().requires_grad_() for x in inputs]
    out, lse = block_sparse_attention(*inputs[:3], sel, 0.3, *inputs[3:], query_tile=4, backend="triton")
    ref_out, ref_lse = block_sparse_attention_torch(*ref[:3], sel, 0.3, *ref[3:])
    assert (out.double() - ref_out).norm() / ref_out.norm() < 1e-5
    g = torch.Generator().manual_seed(5)
    w_out, w_lse = torch.randn(out.shape, generator=g), torch.randn(lse.shape, generator=g)
    grads = torch.autograd.grad((out * w_out).sum() + (lse * w_lse).sum(), inputs)
    ref_grads = torch.autograd.grad((ref_out * w_out.double()).sum() + (ref_lse * w_lse.double()).sum(), ref)
    for name, a, b in zip("q k v tk tv".split(), grads, ref_grads):
        assert (a.double() - b).norm() / b.norm() < 1e-4, name


def test_torch_backward_without_autograd_matches_autograd():
    grid = (3, 4, 5)
    cfg = VMoBAConfig(layer_schedule=("3d",), st_chunk=(2, 3, 2), granularity="token")
    q, k, v, tk, tv = (x.double() for x in _inputs(math.prod(grid), seed=6) + _inputs(4, seed=7)[:2])
    sel = compute_selection(q.detach(), k.detach(), get_partition(grid, "3d", (2, 3, 2)), cfg, "3d")
    inputs = [x.detach().requires_grad_() for x in (q, k, v, tk, tv)]
    out, lse = block_sparse_attention_torch(*inputs[:3], sel, 0.3, *inputs[3:])
    g = torch.Generator().manual_seed(8)
    dout, dlse = torch.randn(out.shape, generator=g, dtype=torch.float64), torch.randn(lse.shape, generator=g)
    want = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), inputs)
    got = block_sparse_attention_torch_backward(*(x.detach() for x in inputs[:3]), out.detach(), lse.detach(), dout,
                                                dlse, sel, 0.3, *inputs[3:])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # lse is float32
