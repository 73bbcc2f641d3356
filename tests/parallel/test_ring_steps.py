"""The ring form of VMoBA, one process: every rank's steps over every key/value shard, merged by log-sum-exp as
diffusers' ring attention merges them, against float64 dense attention under the brute-force selection mask;
and the backward op's per-step gradients summed against autograd through that reference."""

import math

import pytest
import torch
from _reference import block_mask_to_dense, brute_partition, brute_select, dense_masked_attention

from vmoba import VMoBAConfig
from vmoba.parallel import UnsupportedParallelism, VMoBARing, context_parallel_attention

CONFIG = VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), threshold=0.3)
GRID = (6, 3, 4)  # 72 tokens: shards of 18 (4 ranks) cut frames and blocks in the middle


def _inputs(seed, B=1, H=2, D=8):
    g = torch.Generator().manual_seed(seed)
    S = math.prod(GRID)
    return [torch.randn(B, S, H, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _steps(layer, ranks, q, k, v, mask):
    """Per rank: the ring object and the partial (out, lse) of each visiting shard, in ring order."""
    L = q.shape[1] // ranks
    chunk = lambda c: slice(c * L, (c + 1) * L)  # noqa: E731
    result = []
    for r in range(ranks):
        ring = VMoBARing(GRID, layer, CONFIG)
        ring.place(L, r, ranks, q.device)
        ring.rows = mask[:, :, chunk(r)]
        order = [(r + i) % ranks for i in range(ranks)]
        parts = [ring.attend_shard(q[:, chunk(r)], k[:, chunk(c)], v[:, chunk(c)], c) for c in order]
        result.append((ring, order, parts))
    return result


def _merge(parts):
    lse = torch.logsumexp(torch.stack([p[1].double() for p in parts]), 0)
    out = sum(torch.exp(p[1].double() - lse).unsqueeze(-1) * p[0] for p in parts)
    return out, lse


@pytest.mark.parametrize("layer", [0, 1, 2])  # 1d, 2d, 3d
@pytest.mark.parametrize("ranks", [2, 4])
def test_ring_steps_merge_to_masked_attention(layer, ranks):
    q, k, v = _inputs(layer * 10 + ranks)
    scheme = CONFIG.scheme_for_layer(layer)
    chunk = CONFIG.chunk_for_scheme(scheme)
    mask, _ = brute_select(q, k, GRID, scheme, chunk, threshold=CONFIG.threshold)
    dense_mask = block_mask_to_dense(mask, brute_partition(GRID, scheme, chunk))
    q_, k_, v_ = (x.clone().requires_grad_(True) for x in (q, k, v))
    reference = dense_masked_attention(q_, k_, v_, dense_mask)
    grad_out = torch.randn_like(reference)
    reference.backward(grad_out)

    L = q.shape[1] // ranks
    empty_rows = 0
    grads = [torch.zeros_like(x) for x in (q, k, v)]
    for r, (ring, order, parts) in enumerate(_steps(layer, ranks, q, k, v, mask)):
        out, lse = _merge(parts)
        torch.testing.assert_close(out, reference[:, r * L:(r + 1) * L].detach(), atol=1e-12, rtol=1e-10)
        empty_rows += sum(int(torch.isinf(p[1]).sum()) for p in parts)
        for c in order:  # diffusers' ring backward: the same shard order, the merged out and lse
            gq, gk, gv = ring.backward_op(None, grad_out[:, r * L:(r + 1) * L], query=q[:, r * L:(r + 1) * L],
                                          key=k[:, c * L:(c + 1) * L], value=v[:, c * L:(c + 1) * L], out=out,
                                          lse=lse.float())
            grads[0][:, r * L:(r + 1) * L] += gq
            grads[1][:, c * L:(c + 1) * L] += gk
            grads[2][:, c * L:(c + 1) * L] += gv
    # lse travels as float32 through diffusers' merge: the gradients carry its rounding
    for got, want in zip(grads, (q_.grad, k_.grad, v_.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if layer == 0:  # frames as blocks: many queries select nothing in some shard
        assert empty_rows > 0


def test_without_context_parallelism_the_attention_runs_as_is():
    q, k, v = _inputs(0)
    calls = []

    def attention_fn(*qkv):
        calls.append(qkv)
        return qkv[0], None

    out, _ = context_parallel_attention(attention_fn, q, k, v, parallel_config=None)
    assert out is q and len(calls) == 1


def test_joint_attention_has_no_ring_form():
    class Ring:  # the fields of a ContextParallelConfig that the check reads
        ring_degree, ulysses_degree = 2, 1

    with pytest.raises(UnsupportedParallelism, match="text tokens"):
        VMoBARing(GRID, 0, CONFIG, text_len=5).check(Ring())

