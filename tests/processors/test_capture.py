"""The selection capture API: `proc.capture`, `proc.captured`, `vmoba.SelectionRecord`."""

import pytest
import torch

import vmoba
from _reference import brute_select
from tiny_models import GRID, SMALL_CHUNKS, SPARSE, build, run_model
from vmoba import VMoBAConfig, partition_blocks
from vmoba.processors import base


def _spy_attention(monkeypatch):
    """Record the video q, k that reach the sparse attention (as the adapters computed them)."""
    seen = []
    real = base.attention_with_selection

    def spy(q, k, v, grid, layer, config, **kwargs):
        seen.append((q.clone(), k.clone(), grid, layer))
        return real(q, k, v, grid, layer, config, **kwargs)

    monkeypatch.setattr(base, "attention_with_selection", spy)
    return seen


def test_captured_masks_are_the_selections_the_calls_used(monkeypatch):
    model, inputs, n_layers = build("wan")
    (proc,) = vmoba.enable(model, SPARSE).values()
    assert proc.capture is False
    run_model(model, inputs)
    assert proc.captured == []  # off by default: nothing is kept

    proc.capture = True
    seen = _spy_attention(monkeypatch)
    for t in (900, 700):
        run_model(model, {**inputs, "timestep": torch.tensor([t, t])})
    assert len(proc.captured) == len(seen) == 2 * n_layers
    for i, (record, (q, k, grid, layer)) in enumerate(zip(proc.captured, seen)):
        scheme = SPARSE.scheme_for_layer(layer)
        chunk = SPARSE.chunk_for_scheme(scheme)
        assert (record.step, record.layer, record.grid) == (i // n_layers, i % n_layers, GRID)
        assert record.scheme == scheme and record.text_len == 0 and record.dense_reason is None
        assert record.mask.device.type == "cpu" and record.mask.dtype == torch.bool
        assert torch.equal(record.mask, vmoba.select_blocks(q, k, grid, layer, SPARSE))
        reference, fragile = brute_select(q, k, grid, scheme, chunk, threshold=SPARSE.threshold)
        assert torch.equal(record.mask[~fragile], reference[~fragile])
        assert torch.equal(record.block_ids, partition_blocks(grid, scheme, chunk))
        pairs = record.mask[..., record.block_ids].float().mean().item()  # [B, H, S, S] attended pairs
        assert record.density == pytest.approx(pairs, rel=1e-6)
    proc.reset_stats()
    assert proc.captured == []


def test_dense_and_criss_cross_calls_are_recorded_without_a_mask():
    model, inputs, n_layers = build("wan")
    proc = vmoba.VMoBAProcessor(VMoBAConfig(threshold=0.2, dense_layers=(1,), **SMALL_CHUNKS), capture=True)
    model.set_attn_processor(proc)
    run_model(model, inputs)
    assert [r.layer for r in proc.captured] == list(range(n_layers))
    dense = proc.captured[1]
    assert (dense.scheme, dense.mask, dense.block_ids, dense.density) == ("dense", None, None, 1.0)
    assert "dense_layers" in dense.dense_reason and dense.grid == GRID
    assert all(r.step is None for r in proc.captured)  # without vmoba.enable the step is unknown

    proc = vmoba.CrissCrossAttnProcessor(capture=True)
    model.set_attn_processor(proc)
    run_model(model, inputs)
    T, H, W = GRID
    assert [(r.scheme, r.mask, r.block_ids) for r in proc.captured] == [("crisscross", None, None)] * n_layers
    assert proc.captured[0].density == pytest.approx((T + H + W - 2) / (T * H * W))


def test_selection_record_is_exported_and_frozen():
    assert vmoba.SelectionRecord is base.SelectionRecord and "SelectionRecord" in vmoba.__all__
    record = vmoba.SelectionRecord(0, 0, GRID, "1d", None, None, 0, 1.0)
    with pytest.raises(AttributeError):
        record.step = 1


@pytest.mark.parametrize("family, text_len, text_first", [("cogvideox", 6, True), ("hunyuan", 5, False)])
def test_joint_attention_records_the_video_queries_only(monkeypatch, family, text_len, text_first):
    model, inputs, n_layers = build(family)
    seen = _spy_attention(monkeypatch)
    proc = vmoba.VMoBAProcessor(SPARSE, capture=True)
    model.set_attn_processor(proc)
    run_model(model, inputs)
    assert len(proc.captured) == len(seen) == n_layers
    for record, (q, k, grid, layer) in zip(proc.captured, seen):
        video = slice(text_len, None) if text_first else slice(None, -text_len)
        assert record.text_len == text_len and record.grid == GRID
        assert torch.equal(record.mask, vmoba.select_blocks(q[:, video], k[:, video], grid, layer, SPARSE))
