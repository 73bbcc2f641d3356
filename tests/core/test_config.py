import pytest

from vmoba import VMoBAConfig


def test_defaults_match_design():
    c = VMoBAConfig()
    assert c.layer_schedule == ("1d", "2d", "3d")
    assert (c.temporal_chunk, c.spatial_chunk, c.st_chunk) == (2, (3, 4), (4, 6, 4))
    assert (c.select_mode, c.threshold, c.threshold_type) == ("threshold", 0.25, "query_head")
    assert (c.granularity, c.query_tile) == ("token", 128)


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
