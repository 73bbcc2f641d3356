"""The processors' context-parallel seam, one process: without ``enable_parallelism`` nothing of the engine
runs (no collective, no gathered rotary table) and the selection is kept for capture."""

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
