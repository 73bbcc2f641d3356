"""VMoBAProcessor on tiny random-weight models of every supported family, against their default processors."""


import pytest
import torch

import vmoba
from tiny_models import ALL_BLOCKS, FAMILIES, GRID, SMALL_CHUNKS, SPARSE, build, run_model
from vmoba import VMoBAConfig, VMoBAProcessor, get_partition


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processor_reproduces_default_and_sparsifies(family):
    model, inputs, n_layers = build(family)
    reference = run_model(model, inputs)

    # every block kept, through the whole sparse path: the family adapter must reproduce the default exactly
    proc = VMoBAProcessor(ALL_BLOCKS)
    model.set_attn_processor(proc)
    torch.testing.assert_close(run_model(model, inputs), reference, rtol=1e-9, atol=1e-9)
    assert sorted(proc.last_stats) == list(range(n_layers))
    for layer, stats in proc.last_stats.items():
        assert stats.sparse and stats.density == pytest.approx(1.0)
        scheme = ALL_BLOCKS.scheme_for_layer(layer)
        assert stats.scheme == scheme
        assert stats.num_blocks == get_partition(GRID, scheme, ALL_BLOCKS.chunk_for_scheme(scheme)).num_blocks

    # threshold=1.0 is dense by definition and runs the default processor
    model.set_attn_processor(VMoBAProcessor(VMoBAConfig(threshold=1.0)))
    torch.testing.assert_close(run_model(model, inputs), reference, rtol=1e-9, atol=1e-9)

    # a sparse configuration changes the output and attends to fewer pairs
    proc = VMoBAProcessor(SPARSE)
    model.set_attn_processor(proc)
    out = run_model(model, inputs)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert (out - reference).abs().max() > 1e-6
    densities = [proc.last_stats[i].density for i in range(n_layers)]
    assert all(0 < d <= 1 for d in densities) and min(densities) < 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_enable_and_disable_on_a_model(family):
    model, inputs, n_layers = build(family)
    reference = run_model(model, inputs)
    originals = dict(model.attn_processors)
    procs = vmoba.enable(model, ALL_BLOCKS)
    (proc,) = procs.values()
    torch.testing.assert_close(run_model(model, inputs), reference, rtol=1e-9, atol=1e-9)
    assert proc.context.grid == GRID and len(proc.layer_index) == n_layers
    # only video self-attention changed hands
    changed = [k for k, p in model.attn_processors.items() if p is proc]
    assert len(changed) == n_layers and all(p is originals[k] for k, p in model.attn_processors.items() if p is not proc)
    vmoba.disable(model)
    assert all(model.attn_processors[k] is p for k, p in originals.items())
    assert not hasattr(model, "_vmoba_state")


def test_dense_layers_and_steps_follow_the_pipeline_step():
    model, inputs, n_layers = build("wan")
    cfg = VMoBAConfig(threshold=0.2, dense_layers=(1,), dense_steps=2, **SMALL_CHUNKS)
    (proc,) = vmoba.enable(model, cfg).values()
    for step, t in enumerate([900, 900, 700, 700, 500, 300]):  # CFG: two calls per step for the first two
        run_model(model, {**inputs, "timestep": torch.tensor([t, t])})
        expected_step = [0, 0, 1, 1, 2, 3][step]
        assert proc.context.step == expected_step
        dense = {i for i, s in proc.last_stats.items() if not s.sparse}
        assert dense == (set(range(n_layers)) if expected_step < 2 else {1})
    run_model(model, {**inputs, "timestep": torch.tensor([950, 950])})  # a new pipeline call starts over
    assert proc.context.step == 0


def test_dense_steps_without_enable_says_what_to_call():
    model, inputs, _ = build("wan")
    model.set_attn_processor(VMoBAProcessor(VMoBAConfig(dense_steps=1, **SMALL_CHUNKS)))
    with pytest.raises(RuntimeError, match="vmoba.enable"):
        run_model(model, inputs)


def test_grid_errors_are_explained():
    model, inputs, _ = build("wan")
    model.set_attn_processor(VMoBAProcessor(SPARSE, grid=(3, 4, 5)))
    with pytest.raises(ValueError, match=r"grid \(3, 4, 5\).*60 tokens.*72 video tokens"):
        run_model(model, inputs)
    # CogVideoX 1.0 has no rotary embedding: without enable() the grid is unknown
    model, inputs, _ = build("cogvideox")
    inputs.pop("image_rotary_emb")
    model.set_attn_processor(VMoBAProcessor(SPARSE))
    with pytest.raises(RuntimeError, match="vmoba.enable"):
        run_model(model, inputs)
    vmoba.enable(model, SPARSE)
    assert torch.isfinite(run_model(model, inputs)).all()


def test_unsupported_models_and_bad_arguments():
    with pytest.raises(ValueError, match="not a supported video transformer"):
        vmoba.enable(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pipeline or transformer"):
        vmoba.enable(object())
    with pytest.raises(ValueError, match="family"):
        VMoBAProcessor(family="sora")


def test_backend_choice_reaches_the_dense_paths():
    model, inputs, _ = build("wan")
    proc = VMoBAProcessor(SPARSE)
    model.set_attn_processor(proc)
    model.set_attention_backend("native")
    assert proc._attention_backend is not None
    run_model(model, inputs)
    cross = proc._defaults[("wan", type(model.blocks[0].attn2._default_processor_cls()))]
    assert cross._attention_backend == proc._attention_backend


def test_a_generic_attention_of_no_supported_family_is_refused_by_name():
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=16, heads=2, dim_head=8)
    x = torch.randn(1, 6, 16)
    for proc in (VMoBAProcessor(), vmoba.CrissCrossAttnProcessor()):
        attn.set_processor(proc)
        with pytest.raises(TypeError, match=r"cannot tell which video model this Attention.*vmoba\.enable") as err:
            attn(x, encoder_hidden_states=torch.randn(1, 3, 16))
        assert "cogvideox" not in str(err.value).split("(supported")[0]
    # told the family, it runs as that family
    attn.set_processor(VMoBAProcessor(SPARSE, family="cogvideox", grid=(1, 2, 3)))
    assert attn(x, encoder_hidden_states=torch.randn(1, 3, 16))[0].shape == x.shape
