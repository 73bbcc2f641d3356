"""Mixed layer schedules (criss-cross on some layers, VMoBA on others) and the dense fallbacks both processors share."""

import pytest
import torch

import vmoba
from tiny_models import GRID, SMALL_CHUNKS, build, run_model
from vmoba import CrissCrossAttnProcessor, VMoBAConfig, VMoBAProcessor

MIXED = VMoBAConfig(layer_schedule=("crisscross", "2d", "3d"), threshold=0.2, **SMALL_CHUNKS)


def _one_kind_per_layer(model):
    """The same attention as MIXED, each layer given its own single-kind processor."""
    one = {"2d": VMoBAConfig(layer_schedule=("2d",), threshold=0.2, **SMALL_CHUNKS),
           "3d": VMoBAConfig(layer_schedule=("3d",), threshold=0.2, **SMALL_CHUNKS)}
    processors = dict(model.attn_processors)
    for i in range(len(model.blocks)):
        kind = MIXED.scheme_for_layer(i)
        name = f"blocks.{i}.attn1.processor"
        processors[name] = CrissCrossAttnProcessor() if kind == "crisscross" else VMoBAProcessor(one[kind])
    model.set_attn_processor(processors)


@pytest.mark.parametrize("install", ["set_attn_processor", "enable"])
def test_mixed_schedule_runs_each_layer_as_scheduled(install):
    model, inputs, n_layers = build("wan")
    _one_kind_per_layer(model)
    reference = run_model(model, inputs)
    model, _, _ = build("wan")  # the same seeded weights, default processors
    if install == "enable":
        (proc,) = vmoba.enable(model, MIXED).values()
    else:
        proc = VMoBAProcessor(MIXED)
        model.set_attn_processor(proc)
    out = run_model(model, inputs)
    torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9)
    assert [proc.last_stats[i].scheme for i in range(n_layers)] == ["crisscross", "2d", "3d", "crisscross"]
    T, H, W = GRID
    assert proc.last_stats[0].density == pytest.approx((T + H + W - 2) / (T * H * W))


def test_dense_fallbacks_are_decided_once_for_both_processors():
    model, inputs, n_layers = build("wan")
    # threshold=1.0 keeps every block of a VMoBA layer, and means nothing to a criss-cross layer
    proc = VMoBAProcessor(MIXED.replace(threshold=1.0, dense_layers=(2,)))
    model.set_attn_processor(proc)
    run_model(model, inputs)
    reasons = [proc.last_stats[i].dense_reason for i in range(n_layers)]
    assert reasons[0] is None and reasons[3] is None
    assert "threshold=1.0" in reasons[1] and "dense_layers" in reasons[2]
    for p in (VMoBAProcessor(MIXED.replace(min_tokens=1000)), CrissCrossAttnProcessor(MIXED.replace(min_tokens=1000))):
        model.set_attn_processor(p)
        run_model(model, inputs)
        assert all("min_tokens=1000" in s.dense_reason for s in p.last_stats.values())


def test_vmoba_attention_refuses_a_criss_cross_layer():
    q = torch.randn(1, 12, 2, 8)
    with pytest.raises(ValueError, match="crisscross"):
        vmoba.vmoba_attention(q, q, q, (1, 3, 4), 0, MIXED)
    with pytest.raises(ValueError, match="crisscross"):
        vmoba.select_blocks(q, q, (1, 3, 4), 0, MIXED)


def test_recurrence_reaches_every_criss_cross_layer(monkeypatch):
    import vmoba.processors.base as base

    calls = []
    original = base.criss_cross_attention

    def spy(*args, **kwargs):
        calls.append(kwargs["recurrence"])
        return original(*args, **kwargs)

    model, inputs, n_layers = build("wan")
    once = run_model(model, inputs)  # default processors: the reference the loops must move away from
    monkeypatch.setattr(base, "criss_cross_attention", spy)
    outputs = {}
    for recurrence in (1, 2):
        model, _, _ = build("wan")
        proc = CrissCrossAttnProcessor(recurrence=recurrence)
        model.set_attn_processor(proc)
        outputs[recurrence] = run_model(model, inputs)
        assert proc.clone().recurrence == recurrence
    assert calls == [1] * n_layers + [2] * n_layers
    assert not torch.allclose(outputs[1], outputs[2]) and not torch.allclose(outputs[2], once)
    model, _, _ = build("wan")
    (proc,) = vmoba.enable(model, MIXED, processor=VMoBAProcessor).values()
    proc.recurrence = 2
    run_model(model, inputs)
    assert calls[2 * n_layers:] == [2, 2]  # the two criss-cross layers of the mixed schedule
    with pytest.raises(ValueError, match="recurrence must be >= 1"):
        CrissCrossAttnProcessor(recurrence=0)
