"""The attention view: which key blocks the token under a clicked point selected, drawn over the latent grid.

Reads `vmoba.SelectionRecord`s (the processors' selection capture: the mask each attention call used),
never recomputes a selection. Plain functions from records and frames to an RGB image and a caption."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..video import to_uint8

OWN = np.array([255, 196, 0], np.float32)  # the query token's own block
SELECTED = np.array([40, 200, 90], np.float32)  # other blocks it attends to
QUERY = (230, 30, 30)
LABEL_HEIGHT = 14


@dataclass(frozen=True)
class Token:
    t: int
    h: int
    w: int

    def index(self, grid: tuple[int, int, int]) -> int:
        """Position in frame-major (t, h, w) order, the order of `partition_blocks` and of the records."""
        return (self.t * grid[1] + self.h) * grid[2] + self.w


def latent_frame(frame: int, num_frames: int, latent_frames: int) -> int:
    """The latent frame that holds video frame ``frame``. Causal video VAEs (Wan, CogVideoX, LTX) keep frame 0
    alone and pack each later run of ``r = (F - 1) / (T - 1)`` frames into one latent frame."""
    if latent_frames <= 1 or num_frames <= 1:
        return 0
    return min(latent_frames - 1, math.ceil(frame * (latent_frames - 1) / (num_frames - 1)))


def video_frame(t: int, num_frames: int, latent_frames: int) -> int:
    """The last video frame that latent frame ``t`` encodes (frame 0 for ``t = 0``)."""
    if latent_frames <= 1:
        return 0
    return min(num_frames - 1, round(t * (num_frames - 1) / (latent_frames - 1)))


def token_at(frame: int, x: float, y: float, video_shape: tuple[int, int, int], grid: tuple[int, int, int]) -> Token:
    """The latent token under pixel ``(x, y)`` of video frame ``frame``; ``video_shape`` is ``(F, H, W)``."""
    F, H, W = video_shape
    if not 0 <= frame < F:
        raise ValueError(f"frame must be in [0, {F - 1}], got {frame}")
    if not (0 <= x < W and 0 <= y < H):
        raise ValueError(f"point ({x}, {y}) is outside the {W}x{H} frame")
    T, h, w = grid
    return Token(latent_frame(frame, F, T), min(h - 1, int(y * h / H)), min(w - 1, int(x * w / W)))


def find_record(records: list, step: int, layer: int):
    for record in records:
        if record.step == step and record.layer == layer:
            return record
    available = sorted({(r.step, r.layer) for r in records})
    raise ValueError(f"no selection recorded for step {step}, layer {layer}"
                     + (f"; steps 0-{available[-1][0]} and layers 0-{max(l for _, l in available)} were recorded"
                        if available else "; run a generation with VMoBA or criss-cross attention first"))


@dataclass(frozen=True)
class Selection:
    """How strongly each video token is attended by the query (fraction of heads), in frame-major order."""

    weight: np.ndarray  # (S,) in [0, 1]
    own: np.ndarray  # (S,) bool: the query's own block
    blocks_selected: float  # key blocks attended (mean over the heads shown), own block included
    num_blocks: int
    density: float  # fraction of video keys this query attends (mean over the heads shown)


def selection_of(record, token: Token, head: int | None = None) -> Selection:
    """The keys that ``token`` attended in the call ``record`` describes: one head, or the mean over heads."""
    grid = tuple(record.grid)
    S = math.prod(grid)
    q = token.index(grid)
    if record.mask is None:  # criss-cross and dense calls have a fixed pattern, not a selection
        if record.scheme == "crisscross":
            t, h, w = np.unravel_index(np.arange(S), grid)
            weight = ((h == token.h) & (w == token.w)) | ((t == token.t) & (w == token.w)) | \
                     ((t == token.t) & (h == token.h))
        else:
            weight = np.ones(S, bool)
        weight = weight.astype(np.float32)
        own = np.zeros(S, bool)
        own[q] = True
        return Selection(weight, own, float("nan"), 0, float(weight.mean()))
    mask = record.mask[0, :, q].numpy()  # (heads, n_blocks): the first batch element, the query's row
    if head is not None:
        if not 0 <= head < mask.shape[0]:
            raise ValueError(f"head must be in [0, {mask.shape[0] - 1}], got {head}")
        mask = mask[head: head + 1]
    block_ids = record.block_ids.numpy()
    per_block = mask.mean(axis=0)
    weight = per_block[block_ids].astype(np.float32)
    own = block_ids == block_ids[q]
    sizes = np.bincount(block_ids, minlength=mask.shape[1])
    density = float((mask * sizes[None]).sum(axis=1).mean() / S)
    return Selection(weight, own, float(mask.sum(axis=1).mean()), int(mask.shape[1]), density)


def render(frames: np.ndarray, record, token: Token, head: int | None = None, *, cell: int = 16) -> tuple[np.ndarray, str]:
    """One panel per latent frame: the video frame it encodes, dimmed where the query does not look, tinted
    green over the selected blocks (by the fraction of heads), amber over its own block; the query token is
    outlined in red. Returns the image and a one-paragraph caption."""
    grid = tuple(record.grid)
    T, h, w = grid
    selection = selection_of(record, token, head)
    weight = selection.weight.reshape(grid)
    own = selection.own.reshape(grid)
    block_ids = record.block_ids.numpy().reshape(grid) if record.block_ids is not None else None
    frames = to_uint8(frames)
    panels = []
    for t in range(T):
        image = Image.fromarray(frames[video_frame(t, len(frames), T)]).resize((w * cell, h * cell), Image.BILINEAR)
        pixels = np.asarray(image).astype(np.float32)
        wt = np.kron(weight[t], np.ones((cell, cell), np.float32))[..., None]
        ow = np.kron(own[t].astype(np.float32), np.ones((cell, cell), np.float32))[..., None]
        dimmed = pixels * 0.3
        tinted = pixels * 0.45 + SELECTED * 0.55
        pixels = dimmed * (1 - wt) + tinted * wt
        if record.mask is not None:
            pixels = pixels * (1 - ow) + (pixels * 0.4 + OWN * 0.6) * ow
        panel = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(panel)
        if block_ids is not None:  # block borders: between neighbouring tokens of different blocks
            ids = block_ids[t]
            for i in range(h):
                for j in range(w):
                    if j + 1 < w and ids[i, j] != ids[i, j + 1]:
                        draw.line([((j + 1) * cell, i * cell), ((j + 1) * cell, (i + 1) * cell - 1)], fill=(255, 255, 255))
                    if i + 1 < h and ids[i, j] != ids[i + 1, j]:
                        draw.line([(j * cell, (i + 1) * cell), ((j + 1) * cell - 1, (i + 1) * cell)], fill=(255, 255, 255))
        if t == token.t:
            draw.rectangle([token.w * cell, token.h * cell, (token.w + 1) * cell - 1, (token.h + 1) * cell - 1],
                           outline=QUERY, width=max(2, cell // 6))
        labelled = Image.new("RGB", (panel.width, panel.height + LABEL_HEIGHT), (255, 255, 255))
        labelled.paste(panel, (0, LABEL_HEIGHT))
        ImageDraw.Draw(labelled).text((2, 1), f"t={t}", fill=(0, 0, 0))
        panels.append(np.asarray(labelled))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([p if i == 0 else np.concatenate([gap, p], axis=1) for i, p in enumerate(panels)], axis=1)
    return row, caption(record, token, selection, head)


def caption(record, token: Token, selection: Selection, head: int | None) -> str:
    heads = "all heads (green strength = share of heads)" if head is None else f"head {head}"
    where = f"latent token (t={token.t}, h={token.h}, w={token.w}) of the {record.grid[0]}x{record.grid[1]}x{record.grid[2]} grid"
    if record.scheme == "crisscross":
        text = (f"Step {record.step}, layer {record.layer}, criss-cross attention: the {where} attends the tokens "
                f"on its t-, h- and w-lines (green), {selection.density:.1%} of the video keys.")
    elif record.mask is None:
        reason = f" ({record.dense_reason})" if record.dense_reason else ""
        text = f"Step {record.step}, layer {record.layer} ran dense attention{reason}: every key is attended."
    else:
        text = (f"Step {record.step}, layer {record.layer}, {record.scheme} blocks, {heads}: the {where} attends "
                f"its own block (amber) and {selection.blocks_selected - 1:.1f} of the other "
                f"{selection.num_blocks - 1} blocks (green), {selection.density:.1%} of the video keys "
                f"(the layer as a whole: {record.density:.1%}). White lines are block borders.")
    if record.text_len:
        text += f" It also attends all {record.text_len} text tokens."
    else:
        text += " This model's self-attention holds no text tokens: the prompt enters through cross-attention, which stays dense."
    return text
