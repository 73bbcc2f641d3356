"""VMoBA and criss-cross attention inside diffusers' context parallelism (Ulysses, ring, and both).

``transformer.enable_parallelism(config=ContextParallelConfig(...))`` splits the token sequence across ranks
and sets ``_parallel_config`` on every attention processor. An attention that computes itself sees only its
rank's shard, so it must join diffusers' engine, `_templated_context_parallel_attention`, with a
``forward_op`` / ``backward_op`` pair:

* **Ulysses** (all-to-all): the op sees the whole sequence for ``H / P`` heads, so VMoBA selection and
  criss-cross attention run unchanged per head. The backward op recomputes the attention with autograd.
* **Ring**: the queries stay on their rank and the key/value shards visit it one after another; diffusers
  merges each step's partial output by its log-sum-exp. VMoBA selects globally first: the per-block key sums
  of every shard are all-reduced (``n_blocks x D`` per head, tiny) into the key block means, each rank selects
  for its own queries, and each step attends only the selected blocks of the visiting shard. Groupings that
  need every query at once (``tile`` granularity, ``head_global``/``block``/``overall``) gather the queries
  and keys of the ring instead. The backward op recomputes each step's partial result and weights its
  gradient by ``exp(lse_step - lse)``, the step's share of the final softmax.
* **Both** (unified): Ulysses inside ring, so each ring holds ``H / U`` heads.

What cannot be done raises `UnsupportedParallelism` naming it; no layout returns a result that differs from
one process. Refused: criss-cross attention and text tokens inside the attended sequence (joint attention)
under ring; ``block`` and ``overall`` selection (which group over all heads) under Ulysses; the uneven
``*_anything`` layouts.

`vmoba.processors.base.AttentionProcessor` (so `VMoBAProcessor` and `CrissCrossAttnProcessor`) calls
`context_parallel_attention` with its ``_parallel_config`` (which diffusers sets) when that splits the sequence.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from diffusers.models.attention_dispatch import _templated_context_parallel_attention

from .._parallel import parallel_map
from ..attention import AttentionStats, check_finite, dense_reason
from ..config import VMoBAConfig, as_config
from ..kernels.sparse_attention import _FLASH_CPU, _attend_one_head, _compute_dtype
from ..partition import get_partition, validate_grid
from ..selection import _select, compute_selection

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, AttentionStats]"]


class UnsupportedParallelism(ValueError):
    """A context-parallel layout this attention cannot run exactly."""


def context_parallel_config(parallel_config):
    """The `ContextParallelConfig` inside a diffusers ``ParallelConfig`` (or the config itself), or None."""
    if parallel_config is None:
        return None
    return getattr(parallel_config, "context_parallel_config", parallel_config)


def world_size(parallel_config) -> int:
    """Number of ranks the sequence is split across (1 without context parallelism)."""
    cp = context_parallel_config(parallel_config)
    return 1 if cp is None else cp.ring_degree * cp.ulysses_degree


def gather_sequence(x, parallel_config, dim: int = 1):
    """The whole sequence from every rank's shard (tensors, or tuples of tensors such as a rotary table), in
    the order diffusers' context-parallel hooks split it."""
    if isinstance(x, (tuple, list)):
        return type(x)(gather_sequence(t, parallel_config, dim) for t in x)
    cp = context_parallel_config(parallel_config)
    return funcol.all_gather_tensor(x.contiguous(), gather_dim=dim, group=cp._flattened_mesh.get_group())


def context_parallel_attention(attention_fn: AttentionFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                               parallel_config, ring: "VMoBARing | None" = None, what: str = "this attention",
                               head_order: torch.Tensor | None = None):
    """Run ``attention_fn`` under diffusers' context parallelism.

    Args:
        attention_fn: ``(q, k, v) -> (out, stats)`` on the whole sequence, ``(B, S, H', D)`` tensors: what
            each rank runs under Ulysses (on its ``H' = H / P`` heads).
        q, k, v: this rank's shard ``(B, S / P, H, D)``, as the processor computed it.
        parallel_config: the processor's ``_parallel_config`` (a diffusers ``ParallelConfig``).
        ring: the VMoBA call (`VMoBARing`): how to run it on one visiting key/value shard, and what it
            needs of the layout. None for an attention with no ring form: ``ring_degree > 1`` then raises.
        what: the attention's name in error messages.
        head_order: under Ulysses, the order in which heads are dealt to the ranks (``H / P`` consecutive
            entries each), e.g. `balance_heads` of measured per-head work; None keeps diffusers' order.
            The attention must treat heads independently (VMoBA's ``block``/``overall`` groupings are
            refused under Ulysses anyway).

    Returns:
        ``(out, stats)``: this rank's shard of the output ``(B, S / P, H, D)`` and the statistics of the
        part this rank computed.
    """
    cp = context_parallel_config(parallel_config)
    if cp is None or world_size(parallel_config) == 1:
        return attention_fn(q, k, v)
    if ring is not None:
        ring.check(cp)
        if ring.config.validate_inputs:
            check_finite(q, k, v, group=cp._flattened_mesh.get_group())
    if head_order is not None and cp.ulysses_degree > 1:
        order, inverse = _head_permutation(check_head_order(head_order, q.shape[2]), q.device)
        q, k, v = (x.index_select(2, order) for x in (q, k, v))
        out, stats = context_parallel_attention(attention_fn, q, k, v, parallel_config=parallel_config, ring=ring,
                                                what=what)
        return out.index_select(2, inverse), stats
    if cp.ring_degree > 1:
        if ring is None:
            raise UnsupportedParallelism(
                f"{what} has no ring form: ContextParallelConfig(ring_degree={cp.ring_degree}) is not supported; "
                f"use ulysses_degree instead")
        if cp.ring_anything:
            raise UnsupportedParallelism(f"{what} needs equal sequence shards: ring_anything=True is not supported")
        out = _templated_context_parallel_attention(q, k, v, forward_op=ring.forward_op,
                                                    backward_op=ring.backward_op, _parallel_config=parallel_config)
        return out, ring.stats
    if cp.ulysses_anything:
        raise UnsupportedParallelism(f"{what} needs equal sequence shards: ulysses_anything=True is not supported")
    op = _UlyssesOp(attention_fn)
    out = _templated_context_parallel_attention(q, k, v, forward_op=op.forward_op, backward_op=op.backward_op,
                                                _parallel_config=parallel_config)
    return out, op.stats


def check_head_order(order, heads: int | None = None) -> tuple[int, ...]:
    """``order`` (a sequence of ints or a CPU tensor) as a tuple, checked on the host to be a permutation of
    ``0 .. heads - 1`` (of its own length when ``heads`` is None)."""
    if isinstance(order, torch.Tensor):
        if order.dim() != 1 or order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
            raise ValueError(f"head_order must be a 1-D integer tensor, got {order.dtype} {tuple(order.shape)}")
        order = order.tolist()  # a GPU tensor costs a host sync here: give a list or a CPU tensor
    order = tuple(order)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in order):
        raise ValueError(f"head_order must hold head indices (ints), got {list(order)}")
    heads = len(order) if heads is None else heads
    if sorted(order) != list(range(heads)):
        raise ValueError(f"head_order must be a permutation of the {heads} heads, got {list(order)}")
    return order


@functools.lru_cache(maxsize=64)
def _head_permutation(order: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The order and its inverse as index tensors on ``device``, made once: a host-to-device copy per call
    would wait for the device's queue."""
    index = torch.tensor(order, dtype=torch.long, device=device)
    return index, torch.argsort(index)


class _UlyssesOp:
    """forward/backward ops for diffusers' templated Ulysses attention: the op sees the whole sequence."""

    def __init__(self, attention_fn: AttentionFn):
        self.attention_fn = attention_fn
        self.stats: AttentionStats | None = None

    def forward_op(self, ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, *, _save_ctx=True, _parallel_config=None):
        if return_lse:
            raise UnsupportedParallelism("the log-sum-exp of a whole Ulysses call is not available")
        if _save_ctx:
            ctx.save_for_backward(query, key, value)
        out, self.stats = self.attention_fn(query, key, value)
        return out

    def backward_op(self, ctx, grad_out, *args, **kwargs):
        # recompute with autograd: selection is not differentiable, the attention over it is
        query, key, value = (x.detach().requires_grad_(True) for x in ctx.saved_tensors)
        with torch.enable_grad():
            out, _ = self.attention_fn(query, key, value)
            grads = torch.autograd.grad(out, (query, key, value), grad_out, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for x, g in zip((query, key, value), grads))


def balance_heads(loads: torch.Tensor, ranks: int) -> torch.Tensor:
    """A head order that spreads ``loads`` (``[H]``, the work of each head) evenly over ``ranks`` groups of
    ``H / ranks`` consecutive heads, the groups Ulysses hands to its ranks: heads go heaviest first to the
    lightest group that still has room (ties: the lower head, the lower group, so every rank computes the
    same order); diffusers' own order when that is as even. Returns the head indices, group by group."""
    H = loads.numel()
    if H % ranks:
        raise ValueError(f"{H} heads cannot be split evenly over {ranks} ranks")
    per_rank = H // ranks
    totals = [0.0] * ranks
    groups: list[list[int]] = [[] for _ in range(ranks)]
    for h in sorted(range(H), key=lambda h: (-float(loads[h]), h)):
        room = [r for r in range(ranks) if len(groups[r]) < per_rank]
        r = min(room, key=lambda r: (totals[r], r))
        groups[r].append(h)
        totals[r] += float(loads[h])
    order = torch.tensor([h for g in groups for h in sorted(g)], dtype=torch.long)
    loads = torch.as_tensor(loads, dtype=torch.float64).reshape(-1)
    if loads[order].view(ranks, -1).sum(1).max() < loads.view(ranks, -1).sum(1).max():
        return order
    return torch.arange(H)


# -- VMoBA under ring attention -----------------------------------------------------------------------------


@dataclass
class VMoBARing:
    """VMoBA over the ring: global selection, then each ring step attends the selected blocks of the
    key/value shard it holds. One object serves one attention call (it keeps the selection between the
    forward and backward ring passes).

    Args:
        grid: the latent grid ``(T, H, W)`` of the whole sequence.
        layer_idx, config: as for `vmoba_attention`.
        text_len: text tokens in the sequence; must be 0 (joint attention has no ring form here).
    """

    grid: Sequence[int]
    layer_idx: int
    config: VMoBAConfig
    text_len: int = 0
    scale: float | None = None

    def __post_init__(self):
        self.grid = validate_grid(self.grid)
        self.config = as_config(self.config).for_backend("torch")  # the ring steps run the PyTorch path
        self.stats: AttentionStats | None = None
        self.rows: torch.Tensor | None = None  # [B, H, S / R, n_blocks] selection of this rank's queries

    def check(self, cp) -> None:
        """Raise `UnsupportedParallelism` for a layout this call cannot run exactly."""
        if self.text_len and cp.ring_degree > 1:
            raise UnsupportedParallelism(
                f"VMoBA with {self.text_len} text tokens inside the attended sequence (joint attention) has no ring "
                f"form: ring_degree={cp.ring_degree} is not supported here; use ulysses_degree")
        if cp.ulysses_degree > 1:
            _check_heads_independent(self.config, cp)

    def place(self, chunk_len: int, ring_rank: int, ring_size: int, device: torch.device, group=None) -> None:
        """Where this rank sits: after any Ulysses exchange, ring rank ``r`` holds the ``r``-th contiguous chunk
        of ``chunk_len`` tokens of the sequence; ``group`` is the ring's process group."""
        self.ring_rank, self.ring_size, self.chunk_len, self.group = ring_rank, ring_size, chunk_len, group
        n = chunk_len * ring_size
        if math.prod(self.grid) != n:
            raise ValueError(f"grid {self.grid} holds {math.prod(self.grid)} tokens but the ring holds {n}")
        scheme = self.config.scheme_for_layer(self.layer_idx)
        self.scheme = scheme
        self.part = get_partition(self.grid, scheme, self.config.chunk_for_scheme(scheme), device)
        self.step = self.backward_step = 0
        self._shards: dict[int, tuple] = {}

    def _chunk(self, index: int) -> slice:
        return slice(index * self.chunk_len, (index + 1) * self.chunk_len)

    def select(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``[B, H, S / R, n_blocks]`` selection of this rank's queries over the blocks of the whole sequence
        (a collective over the ring)."""
        B, S, H, D = q.shape
        part, nb = self.part, self.part.num_blocks
        mine = self._chunk(self.ring_rank)
        reason = dense_reason(self.config, self.layer_idx, part.num_tokens, scheme=self.scheme)
        if reason is not None:
            self.dense_reason = reason
            return torch.ones(B, H, S, nb, dtype=torch.bool, device=q.device)
        self.dense_reason = None
        if self.config.granularity == "token" and self.config.threshold_type == "query_head":
            own = part.block_ids[mine]
            sums = torch.zeros(B, H, nb, D, dtype=torch.float64, device=k.device)
            sums.index_add_(2, own, k.transpose(1, 2).to(torch.float64))
            dist.all_reduce(sums, group=self.group)
            kbar = (sums / part.sizes.view(1, 1, nb, 1)).float()
            rows_of = lambda r0, r1: q[:, r0:r1].transpose(1, 2).float()  # noqa: E731
            return _select(rows_of, kbar, own, self.config, self.scheme, B, H, S, nb)
        # these groupings pool or rank over every query of a head: gather the ring's queries and keys
        q_all = funcol.all_gather_tensor(q.contiguous(), gather_dim=1, group=self.group)
        k_all = funcol.all_gather_tensor(k.contiguous(), gather_dim=1, group=self.group)
        selection = compute_selection(q_all, k_all, part, self.config, self.scheme, backend="torch")
        return selection.token_mask()[:, :, mine]

    def _shard_layout(self, index: int):
        """Blocked order of the keys of ring chunk ``index``, the global blocks that have keys there, and
        where each of those starts in that order (the kernels take no empty block)."""
        if index not in self._shards:
            ids = self.part.block_ids[self._chunk(index)]
            order = torch.sort(ids, stable=True).indices
            counts = torch.bincount(ids, minlength=self.part.num_blocks)
            present = counts.nonzero().squeeze(1)
            offsets = [0] + torch.cumsum(counts[present], 0).tolist()
            self._shards[index] = (order, present, offsets)
        return self._shards[index]

    def attend_shard(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: int):
        """This rank's queries over the selected blocks of key/value chunk ``index``: ``(out (B, S, H, D),
        lse (B, S, H)`` in float32, float64 for float64 inputs); rows that select nothing there get output 0
        and lse -inf."""
        B, S, H, D = q.shape
        order, present, offsets = self._shard_layout(index)
        scale = 1.0 / math.sqrt(D) if self.scale is None else float(self.scale)
        cdt = _compute_dtype(q)
        acc = torch.float64 if cdt == torch.float64 else torch.float32
        chosen = self.rows.index_select(-1, present).reshape(B * H, S, -1)
        differentiable = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        flash = not differentiable and _FLASH_CPU is not None and q.device.type == "cpu"
        qh = (q * scale).transpose(1, 2).to(cdt).reshape(B * H, S, D)
        kh, vh = (x.index_select(1, order).transpose(1, 2).to(cdt).reshape(B * H, -1, D) for x in (k, v))
        budget = self.config.memory_budget_mb << 20

        def one_head(bh):
            rows = chosen[bh].any(-1).nonzero().squeeze(1)
            out = torch.zeros(S, D, dtype=acc, device=q.device)
            lse = torch.full((S,), float("-inf"), dtype=acc, device=q.device)
            if rows.numel() == 0:
                return out, lse
            keys = kh[bh] if flash else kh[bh].t().contiguous()
            o, l = _attend_one_head(qh[bh].index_select(0, rows), keys, vh[bh], None, chosen[bh].index_select(0, rows),
                                    offsets, budget, differentiable, flash)
            return out.index_copy(0, rows, o.to(acc)), lse.index_copy(0, rows, l.to(acc))

        outs, lses = zip(*parallel_map(one_head, B * H, q.device))
        out = torch.stack(outs).view(B, H, S, D).transpose(1, 2).to(q.dtype)
        lse = torch.stack(lses).view(B, H, S).transpose(1, 2)
        return out, lse

    def forward_op(self, ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=True, *, _save_ctx=True, _parallel_config=None):
        if _save_ctx:  # the first ring step: this rank's own key/value shard
            ctx.save_for_backward(query, key, value)
            cp = context_parallel_config(_parallel_config)
            self.place(query.shape[1], cp._ring_local_rank, cp.ring_degree, query.device, cp._ring_mesh.get_group())
            self.rows = self.select(query, key)
            self._record(query.shape)
        index = (self.ring_rank + self.step) % self.ring_size
        self.step += 1
        return self.attend_shard(query, key, value, index)

    def backward_op(self, ctx, grad_out, *args, query, key, value, out, lse, **kwargs):
        # d out / d (out_i, lse_i) of the log-sum-exp merge: w_i and w_i * (out_i - out), w_i = exp(lse_i - lse)
        index = (self.ring_rank + self.backward_step) % self.ring_size
        self.backward_step += 1
        inputs = tuple(x.detach().requires_grad_(True) for x in (query, key, value))
        with torch.enable_grad():
            out_i, lse_i = self.attend_shard(*inputs, index)
            if not out_i.requires_grad:  # no query of this rank selected a block of that shard
                return tuple(torch.zeros_like(x) for x in inputs)
            w = torch.exp(lse_i - lse.to(lse_i.dtype)).to(grad_out.dtype)
            grad_out_i = w.unsqueeze(-1) * grad_out
            grad_lse_i = w * (grad_out * (out_i.detach() - out.to(out_i.dtype))).sum(-1)
            grads = torch.autograd.grad((out_i, lse_i), inputs,
                                        (grad_out_i.to(out_i.dtype), grad_lse_i.to(lse_i.dtype)),
                                        allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))

    def _record(self, shape) -> None:
        B, S, H, _ = shape
        part = self.part
        pairs = self.rows.to(torch.float32) @ part.sizes.to(torch.float32)  # [B, H, S] keys per query
        density = float(pairs.sum() / (B * H * S * part.num_tokens))
        backend = "dense" if self.dense_reason else "torch"
        self.stats = AttentionStats(self.scheme, part.num_blocks, self.config.granularity, backend, density,
                                    self.dense_reason)


def _check_heads_independent(config: VMoBAConfig, cp) -> None:
    if config.threshold_type in ("block", "overall") and not config.is_dense():
        raise UnsupportedParallelism(
            f"VMoBAConfig.threshold_type={config.threshold_type!r} selects over all heads at once, but under "
            f"ulysses_degree={cp.ulysses_degree} each rank holds a subset of the heads: use 'query_head' or "
            f"'head_global', or ring_degree alone")
