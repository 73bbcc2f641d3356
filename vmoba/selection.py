"""Block selection: which key blocks each query (or query tile) attends.

Data flow: block means of the keys (`kbar`) -> gate scores ``s = q . kbar`` in float32 -> the threshold or
top-k rule of the configured group -> a `BlockSelection` (`vmoba.layout`), the structure the attention
backends consume.

The threshold rule of a group (one query of one head for ``query_head``; larger groups for the global
types) over its (query, block) pairs:

* min-max normalise the scores to ``n`` in [0, 1] (when max - min <= 1e-6, divide by 1);
* ``share`` = mass of the own pairs / (total + 1e-6); ``remain = max(threshold - share, 0)``;
* sort the other pairs by ``n`` descending (ties: lower index first) and keep the sorted prefix up to and
  including the first position whose running mass / (total + 1e-6) reaches ``remain`` (all if never).

The own pairs are always kept and never take part in the sort, so at least one other pair is kept
whenever one exists. Instead of a full sort, the PyTorch path takes a growing top-k of a composite integer
key (score bits, then index) until the cut falls inside it: exact, and several times cheaper than sorting
every row.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .config import VMoBAConfig
from .kernels.block_pool import pool_segments_reference, pool_segments_triton
from .kernels.block_select import MAX_TRITON_BLOCKS, select_query_head_triton, threshold_select, topk_select
from ._parallel import parallel_map
from .layout import BlockPartition, BlockSelection, get_partition



def _row_budget(config: VMoBAConfig, scheme: str, B: int, H: int, R: int, nb: int) -> int:
    """Rows of [B, H, rows, nb] the query_head path may process at once within the memory budget."""
    bytes_per_row = B * H * nb * 48
    return max(1, (config.memory_budget_mb << 20) // max(1, bytes_per_row))


def _gate_rows(rows_of: Callable[[int, int], torch.Tensor], kbar: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
    q_rows = rows_of(r0, r1)  # [B, H, r, D] float32
    return q_rows @ kbar.transpose(-1, -2)  # [B, H, r, nb]


def compute_selection(
    q: torch.Tensor,
    k: torch.Tensor,
    partition: BlockPartition,
    config: VMoBAConfig,
    scheme: str,
    backend: str = "torch",
) -> BlockSelection:
    """Select key blocks for the video tokens ``q, k`` of shape ``(B, S, H, D)`` (original order)."""
    config = config.for_backend(backend)
    if torch.compiler.is_compiling():  # one opaque custom op: the rules below are data-dependent
        tiles = partition.tiles(config.query_tile)
        rows = tiles.num_tiles if config.granularity == "tile" else partition.num_tokens
        mask = selection_mask_op(
            q, k, list(partition.grid), scheme, list(partition.chunk), config.granularity, config.query_tile,
            config.select_mode, config.threshold, config.threshold_type, config.topk_for_scheme(scheme),
            config.memory_budget_mb, backend, rows, partition.num_blocks,
        )
        return BlockSelection(partition, tiles, config.granularity, mask)
    B, S, H, D = q.shape
    nb = partition.num_blocks
    tiles = partition.tiles(config.query_tile)
    triton = backend == "triton"
    pool = pool_segments_triton if triton else pool_segments_reference
    kbar = pool(k, partition.order, partition.offsets)  # [B, H, nb, D] float32

    if config.granularity == "tile":
        q_tiles = pool(q, partition.order, tiles.offsets)  # [B, H, n_tiles, D]
        own_block = tiles.block
    else:
        own_block = partition.blocked_ids()
    R = own_block.numel()

    if triton and config.threshold_type == "query_head" and nb <= MAX_TRITON_BLOCKS:
        topk = config.topk_for_scheme(scheme) if config.select_mode == "topk" else None
        if config.granularity == "tile":
            mask = select_query_head_triton(q_tiles, None, own_block, kbar, config.threshold, topk)
        else:
            mask = select_query_head_triton(q, partition.order, own_block, kbar, config.threshold, topk)
    else:
        if config.granularity == "tile":
            rows_of = lambda r0, r1: q_tiles[:, :, r0:r1]  # noqa: E731
        else:
            order = partition.order
            rows_of = lambda r0, r1: q.index_select(1, order[r0:r1]).transpose(1, 2).float()  # noqa: E731
        mask = _select(rows_of, kbar, own_block, config, scheme, B, H, R, nb)

    return BlockSelection(partition, tiles, config.granularity, mask)


def _select(rows_of, kbar, own_block, config: VMoBAConfig, scheme: str, B, H, R, nb) -> torch.Tensor:
    device = kbar.device
    group = config.threshold_type
    topk = config.select_mode == "topk"
    k_sel = config.topk_for_scheme(scheme)

    if group == "query_head":
        mask = torch.empty(B, H, R, nb, dtype=torch.bool, device=device)
        workers = torch.get_num_threads() if device.type == "cpu" else 1
        # chunks in flight at once share the memory budget; at least one chunk per worker
        step = max(1, min(_row_budget(config, scheme, B, H, R, nb) // workers, -(-R // workers)))
        hint = int(config.threshold * nb) + 2  # evenly spread mass would need this many blocks

        def rows(r0):
            r1 = min(R, r0 + step)
            s = _gate_rows(rows_of, kbar, r0, r1).reshape(-1, nb)
            own = own_block[r0:r1].view(1, 1, -1).expand(B, H, -1).reshape(-1)  # one own block per row
            if topk:
                sel = topk_select(s, own, torch.full((s.shape[0],), k_sel, device=device))
            else:
                sel, _ = threshold_select(s, own, config.threshold, hint)
            mask[:, :, r0:r1] = sel.view(B, H, r1 - r0, nb)

        starts = list(range(0, R, step))
        parallel_map(lambda i: rows(starts[i]), len(starts), device)
        return mask

    # global groups need every score of the group at once
    s = torch.empty(B, H, R, nb, dtype=torch.float32, device=device)
    step = _row_budget(config, scheme, B, H, R, nb)
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        s[:, :, r0:r1] = _gate_rows(rows_of, kbar, r0, r1)
    own = torch.zeros(1, 1, R, nb, dtype=torch.bool, device=device)
    own.scatter_(-1, own_block.view(1, 1, R, 1), True)
    own = own.expand(B, H, R, nb)

    if group == "head_global":
        s_g, own_g, budget = s.view(B * H, R * nb), own.reshape(B * H, R * nb), k_sel * R
    elif group == "overall":
        s_g, own_g, budget = s.view(B, H * R * nb), own.reshape(B, H * R * nb), k_sel * H * R
    else:  # block: one group per key block over every (head, query)
        s_g = s.permute(0, 3, 1, 2).reshape(B * nb, H * R)
        own_g = own.permute(0, 3, 1, 2).reshape(B * nb, H * R)
        budget = math.ceil(k_sel * H * R / nb)
    sel = torch.empty_like(own_g)
    groups_per_step = max(1, (config.memory_budget_mb << 20) // max(1, s_g.shape[1] * 48))
    hint = 16
    for g0 in range(0, s_g.shape[0], groups_per_step):
        g1 = min(s_g.shape[0], g0 + groups_per_step)
        if topk:
            sel[g0:g1] = topk_select(s_g[g0:g1], own_g[g0:g1], torch.full((g1 - g0,), budget, device=device))
        else:
            sel[g0:g1], hint = threshold_select(s_g[g0:g1], own_g[g0:g1], config.threshold, hint)
    if group == "block":
        return sel.view(B, nb, H, R).permute(0, 2, 3, 1).contiguous()
    return sel.view(B, H, R, nb)


@torch.library.custom_op("vmoba::selection_mask", mutates_args=())
def selection_mask_op(
    q: Tensor, k: Tensor, grid: Sequence[int], scheme: str, chunk: Sequence[int], granularity: str, query_tile: int,
    select_mode: str, threshold: float, threshold_type: str, topk: int, memory_budget_mb: int, backend: str,
    rows: int, n_blocks: int,
) -> Tensor:
    """`compute_selection`'s mask ``[B, H, rows, n_blocks]`` as a custom op, so that `torch.compile` sees one
    call with known output shape instead of the data-dependent rules (``rows`` and ``n_blocks`` come from
    the partition, for the fake implementation)."""
    config = VMoBAConfig(granularity=granularity, query_tile=query_tile, select_mode=select_mode,
                         threshold=threshold, threshold_type=threshold_type, topk=(topk,) * 3,
                         memory_budget_mb=memory_budget_mb)
    partition = get_partition(grid, scheme, chunk, q.device)
    return compute_selection(q, k, partition, config, scheme, backend).mask.clone()


@selection_mask_op.register_fake
def _(q, k, grid, scheme, chunk, granularity, query_tile, select_mode, threshold, threshold_type, topk,
      memory_budget_mb, backend, rows, n_blocks):
    return q.new_empty(q.shape[0], q.shape[2], rows, n_blocks, dtype=torch.bool)
