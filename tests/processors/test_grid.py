"""The latent grid read off each family's 3D rotary table (processors installed without `vmoba.enable`)."""

import itertools
import math

import pytest
import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed
from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

import vmoba
from tiny_models import SMALL_CHUNKS, build, run_model
from vmoba import VMoBAConfig
from vmoba.processors.families import CogVideoX, HunyuanVideo, LTXVideo, Wan
from vmoba.processors.grid import grid_from_rotary

GRIDS = list(itertools.product((1, 2, 3), (1, 2, 4), (1, 2, 5)))


def _wan_table(grid):
    T, H, W = grid
    return WanRotaryPosEmbed(24, (1, 2, 2), 32)(torch.zeros(1, 4, T, 2 * H, 2 * W))


def _cogvideox_table(grid):
    T, H, W = grid
    return get_3d_rotary_pos_embed(16, ((0, 0), (H, W)), (H, W), T)


def _hunyuan_table(grid):
    T, H, W = grid
    return HunyuanVideoRotaryPosEmbed(1, 1, [2, 4, 4])(torch.zeros(1, 4, T, H, W))


def _ltx_table(grid):
    T, H, W = grid
    rope = LTXVideoRotaryPosEmbed(dim=16, base_num_frames=20, base_height=64, base_width=64, patch_size=1,
                                  patch_size_t=1)
    return rope(torch.zeros(1, T * H * W, 16), T, H, W, (0.32, 32, 32))


@pytest.mark.parametrize("family, table", [(Wan(), _wan_table), (CogVideoX(), _cogvideox_table),
                                           (HunyuanVideo(), _hunyuan_table), (LTXVideo(), _ltx_table)])
def test_every_family_recovers_every_grid_exactly(family, table):
    for grid in GRIDS:
        assert grid_from_rotary(table(grid), math.prod(grid), family.rotary_axes) == grid, grid


def test_an_axis_of_length_one_is_not_confused_with_another():
    # latents (3, 2, 12) after a (1, 2, 2) patch: (3, 1, 6), not (1, 3, 6)
    assert grid_from_rotary(_wan_table((3, 1, 6)), 18) == (3, 1, 6)
    assert grid_from_rotary(_wan_table((1, 3, 6)), 18) == (1, 3, 6)

    model, inputs, _ = build("wan")
    inputs["hidden_states"] = torch.randn(2, 4, 3, 2, 12, dtype=torch.float64)
    proc = vmoba.VMoBAProcessor(VMoBAConfig(threshold=0.2, **SMALL_CHUNKS), capture=True)
    model.set_attn_processor(proc)
    run_model(model, inputs)
    assert {r.grid for r in proc.captured} == {(3, 1, 6)}
    vmoba.enable(model, VMoBAConfig(threshold=0.2, **SMALL_CHUNKS))  # the hook reads the latents: same grid
    (enabled,) = [p for p in model.attn_processors.values() if isinstance(p, vmoba.VMoBAProcessor)][:1]
    run_model(model, inputs)
    assert enabled.context.grid == (3, 1, 6)


def test_tables_without_3d_structure_give_none():
    assert grid_from_rotary(torch.randn(12, 8), 12) is None  # every channel changes at token 1
    assert grid_from_rotary(_wan_table((2, 2, 2)), 9) is None  # wrong token count
