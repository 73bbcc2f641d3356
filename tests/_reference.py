"""Independent, deliberately naive implementations of the DESIGN rules, in float64 with Python loops.

Nothing here imports vmoba's selection or attention code: the tests compare the library against these.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

EPS = 1e-6


def brute_partition(grid, scheme, chunk):
    T, H, W = grid
    ids = []
    for t in range(T):
        for h in range(H):
            for w in range(W):
                if scheme == "1d":
                    ids.append(t // chunk[0])
                elif scheme == "2d":
                    ids.append((h // chunk[0]) * math.ceil(W / chunk[1]) + w // chunk[1])
                else:
                    nh, nw = math.ceil(H / chunk[1]), math.ceil(W / chunk[2])
                    ids.append(((t // chunk[0]) * nh + h // chunk[1]) * nw + w // chunk[2])
    return ids


def brute_tiles(ids, query_tile):
    """List of tiles, each a list of original token indices; blocks in id order, tokens in order inside."""
    tiles = []
    for blk in range(max(ids) + 1):
        members = [i for i, b in enumerate(ids) if b == blk]
        n = len(members)
        m = math.ceil(n / query_tile)
        for r in range(m):
            tiles.append(members[(r * n) // m : ((r + 1) * n) // m])
    return tiles


class Cut:
    """Outcome of one group's selection, with a flag saying whether float rounding could change it."""

    def __init__(self, chosen, fragile):
        self.chosen = chosen
        self.fragile = fragile


def threshold_cut(values, own, threshold, tol):
    """values: list of floats (float64 scores of a group); own: list of bools. Returns Cut over members."""
    M = len(values)
    if threshold >= 1.0:
        return Cut(set(range(M)), False)
    lo, hi = min(values), max(values)
    span = hi - lo
    fragile = abs(span - EPS) < tol
    if span <= EPS:
        span = 1.0
    n = [(x - lo) / span for x in values]
    total = sum(n)
    share = sum(x for x, o in zip(n, own) if o) / (total + EPS)
    remain = max(threshold - share, 0.0)
    fragile |= 0 < abs(threshold - share) < tol
    others = sorted((i for i in range(M) if not own[i]), key=lambda i: (-n[i], i))
    chosen = {i for i in range(M) if own[i]}
    running = 0.0
    cut = len(others) - 1
    for p, i in enumerate(others):
        running += n[i]
        ratio = running / (total + EPS)
        if abs(ratio - remain) < tol:
            fragile = True
        if ratio >= remain:
            cut = p
            break
    chosen.update(others[: cut + 1])
    if 0 <= cut < len(others) - 1 and abs(n[others[cut]] - n[others[cut + 1]]) < tol:
        fragile = True
    return Cut(chosen, fragile)


def topk_cut(values, own, budget, tol):
    M = len(values)
    others = sorted((i for i in range(M) if not own[i]), key=lambda i: (-values[i], i))
    take = max(0, min(budget - sum(own), len(others)))
    chosen = {i for i in range(M) if own[i]} | set(others[:take])
    fragile = 0 < take < len(others) and abs(values[others[take - 1]] - values[others[take]]) < tol
    return Cut(chosen, fragile)


def brute_select(q, k, grid, scheme, chunk, *, select_mode="threshold", threshold=0.25,
                 threshold_type="query_head", topk=3, granularity="token", query_tile=128, tol=1e-5):
    """Returns (mask [B, H, S, nb] bool in original order, fragile [B, H, S, nb] bool).

    q, k: (B, S, H, D). (query, block) pairs are grouped as the threshold type says; a pair is fragile
    when its group's decision is within ``tol`` of flipping.
    """
    q = q.double()
    k = k.double()
    B, S, H, D = q.shape
    ids = brute_partition(grid, scheme, chunk)
    nb = max(ids) + 1
    members = [[i for i in range(S) if ids[i] == j] for j in range(nb)]
    if granularity == "tile":
        rows = brute_tiles(ids, query_tile)
    else:
        rows = [[members[j][r]] for j in range(nb) for r in range(len(members[j]))]
    own_of_row = [ids[r[0]] for r in rows]
    R = len(rows)

    # scores[b][h][r][j]
    scores = torch.zeros(B, H, R, nb, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            kbar = torch.stack([k[b, members[j], h].mean(0) for j in range(nb)])
            for r, toks in enumerate(rows):
                qv = q[b, toks, h].mean(0)
                scores[b, h, r] = kbar @ qv

    chosen = torch.zeros(B, H, R, nb, dtype=torch.bool)
    fragile = torch.zeros(B, H, R, nb, dtype=torch.bool)

    def groups():
        for b in range(B):
            if threshold_type == "query_head":
                for h in range(H):
                    for r in range(R):
                        yield [(b, h, r, j) for j in range(nb)], 1
            elif threshold_type == "head_global":
                for h in range(H):
                    yield [(b, h, r, j) for r in range(R) for j in range(nb)], R
            elif threshold_type == "block":
                for j in range(nb):
                    yield [(b, h, r, j) for h in range(H) for r in range(R)], H * R / nb
            else:
                yield [(b, h, r, j) for h in range(H) for r in range(R) for j in range(nb)], H * R

    for pairs, rows_per_group in groups():
        values = [scores[p].item() for p in pairs]
        own = [own_of_row[p[2]] == p[3] for p in pairs]
        if select_mode == "threshold":
            cut = threshold_cut(values, own, threshold, tol)
        else:
            cut = topk_cut(values, own, math.ceil(topk * rows_per_group), tol)
        for idx in cut.chosen:
            chosen[pairs[idx]] = True
        if cut.fragile:
            for p in pairs:
                fragile[p] = True

    mask = torch.zeros(B, H, S, nb, dtype=torch.bool)
    frag = torch.zeros(B, H, S, nb, dtype=torch.bool)
    for r, toks in enumerate(rows):
        for t in toks:
            mask[:, :, t] = chosen[:, :, r]
            frag[:, :, t] = fragile[:, :, r]
    return mask, frag


def dense_masked_attention(q, k, v, mask, scale=None):
    """float64 softmax attention of (B, S, H, D) tensors under a [B, H, S, S] boolean mask."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(logits, -1), v)


def block_mask_to_dense(token_mask, ids):
    """[B, H, S, nb] -> [B, H, S, S] (key j allowed when its block is selected)."""
    return token_mask[..., torch.as_tensor(ids)]


def naive_criss_cross(q, k, v, grid, *, text_len=0, text_first=True, text_mask=None, recurrence=1, scale=None):
    """One query at a time, float64: the key set of each position written out (its t-, h- and w-lines, itself
    once, and every valid text token for a video query; every video and valid text token for a text query),
    one softmax over it; ``recurrence`` loops, each attending over the previous loop's outputs."""
    q, k, v = q.double(), k.double(), v.double()
    B, S, Hn, D = q.shape
    T, H, W = grid
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    video0 = text_len if text_first else 0
    text0 = 0 if text_first else S - text_len
    coords = list(itertools.product(range(T), range(H), range(W)))

    def keys(b, i):
        valid_text = [text0 + j for j in range(text_len) if text_mask is None or bool(text_mask[b, j])]
        if not video0 <= i < video0 + T * H * W:
            return list(range(video0, video0 + T * H * W)) + valid_text
        a = coords[i - video0]
        on_lines = [video0 + j for j, c in enumerate(coords) if sum(x != y for x, y in zip(a, c)) <= 1]
        return on_lines + valid_text

    values = v
    for _ in range(recurrence):
        rows = []
        for b in range(B):
            heads = []
            for n in range(Hn):
                outs = []
                for i in range(S):
                    idx = torch.tensor(keys(b, i))
                    p = torch.softmax(k[b, idx, n] @ q[b, i, n] * scale, 0)
                    outs.append(p @ values[b, idx, n])
                heads.append(torch.stack(outs))
            rows.append(torch.stack(heads, 1))
        values = torch.stack(rows)
    return values


def global_velocity(clip: np.ndarray) -> np.ndarray:
    """Least-squares translation ``(vx, vy)`` of a grey clip ``(T, H, W)`` from brightness constancy,
    ``I_t = -v . grad I`` over every pixel (central differences; the minimum-norm solution: for a grating, its
    velocity normal to the stripes)."""
    c = clip.astype(np.float64)
    it = (c[2:] - c[:-2])[:, 1:-1, 1:-1] / 2
    mid = c[1:-1]
    ix = (mid[:, 1:-1, 2:] - mid[:, 1:-1, :-2]) / 2
    iy = (mid[:, 2:, 1:-1] - mid[:, :-2, 1:-1]) / 2
    a = np.stack([ix.ravel(), iy.ravel()], axis=1)
    return -np.linalg.pinv(a) @ it.ravel()
