"""Property-based checks of the attention entry points over configs, grids, dtypes, shapes and bad arguments.

The property, for `vmoba_attention`, `select_blocks` and `criss_cross_attention`: every call either returns a
finite result equal to the float64 reference (tests/_reference.py, or the brute-force line mask below) or
raises ``ValueError`` / ``TypeError`` whose message names the argument that was wrong. Cases are drawn by
hypothesis with a fixed seed (``derandomize``), so every run checks the same examples.

The tests at the end pin the bugs these properties found (numpy integers refused, text_first taken by
truthiness, non-finite scales accepted, a numpy q crashing select_blocks), each with its example.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _reference import brute_partition, brute_select, dense_masked_attention
from vmoba import VMoBAConfig, criss_cross_attention, select_blocks, vmoba_attention

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# relative tolerance of an output against the float64 reference computed from the same (rounded) inputs
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
FRAGILE_TOL = 1e-5  # selection decisions within this of flipping are not compared (float32 gate rounding)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@st.composite
def configs(draw):
    return VMoBAConfig(
        temporal_chunk=draw(st.integers(1, 3)),
        spatial_chunk=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        st_chunk=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        select_mode=draw(st.sampled_from(["threshold", "topk"])),
        threshold=draw(st.sampled_from([0.0, 0.25, 0.6, 1.0])),
        threshold_type=draw(st.sampled_from(["query_head", "head_global", "block", "overall"])),
        topk=(draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))),
        granularity=draw(st.sampled_from(["token", "tile"])),
        query_tile=draw(st.integers(1, 6)),
        memory_budget_mb=draw(st.sampled_from([1, 256])),
    )


@st.composite
def cases(draw, text=True):
    """A valid call: grid, layer, config, (B, H, D), text layout, dtype and seeded q, k, v."""
    grid = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    text_len = draw(st.integers(0, 4)) if text else 0
    B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([2, 4, 8]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    S = math.prod(grid) + text_len
    q, k, v = (torch.randn(B, S, H, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    return dict(q=q, k=k, v=v, grid=grid, layer_idx=draw(st.integers(0, 5)), config=draw(configs()),
                text_len=text_len, text_first=draw(st.booleans()))


def _names_the_argument(error: Exception, names) -> bool:
    return isinstance(error, (ValueError, TypeError)) and any(n in str(error) for n in names)


def _close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert torch.isfinite(out).all()
    if out.numel() == 0:  # every row within rounding of a different selection: nothing robust to compare
        return
    err = (out.double() - ref).abs().max().item()
    scale = max(ref.abs().max().item(), 1.0)
    assert err <= TOLERANCE[dtype] * scale, f"max error {err:.3g} vs reference ({dtype})"


# -- vmoba_attention ----------------------------------------------------------------------------------------


def _vmoba_reference(c):
    """float64 output and the rows whose selection is robust (not within FRAGILE_TOL of flipping)."""
    q, k, v, grid, config = c["q"], c["k"], c["v"], c["grid"], c["config"]
    text_len, text_first = c["text_len"], c["text_first"]
    B, S, H, _ = q.shape
    scheme = config.scheme_for_layer(c["layer_idx"])
    chunk = config.chunk_for_scheme(scheme)
    vid = slice(text_len, S) if text_first else slice(0, S - text_len)
    block, fragile = brute_select(q[:, vid], k[:, vid], grid, scheme, chunk, select_mode=config.select_mode,
                                  threshold=config.threshold, threshold_type=config.threshold_type,
                                  topk=config.topk_for_scheme(scheme), granularity=config.granularity,
                                  query_tile=config.query_tile, tol=FRAGILE_TOL)
    ids = torch.as_tensor(brute_partition(grid, scheme, chunk))
    mask = torch.ones(B, H, S, S, dtype=torch.bool)
    mask[:, :, vid, vid] = block[..., ids]
    robust = torch.ones(B, S, H, dtype=torch.bool)
    robust[:, vid] = ~fragile.any(-1).transpose(1, 2)
    return dense_masked_attention(q, k, v, mask), robust


@PROPERTY
@given(c=cases())
def test_vmoba_attention_equals_the_float64_reference(c):
    out = vmoba_attention(**c)
    assert out.shape == c["q"].shape and out.dtype == c["q"].dtype
    ref, robust = _vmoba_reference(c)
    _close(out[robust], ref[robust], c["q"].dtype)


def _broken(c, kind):
    """``c`` with one argument made wrong; returns (kwargs, names the error must mention)."""
    c = dict(c)
    T, H_, W = c["grid"]
    q = c["q"]
    if kind == "grid negative":
        c["grid"] = (-T, H_, W)
    elif kind == "grid zero":
        c["grid"] = (T, 0, W)
    elif kind == "grid length":
        c["grid"] = (T * H_, W)
    elif kind == "grid float":
        c["grid"] = (float(T), H_, W)
    elif kind == "grid mismatch":
        c["grid"] = (T + 1, H_, W)
    elif kind == "grid string":
        c["grid"] = "T H W"
    elif kind == "layer negative":
        c["layer_idx"] = -1
    elif kind == "layer float":
        c["layer_idx"] = 0.5
    elif kind == "text_len negative":
        c["text_len"] = -1
    elif kind == "text_len too long":
        c["text_len"] = q.shape[1]
    elif kind == "text_len float":
        c["text_len"] = c["text_len"] + 0.5
    elif kind == "dtype int":
        c["q"], c["k"], c["v"] = (x.to(torch.int64) for x in (c["q"], c["k"], c["v"]))
    elif kind == "dtype mixed":
        c["k"] = c["k"].to(torch.float64 if q.dtype != torch.float64 else torch.float32)
    elif kind == "q 3-D":
        c["q"] = q[0]
    elif kind == "k heads":
        c["k"] = torch.cat([c["k"], c["k"]], dim=2)
    elif kind == "v head_dim":
        c["v"] = torch.cat([c["v"], c["v"]], dim=3)
    elif kind == "q numpy":
        c["q"] = q.float().numpy()
    elif kind == "q nan":
        c["q"] = q.clone()
        c["q"][..., 0, 0] = float("nan")
    elif kind == "v inf":
        c["v"] = c["v"].clone()
        c["v"][0, -1] = float("inf")
    elif kind == "config type":
        c["config"] = 0.25
    else:
        raise AssertionError(kind)
    names = {"grid": ("grid",), "layer": ("layer_idx",), "text_len": ("text_len",), "dtype": ("dtype",),
             "q": ("q",), "k": ("k",), "v": ("v",), "config": ("config", "VMoBAConfig")}[kind.split()[0]]
    return c, names


VMOBA_BREAKS = ["grid negative", "grid zero", "grid length", "grid float", "grid mismatch", "grid string",
                "layer negative", "layer float", "text_len negative", "text_len too long", "text_len float",
                "dtype int", "dtype mixed", "q 3-D", "k heads", "v head_dim", "q numpy", "q nan", "v inf",
                "config type"]


@PROPERTY
@given(c=cases(), kind=st.sampled_from(VMOBA_BREAKS))
def test_vmoba_attention_names_the_wrong_argument(c, kind):
    kwargs, names = _broken(c, kind)
    with pytest.raises((ValueError, TypeError)) as info:
        vmoba_attention(**kwargs)
    assert _names_the_argument(info.value, names), f"{kind}: {info.value}"


# -- select_blocks ------------------------------------------------------------------------------------------


@PROPERTY
@given(c=cases(text=False))
def test_select_blocks_equals_the_brute_force_selection(c):
    q, k, grid, config = c["q"], c["k"], c["grid"], c["config"]
    got = select_blocks(q, k, grid, c["layer_idx"], config)
    scheme = config.scheme_for_layer(c["layer_idx"])
    want, fragile = brute_select(q, k, grid, scheme, config.chunk_for_scheme(scheme), select_mode=config.select_mode,
                                 threshold=config.threshold, threshold_type=config.threshold_type,
                                 topk=config.topk_for_scheme(scheme), granularity=config.granularity,
                                 query_tile=config.query_tile, tol=FRAGILE_TOL)
    assert got.dtype == torch.bool and got.shape == want.shape
    assert torch.equal(got[~fragile], want[~fragile])
    own = torch.as_tensor(brute_partition(grid, scheme, config.chunk_for_scheme(scheme)))
    assert got.gather(-1, own.view(1, 1, -1, 1).expand(*got.shape[:3], 1)).all()  # own block always


SELECT_BREAKS = ["grid negative", "grid zero", "grid length", "grid float", "grid mismatch", "grid string",
                 "layer negative", "layer float", "q 3-D", "k heads", "q nan", "config type"]


@PROPERTY
@given(c=cases(text=False), kind=st.sampled_from(SELECT_BREAKS))
def test_select_blocks_names_the_wrong_argument(c, kind):
    kwargs, names = _broken(c, kind)
    with pytest.raises((ValueError, TypeError)) as info:
        select_blocks(kwargs["q"], kwargs["k"], kwargs["grid"], kwargs["layer_idx"], kwargs["config"])
    assert _names_the_argument(info.value, names), f"{kind}: {info.value}"


# -- criss_cross_attention ------------------------------------------------------------------------------------


def _criss_cross_reference(q, k, v, grid, scale, text_len, text_first):
    """float64, one query at a time: its keys are the video tokens sharing two of (t, h, w) with it, plus text."""
    q, k, v = q.double(), k.double(), v.double()
    B, S, H, D = q.shape
    T, Hh, W = grid
    scale = 1 / math.sqrt(D) if scale is None else scale
    video = list(range(text_len, S)) if text_first else list(range(S - text_len))
    text = [i for i in range(S) if i not in set(video)]
    coords = {tok: divmod(n, Hh * W)[:1] + divmod(n % (Hh * W), W) for n, tok in enumerate(video)}
    out = torch.empty_like(q)
    for i in range(S):
        if i in coords:
            t, h, w = coords[i]
            keys = text + [j for j in video if sum(a == b for a, b in zip(coords[j], (t, h, w))) >= 2]
        else:
            keys = list(range(S))
        logits = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, keys]) * scale
        out[:, i] = torch.einsum("bhj,bjhd->bhd", logits.softmax(-1), v[:, keys])
    return out


@PROPERTY
@given(c=cases(), scale=st.one_of(st.none(), st.floats(0.05, 2.0), st.sampled_from([np.float32(0.5), np.float64(1)])))
def test_criss_cross_attention_equals_the_float64_reference(c, scale):
    out = criss_cross_attention(c["q"], c["k"], c["v"], c["grid"], scale=scale, text_len=c["text_len"],
                                text_first=c["text_first"])
    assert out.shape == c["q"].shape and out.dtype == c["q"].dtype
    ref = _criss_cross_reference(c["q"], c["k"], c["v"], c["grid"], None if scale is None else float(scale),
                                 c["text_len"], c["text_first"])
    _close(out, ref, c["q"].dtype)


CRISS_CROSS_BREAKS = ["grid negative", "grid zero", "grid length", "grid float", "grid mismatch", "grid string",
                      "text_len negative", "text_len too long", "text_len float", "dtype int", "dtype mixed", "q 3-D",
                      "k heads", "v head_dim", "q numpy"]


@PROPERTY
@given(c=cases(), kind=st.sampled_from(CRISS_CROSS_BREAKS))
def test_criss_cross_attention_names_the_wrong_argument(c, kind):
    kwargs, names = _broken(c, kind)
    with pytest.raises((ValueError, TypeError)) as info:
        criss_cross_attention(kwargs["q"], kwargs["k"], kwargs["v"], kwargs["grid"], text_len=kwargs["text_len"],
                              text_first=kwargs["text_first"])
    assert _names_the_argument(info.value, names), f"{kind}: {info.value}"


# -- VMoBAConfig --------------------------------------------------------------------------------------------

ODD_VALUES = st.sampled_from([-1, 0, 1, 2, 0.5, -0.5, 1.5, float("nan"), float("inf"), True, None, "2", (1,),
                              (1, 2), (1, 2, 3), (0, 2), np.int64(2), np.float32(0.5), [2, 2]])
CONFIG_FIELDS = ["temporal_chunk", "spatial_chunk", "st_chunk", "threshold", "topk", "query_tile", "min_tokens",
                 "dense_layers", "dense_steps", "memory_budget_mb", "select_mode", "threshold_type", "granularity",
                 "layer_schedule", "validate_inputs"]


@PROPERTY
@given(field=st.sampled_from(CONFIG_FIELDS), value=ODD_VALUES)
def test_config_fields_are_accepted_or_refused_by_name(field, value):
    try:
        config = VMoBAConfig(**{field: value})
    except (ValueError, TypeError) as error:
        assert field in str(error), str(error)
        return
    stored = getattr(config, field)
    if isinstance(stored, float):
        assert math.isfinite(stored)
    if field in ("temporal_chunk", "query_tile", "memory_budget_mb"):
        assert isinstance(stored, int) and stored >= 1
    if field == "threshold":
        assert 0 <= stored <= 1


# -- bugs found in the library (files outside this suite's reach); each keeps its failing example ------------


@pytest.mark.parametrize("argument", ["grid", "layer_idx"])
def test_numpy_integer_grid_and_layer_are_integers(argument):
    q = torch.randn(1, 12, 2, 4)
    config = VMoBAConfig(temporal_chunk=1)
    grid, layer = ((np.int64(2), 2, 3), 0) if argument == "grid" else ((2, 2, 3), np.int64(0))
    assert torch.equal(vmoba_attention(q, q, q, grid, layer, config), vmoba_attention(q, q, q, (2, 2, 3), 0, config))


def test_numpy_integer_text_len_is_an_integer():
    q = torch.randn(1, 14, 2, 4)
    assert torch.equal(vmoba_attention(q, q, q, (2, 2, 3), text_len=np.int64(2)),
                       vmoba_attention(q, q, q, (2, 2, 3), text_len=2))


@pytest.mark.parametrize("function", ["vmoba_attention", "criss_cross_attention"])
@pytest.mark.parametrize("value", ["no", None])
def test_text_first_must_be_a_boolean(function, value):
    q = torch.randn(1, 14, 2, 4)
    call = vmoba_attention if function == "vmoba_attention" else criss_cross_attention
    with pytest.raises((ValueError, TypeError), match="text_first"):
        call(q, q, q, (2, 2, 3), text_len=2, text_first=value)


@pytest.mark.parametrize("function", ["vmoba_attention", "criss_cross_attention"])
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_scale_that_is_not_positive_and_finite_is_refused(function, scale):
    q = torch.randn(1, 12, 2, 4)
    call = vmoba_attention if function == "vmoba_attention" else criss_cross_attention
    with pytest.raises(ValueError, match="scale"):
        call(q, q, q, (2, 2, 3), scale=scale)


def test_select_blocks_names_a_non_tensor_q():
    k = torch.randn(1, 12, 2, 4)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        select_blocks(k.numpy(), k, (2, 2, 3), 0, VMoBAConfig(temporal_chunk=1))
