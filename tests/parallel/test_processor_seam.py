"""The processors' context-parallel seam, one process: without ``enable_parallelism`` nothing of the engine
runs (no collective, no gathered rotary table) and the selection is kept for capture."""

import re

import pytest
import torch
from diffusers import WanTransformer3DModel

import vmoba
from vmoba.parallel import world_size
from vmoba.processors import base

CONFIG = vmoba.VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), threshold=0.25,
                           layer_schedule=("crisscross", "2d", "3d"))


def _engine_must_not_run(*args, **kwargs):
    raise AssertionError("the context-parallel engine ran without context parallelism")


@pytest.mark.parametrize("install", ["enable", "set_attn_processor"])
def test_without_context_parallelism_the_engine_is_not_involved(monkeypatch, install):
    monkeypatch.setattr(base, "context_parallel_attention", _engine_must_not_run)
    monkeypatch.setattr(base, "gather_sequence", _engine_must_not_run)
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3,
                                  rope_max_seq_len=32)
    if install == "enable":
        (processor,) = vmoba.enable(model, CONFIG).values()
    else:  # the grid then comes from the rotary table
        processor = vmoba.VMoBAProcessor(CONFIG)
        model.set_attn_processor(processor)
    processor.capture = True
    assert world_size(processor._parallel_config) == 1 and processor.head_order is None
    with torch.no_grad():
        model(hidden_states=torch.randn(1, 4, 4, 8, 12), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 7, 16), return_dict=False)
    schemes = [record.scheme for record in processor.captured]
    assert schemes == ["crisscross", "2d", "3d"]
    assert [record.mask is not None for record in processor.captured] == [False, True, True]
    assert all(record.grid == (4, 4, 6) for record in processor.captured)


def test_head_order_is_checked_once_when_set():
    processor = vmoba.VMoBAProcessor(CONFIG)
    processor.head_order = torch.tensor([3, 0, 2, 1])
    assert processor.head_order == (3, 0, 2, 1)
    for bad, words in [([0, 0, 1], "permutation of the 3 heads, got [0, 0, 1]"),
                       ([1, 2], "permutation of the 2 heads, got [1, 2]"),
                       (torch.tensor([1.0, 0.0]), "1-D integer tensor, got torch.float32 (2,)"),
                       (torch.tensor([[1, 0]]), "1-D integer tensor, got torch.int64 (1, 2)"),
                       ([True, False], "head indices (ints)")]:
        with pytest.raises(ValueError, match=re.escape(words)):
            processor.head_order = bad
        assert processor.head_order == (3, 0, 2, 1)  # a refused order leaves the old one
    processor.head_order = None
    assert processor.head_order is None


def test_head_permutation_is_made_once_per_device_and_inverts():
    from vmoba.parallel.engine import _head_permutation, check_head_order

    order = check_head_order([2, 0, 3, 1], heads=4)
    index, inverse = _head_permutation(order, torch.device("cpu"))
    assert _head_permutation(order, torch.device("cpu"))[0] is index  # cached: no copy per call
    x = torch.randn(1, 5, 4, 3)
    assert torch.equal(x.index_select(2, index)[:, :, 1], x[:, :, 0])  # position 1 holds head 0
    assert torch.equal(x.index_select(2, index).index_select(2, inverse), x)
    with pytest.raises(ValueError, match=re.escape("permutation of the 8 heads, got [2, 0, 3, 1]")):
        check_head_order(order, heads=8)  # an order set for another model's head count
