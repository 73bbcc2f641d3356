"""The demo's plain functions against independent computations (no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vmoba
from vmoba.ui import attention_view as av
from vmoba.ui.files import OutputFolder
from vmoba.ui.generation import VideoRequest, vmoba_config
from vmoba.ui.limits import Limits
from vmoba.ui.media import fit_side, side_by_side
from vmoba.ui.models import DEFAULT_MODEL, ModelRegistry
from vmoba.ui.motion_demo import describe
from vmoba.ui.speed import check_grid, partition_image

from ui_support import TEST_LIMITS


def _record(grid=(3, 4, 4), heads=2, seed=0, layer=2, config=vmoba.VMoBAConfig(st_chunk=(1, 2, 2), spatial_chunk=(2, 2))):
    """A selection captured by a real VMoBAProcessor call on random inputs."""
    S = math.prod(grid)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, S, heads, 8, generator=g) for _ in range(3))
    mask = vmoba.select_blocks(q, k, grid, layer, config)
    scheme = config.scheme_for_layer(layer)
    block_ids = vmoba.partition_blocks(grid, scheme, config.chunk_for_scheme(scheme))
    return vmoba.SelectionRecord(step=0, layer=layer, grid=grid, scheme=scheme, block_ids=block_ids, mask=mask,
                                 text_len=0, density=0.5)


def test_token_at_maps_pixels_and_frames_to_latent_tokens():
    # Wan VAE: 17 frames -> 5 latent frames; frame 0 alone, then runs of 4
    expected_t = [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4]
    assert [av.latent_frame(f, 17, 5) for f in range(17)] == expected_t
    assert [av.video_frame(t, 17, 5) for t in range(5)] == [0, 4, 8, 12, 16]
    token = av.token_at(6, 63.9, 8.0, (17, 64, 64), (5, 8, 8))
    assert token == av.Token(2, 1, 7)
    assert token.index((5, 8, 8)) == (2 * 8 + 1) * 8 + 7
    with pytest.raises(ValueError, match="outside"):
        av.token_at(0, 64, 0, (17, 64, 64), (5, 8, 8))
    with pytest.raises(ValueError, match="frame"):
        av.token_at(17, 0, 0, (17, 64, 64), (5, 8, 8))


def test_selection_weights_are_the_recorded_mask_of_the_query():
    record = _record()
    grid = record.grid
    token = av.Token(1, 2, 3)
    q = token.index(grid)
    selection = av.selection_of(record, token)
    # naive loop over the tokens: the share of heads whose selected blocks hold each key token
    heads = record.mask.shape[1]
    for key in range(math.prod(grid)):
        block = int(record.block_ids[key])
        share = sum(bool(record.mask[0, h, q, block]) for h in range(heads)) / heads
        assert selection.weight[key] == pytest.approx(share)
        assert selection.own[key] == (block == int(record.block_ids[q]))
    one = av.selection_of(record, token, head=1)
    attended = sum(bool(record.mask[0, 1, q, int(record.block_ids[key])]) for key in range(math.prod(grid)))
    assert one.density == pytest.approx(attended / math.prod(grid))
    assert one.blocks_selected == int(record.mask[0, 1, q].sum())
    with pytest.raises(ValueError, match="head"):
        av.selection_of(record, token, head=2)


def test_render_marks_selected_blocks_and_changes_with_the_point():
    record = _record()
    frames = np.random.default_rng(0).random((9, 64, 64, 3)).astype(np.float32)
    image_a, caption = av.render(frames, record, av.Token(0, 0, 0), cell=8)
    image_b, _ = av.render(frames, record, av.Token(2, 3, 3), cell=8)
    T, H, W = record.grid
    assert image_a.shape == (H * 8 + av.LABEL_HEIGHT, T * W * 8 + (T - 1) * 4, 3)
    assert not np.array_equal(image_a, image_b)
    assert "own block" in caption and "layer 2" in caption


def test_criss_cross_view_draws_the_three_lines():
    grid = (3, 4, 5)
    record = vmoba.SelectionRecord(0, 0, grid, "crisscross", None, None, 0, 0.1)
    selection = av.selection_of(record, av.Token(1, 2, 3))
    t, h, w = np.unravel_index(np.arange(60), grid)
    on_lines = ((h == 2) & (w == 3)) | ((t == 1) & (w == 3)) | ((t == 1) & (h == 2))
    assert np.array_equal(selection.weight > 0, on_lines)
    assert on_lines.sum() == 3 + 4 + 5 - 2


def test_find_record_names_what_was_recorded():
    record = _record()
    assert av.find_record([record], 0, 2) is record
    with pytest.raises(ValueError, match="no selection recorded for step 3"):
        av.find_record([record], 3, 2)


def test_video_request_checks_every_field():
    ok = VideoRequest.checked("a red circle", 17.0, 64, 64, 4, 5, 3, Limits())
    assert (ok.frames, ok.steps, ok.seed) == (17, 4, 3)
    bad = [(dict(prompt=""), "prompt"), (dict(prompt="x" * 201), "characters"), (dict(frames=16), "4k\\+1"),
           (dict(frames=37), "frames must be <= 33"), (dict(height=72), "multiples of 16"),
           (dict(steps=0), "steps must be >= 1"), (dict(guidance=float("nan")), "finite"),
           (dict(seed=-1), "seed"), (dict(frames=9.5), "frames must be an integer")]
    for change, message in bad:
        args = dict(prompt="a red circle", frames=17, height=64, width=64, steps=4, guidance=5.0, seed=0) | change
        with pytest.raises((ValueError, TypeError), match=message):
            VideoRequest.checked(**args, limits=Limits())


def test_vmoba_config_from_knobs():
    base = vmoba.VMoBAConfig()
    config = vmoba_config(base, threshold=0.5, select_mode="topk", threshold_type="block", topk=(2.0, 3, 4),
                          granularity="tile", layer_schedule="3d, 1d", temporal_chunk=1, spatial_chunk=(2, 2),
                          st_chunk=(1, 2, 2))
    assert config == base.replace(threshold=0.5, select_mode="topk", threshold_type="block", topk=(2, 3, 4),
                                  granularity="tile", layer_schedule=("3d", "1d"), temporal_chunk=1,
                                  spatial_chunk=(2, 2), st_chunk=(1, 2, 2))
    with pytest.raises(ValueError, match="layer schedule"):
        vmoba_config(base, threshold=0.5, select_mode="topk", threshold_type="block", topk=(2, 3, 4), granularity="tile",
                     layer_schedule="4d", temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(1, 2, 2))
    with pytest.raises(ValueError, match="space-time chunk"):
        vmoba_config(base, threshold=0.5, select_mode="topk", threshold_type="block", topk=(2, 3, 4), granularity="tile",
                     layer_schedule="1d", temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(0, 2, 2))


def test_model_registry_lists_pipeline_folders_only(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (tmp_path / "group" / "b").mkdir(parents=True)
    (tmp_path / "group" / "b" / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    (tmp_path / "empty").mkdir()
    registry = ModelRegistry(tmp_path)
    assert registry.names() == [DEFAULT_MODEL, "a", "group/b"]
    for name in ("../a", str(tmp_path / "a"), "empty"):
        with pytest.raises(ValueError, match="model must be one of"):
            registry.load(name)
    with pytest.raises(ValueError, match="could not be loaded") as failure:
        registry.load("a")  # a model_index.json without components
    assert str(tmp_path) not in str(failure.value)  # the server's folders stay out of what users see
    with pytest.raises(ValueError, match="not a folder"):
        ModelRegistry(tmp_path / "missing")


def test_describe_names_the_direction_of_the_flow():
    flow = np.zeros((2, 8, 8), np.float32)
    assert "Hardly any motion" in describe(flow)
    for (vx, vy), word in [((2, 0), "**right**"), ((0, -1.5), "**up**"), ((-1, 1), "**down-left**")]:
        flow[0], flow[1] = vx, vy
        text = describe(flow)
        assert word in text and f"{math.hypot(vx, vy):.2f} px/frame" in text


def test_sizes_and_layouts():
    assert fit_side(480, 640, 128) == (96, 128)
    assert fit_side(20, 20, 128) == (16, 16)
    row = side_by_side(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 20, 24, 3), np.uint8))
    assert row.shape == (2, 32, 48, 3)
    with pytest.raises(ValueError, match="length"):
        side_by_side(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8))


def test_speed_grid_limit_and_partition_picture():
    assert check_grid(4.0, 8, 8, TEST_LIMITS) == (4, 8, 8)
    with pytest.raises(ValueError, match="tokens; the limit"):
        check_grid(16, 32, 32, TEST_LIMITS)
    with pytest.raises(ValueError, match="frames T must be >= 1"):
        check_grid(0, 8, 8, TEST_LIMITS)
    config = vmoba.VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(1, 2, 2))
    image = partition_image((2, 4, 4), config, panel_px=16)  # 4 px per token, 3 px between frames
    label, strip, gap = 14, 16, 6

    def token_colour(row, t, h, w):
        y = row * (label + strip + gap) + label + h * 4 + 1
        return tuple(image[y, t * (16 + 3) + w * 4 + 1])

    # 1d, one frame per block: one colour per frame, different frames differ
    assert len({token_colour(0, 0, h, w) for h in range(4) for w in range(4)}) == 1
    assert token_colour(0, 0, 0, 0) != token_colour(0, 1, 0, 0)
    # 2d, 2x2 tiles through time: same colour within a tile and across frames, another in the next tile
    assert token_colour(1, 0, 0, 0) == token_colour(1, 0, 1, 1) == token_colour(1, 1, 1, 0)
    assert token_colour(1, 0, 0, 0) != token_colour(1, 0, 0, 2)
    # 3d, 1x2x2 cubes: the same tile in the next frame is another block
    assert token_colour(2, 0, 0, 0) == token_colour(2, 0, 1, 1) != token_colour(2, 1, 0, 0)


def test_output_folder_prunes_and_cleans_up():
    folder = OutputFolder(max_files=3)
    paths = []
    for _ in range(5):
        path = folder.new_file(".mp4")
        path.write_bytes(b"x")
        paths.append(path)
    folder.prune()
    assert len(folder.files()) == 3
    folder.cleanup()
    assert not folder.path.exists()
