"""The Triton criss-cross kernel against the PyTorch path and a float64 per-position loop, forward (output and
LSE) and backward, in the interpreter on CPU (TRITON_INTERPRET=1, set by conftest; small grids, the
interpreter is slow) and compiled on a GPU (the `gpu` tests). Kernel outputs are poisoned before every launch."""

import math
import time

import pytest
import torch

from _reference import naive_criss_cross
from vmoba import criss_cross_attention
from vmoba.crisscross import criss_cross_backend
from vmoba.kernels import _triton
from vmoba.kernels.crisscross import criss_cross_attention_torch
from vmoba.kernels.crisscross_triton import criss_cross_attention_triton

pytestmark = pytest.mark.skipif(not _triton.triton_available, reason="triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() and not _triton.INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setattr(_triton, "POISON", True)


def rand(*shape, gen, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype).requires_grad_()


# W = 17 crosses two 16-query runs of a row; D = 12 is not a power of two
KERNEL_CASES = [((2, 3, 5), 0, False), ((3, 2, 17), 5, True), ((1, 4, 3), 3, False)]


@pytest.mark.slow
@pytest.mark.parametrize("grid, L, masked", KERNEL_CASES)
def test_kernel_matches_torch_path_and_float64_loop(grid, L, masked):
    gen = torch.Generator().manual_seed(sum(grid) + L)
    S, B, Hn, D = math.prod(grid), 2, 2, 12
    q, k, v = (rand(B, S, Hn, D, gen=gen) for _ in range(3))
    text = [rand(B, L, Hn, D, gen=gen) for _ in range(2)] if L else []  # keys, values
    valid = None
    if masked:
        valid = torch.rand(B, L, generator=gen).to(DEVICE) < 0.6
        valid[:, 0] = True
    args = (q, k, v, grid, 0.4, *(text or (None, None)), valid)
    out, lse = criss_cross_attention_triton(*args)
    ref_out, ref_lse = criss_cross_attention_torch(*args)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
    # the float64 loop over the whole sequence [video; text]: its video rows are the kernel's output
    text_q = torch.zeros(B, L, Hn, D, device=DEVICE)  # text queries: not the kernel's, outside the rows compared
    seq = [torch.cat([x, t], 1) for x, t in zip((q, k, v), [text_q, *text])] if L else [q, k, v]
    loop = naive_criss_cross(*seq, grid, text_len=L, text_first=False, text_mask=valid, scale=0.4)[:, :S]
    torch.testing.assert_close(out.double(), loop, rtol=1e-5, atol=1e-5)

    inputs = [q, k, v, *text]
    up, up_lse = torch.randn(out.shape, generator=gen).to(DEVICE), torch.randn(lse.shape, generator=gen).to(DEVICE)
    got = torch.autograd.grad((out * up).sum() + (lse * up_lse).sum(), inputs)
    want = torch.autograd.grad((ref_out * up).sum() + (ref_lse * up_lse).sum(), inputs)
    # the output's gradient alone, through the float64 loop (cast back to the inputs' float32 at the leaves)
    want64 = torch.autograd.grad((loop * up.double()).sum(), inputs)
    got_out = torch.autograd.grad((criss_cross_attention_triton(*args)[0] * up).sum(), inputs)
    for name, a, b, a_out, c in zip(("q", "k", "v", "text_k", "text_v"), got, want, got_out, want64):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"d{name} vs the PyTorch path: {m}")
        torch.testing.assert_close(a_out, c, rtol=1e-4, atol=1e-5, msg=lambda m: f"d{name} vs the float64 loop: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("text_first", [True, False])
def test_entry_point_on_the_triton_backend(text_first):
    """`criss_cross_attention(backend="triton")`: text queries, text mask and two loops, values and gradients."""
    gen = torch.Generator().manual_seed(3)
    grid, L = (2, 3, 4), 3
    q, k, v = (rand(2, math.prod(grid) + L, 2, 8, gen=gen) for _ in range(3))
    mask = torch.tensor([[True, False, True], [True, True, True]], device=DEVICE)
    kwargs = dict(text_len=L, text_first=text_first, text_mask=mask, recurrence=2)
    out = criss_cross_attention(q, k, v, grid, backend="triton", **kwargs)
    loop = naive_criss_cross(q, k, v, grid, **kwargs)
    torch.testing.assert_close(out.double(), loop, rtol=1e-5, atol=1e-5)
    up = torch.randn(out.shape, generator=gen).to(DEVICE)
    got = torch.autograd.grad((out * up).sum(), (q, k, v))
    want = torch.autograd.grad((loop * up.double()).sum(), (q, k, v))
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"d{name}: {m}")


def test_backend_switch():
    x = torch.zeros(1, 4, 1, 8)
    assert criss_cross_backend("auto", x) == "torch"  # auto: Triton on CUDA only
    assert criss_cross_backend("torch", x) == "torch"
    if _triton.INTERPRET:  # CPU tensors run the kernel only in the interpreter
        assert criss_cross_backend("triton", x) == "triton"
    else:
        with pytest.raises(RuntimeError, match="interpreter"):
            criss_cross_backend("triton", x)
    with pytest.raises(ValueError, match="backend"):
        criss_cross_backend("cuda", x)
    with pytest.raises(ValueError, match="float64"):
        criss_cross_backend("triton", x.double())
    assert criss_cross_backend("auto", x.double()) == "torch"
    with pytest.raises(ValueError, match="float64"):
        criss_cross_attention_triton(x.double(), x.double(), x.double(), (1, 2, 2), 1.0)


@pytest.mark.gpu
def test_gpu_bf16_matches_and_beats_the_torch_path():
    """A Wan-like row length (52) in bf16: close to the float32 PyTorch path, and faster than it."""
    gen = torch.Generator().manual_seed(0)
    grid, L = (8, 30, 52), 64
    q, k, v = (rand(1, math.prod(grid), 12, 128, gen=gen, dtype=torch.bfloat16) for _ in range(3))
    tk, tv = (rand(1, L, 12, 128, gen=gen, dtype=torch.bfloat16) for _ in range(2))
    args = (q, k, v, grid, 128**-0.5, tk, tv)
    out, lse = criss_cross_attention_triton(*args)
    ref_out, ref_lse = criss_cross_attention_torch(*(x.float() if torch.is_tensor(x) else x for x in args))
    torch.testing.assert_close(out.float(), ref_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-2, atol=1e-2)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.no_grad():
        assert timed(lambda: criss_cross_attention_triton(*args)) < timed(lambda: criss_cross_attention_torch(*args))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_gpu_compiled_forward_and_backward(dtype, tol):
    """The compiled kernels (64-wide rows and 8 warps in bf16, small tiles in float32), text mask included,
    against the PyTorch path in float32: output, LSE and every gradient."""
    gen = torch.Generator().manual_seed(1)
    grid, L = (5, 7, 70), 40
    q, k, v = (rand(2, math.prod(grid), 3, 64, gen=gen, dtype=dtype) for _ in range(3))
    tk, tv = (rand(2, L, 3, 64, gen=gen, dtype=dtype) for _ in range(2))
    valid = torch.rand(2, L, generator=gen).to(DEVICE) < 0.7
    valid[:, 0] = True
    inputs = [q, k, v, tk, tv]
    out, lse = criss_cross_attention_triton(q, k, v, grid, 0.125, tk, tv, valid)
    ref_inputs = [x.detach().float().requires_grad_() for x in inputs]
    ref_out, ref_lse = criss_cross_attention_torch(*ref_inputs[:3], grid, 0.125, *ref_inputs[3:], valid)
    torch.testing.assert_close(out.float(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, ref_lse, rtol=tol, atol=tol)
    up = torch.randn(out.shape, generator=gen).to(DEVICE)
    got = torch.autograd.grad((out.float() * up).sum(), inputs)
    want = torch.autograd.grad((ref_out * up).sum(), ref_inputs)
    for name, a, b in zip(("q", "k", "v", "text_k", "text_v"), got, want):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.float() / scale, b / scale, rtol=tol, atol=tol, msg=lambda m: f"d{name}: {m}")
