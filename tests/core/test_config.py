import numpy as np
import pytest
import torch

import vmoba
from vmoba import VMoBAConfig


def test_defaults_match_design():
    c = VMoBAConfig()
    assert c.layer_schedule == ("1d", "2d", "3d")
    assert (c.temporal_chunk, c.spatial_chunk, c.st_chunk) == (2, (3, 4), (4, 6, 4))
    assert (c.select_mode, c.threshold, c.threshold_type) == ("threshold", 0.25, "query_head")
    assert (c.granularity, c.query_tile) == ("auto", 128)


@pytest.mark.parametrize(
    "field, value",
    [
        ("layer_schedule", ()),
        ("layer_schedule", ("1d", "4d")),
        ("temporal_chunk", 0),
        ("spatial_chunk", (3,)),
        ("spatial_chunk", (3, 0)),
        ("st_chunk", (4, 6)),
        ("st_chunk", (4, 6, 1.5)),
        ("select_mode", "random"),
        ("threshold", 1.5),
        ("threshold", -0.1),
        ("threshold", "high"),
        ("threshold_type", "per_token"),
        ("topk", (1, 2)),
        ("topk", (0, 2, 3)),
        ("granularity", "pixel"),
        ("query_tile", 0),
        ("dense_layers", (-1,)),
        ("dense_steps", -2),
        ("min_tokens", 1.5),
        ("backend", "cuda"),
        ("memory_budget_mb", 0),
    ],
)
def test_bad_field_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        VMoBAConfig(**{field: value})


def test_lists_from_yaml_become_tuples_and_round_trip():
    c = VMoBAConfig(layer_schedule=["3d", "1d"], spatial_chunk=[2, 2], dense_layers=[3, 1, 3])
    assert c.layer_schedule == ("3d", "1d") and c.spatial_chunk == (2, 2) and c.dense_layers == (1, 3)
    assert VMoBAConfig.from_dict(c.to_dict()) == c


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="unknown VMoBAConfig field"):
        VMoBAConfig.from_dict({"treshold": 0.3})


def test_scheme_schedule():
    c = VMoBAConfig(layer_schedule=("1d", "2d", "3d"))
    assert [c.scheme_for_layer(i) for i in range(7)] == ["1d", "2d", "3d", "1d", "2d", "3d", "1d"]
    with pytest.raises(ValueError, match="layer_idx"):
        c.scheme_for_layer(-1)


def test_numbers_of_every_numeric_type_are_accepted():
    c = VMoBAConfig(threshold=np.float32(0.3), temporal_chunk=np.int64(1), spatial_chunk=(np.int32(2), 3),
                    st_chunk=np.array([1, 2, 3]), topk=(np.int64(1), 2, 3), query_tile=np.int16(8),
                    dense_layers=[np.int64(2)], dense_steps=np.int64(1), min_tokens=np.uint8(4),
                    memory_budget_mb=np.int64(64), validate_inputs=np.bool_(False))
    assert c.threshold == pytest.approx(0.3) and type(c.threshold) is float
    assert (c.temporal_chunk, c.spatial_chunk, c.st_chunk, c.topk) == (1, (2, 3), (1, 2, 3), (1, 2, 3))
    assert all(type(x) is int for x in (c.temporal_chunk, *c.spatial_chunk, *c.st_chunk, c.query_tile, c.dense_steps))
    assert (c.dense_layers, c.min_tokens, c.memory_budget_mb, c.validate_inputs) == ((2,), 4, 64, False)
    assert VMoBAConfig(threshold=torch.tensor(0.5)).threshold == 0.5
    assert VMoBAConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("threshold", np.float32(1.5), "must be <= 1.0, got 1.5"),
        ("threshold", float("nan"), "finite"),
        ("temporal_chunk", np.int64(0), r"\[0\] must be >= 1, got 0"),
        ("query_tile", 2.0, "must be an integer, got 2.0"),
        ("dense_steps", True, "must be an integer, got True"),
        ("validate_inputs", 1, "must be True or False"),
        ("layer_schedule", ("2d", 3), r"crisscross.*got \('2d', 3\)"),
    ],
)
def test_messages_say_what_was_wrong_with_the_value(field, value, message):
    with pytest.raises(ValueError, match=f"VMoBAConfig.{field}.*{message}"):
        VMoBAConfig(**{field: value})


def test_criss_cross_layers_in_the_schedule():
    c = VMoBAConfig(layer_schedule=("crisscross", "2d", "3d"))
    assert [c.scheme_for_layer(i) for i in range(4)] == ["crisscross", "2d", "3d", "crisscross"]
    with pytest.raises(ValueError, match="crisscross"):
        c.chunk_for_scheme("crisscross")


def test_auto_granularity_is_tile_for_the_triton_kernels_and_token_for_the_torch_path():
    config = VMoBAConfig()
    assert config.granularity == "auto"
    assert config.for_backend("triton").granularity == "tile"
    assert config.for_backend("torch").granularity == "token"
    explicit = VMoBAConfig(granularity="tile")
    assert explicit.for_backend("torch") is explicit
    assert config.for_backend("torch").replace(granularity="auto") == config


def test_auto_granularity_on_cpu_selects_per_token():
    q, k = torch.randn(2, 1, 4 * 6 * 6, 2, 8).unbind(0)
    for layer in range(3):
        auto = vmoba.select_blocks(q, k, (4, 6, 6), layer, VMoBAConfig(query_tile=8))
        token = vmoba.select_blocks(q, k, (4, 6, 6), layer, VMoBAConfig(query_tile=8, granularity="token"))
        assert torch.equal(auto, token)
    out, stats = vmoba.vmoba_attention(q, k, k, (4, 6, 6), 1, VMoBAConfig(), return_stats=True)
    assert stats.granularity == "token" and stats.backend == "torch"
