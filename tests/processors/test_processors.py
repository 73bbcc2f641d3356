"""VMoBAProcessor on tiny random-weight models of every supported family, against their default processors."""

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import vmoba  # noqa: E402
from vmoba import VMoBAConfig, VMoBAProcessor, get_partition  # noqa: E402

GRID = (3, 4, 6)  # post-patch latent grid of every case below
SMALL_CHUNKS = dict(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3))
ALL_BLOCKS = VMoBAConfig(select_mode="topk", topk=(99, 99, 99), **SMALL_CHUNKS)  # sparse path, every block
SPARSE = VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)


def _wan():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=4,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 8, 12), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 7, 16))
    return model, inputs, 4


def _cogvideox():
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=8, text_embed_dim=16, num_layers=3, sample_width=12,
                                        sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=6, use_rotary_positional_embeddings=True)
    rotary = get_3d_rotary_pos_embed(16, ((0, 0), (4, 6)), (4, 6), 3)
    inputs = dict(hidden_states=torch.randn(2, 3, 4, 8, 12), encoder_hidden_states=torch.randn(2, 6, 16),
                  timestep=torch.tensor([500, 500]), image_rotary_emb=rotary)
    return model, inputs, 3


def _hunyuan():
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                           num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=1,
                                           patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
                                           pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # the first prompt is padded
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 4, 6), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 5, 16), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8), guidance=torch.tensor([3000.0, 3000.0]))
    return model, inputs, 4


def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                       num_layers=3, caption_channels=16)
    inputs = dict(hidden_states=torch.randn(2, math.prod(GRID), 8), encoder_hidden_states=torch.randn(2, 5, 16),
                  timestep=torch.tensor([500, 500]), encoder_attention_mask=torch.ones(2, 5), num_frames=3, height=4,
                  width=6, rope_interpolation_scale=(0.32, 32, 32))
    return model, inputs, 3


FAMILIES = {"wan": _wan, "cogvideox": _cogvideox, "hunyuan": _hunyuan, "ltx": _ltx}


def _build(family):
    torch.manual_seed(0)
    model, inputs, n_layers = FAMILIES[family]()
    model = model.double().eval()
    inputs = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}
    if "image_rotary_emb" in inputs:
        inputs["image_rotary_emb"] = tuple(t.double() for t in inputs["image_rotary_emb"])
    return model, inputs, n_layers


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_processor_reproduces_default_and_sparsifies(family):
    model, inputs, n_layers = _build(family)
    reference = _run(model, inputs)

    # every block kept, through the whole sparse path: the family adapter must reproduce the default exactly
    proc = VMoBAProcessor(ALL_BLOCKS)
    model.set_attn_processor(proc)
    torch.testing.assert_close(_run(model, inputs), reference, rtol=1e-9, atol=1e-9)
    assert sorted(proc.last_stats) == list(range(n_layers))
    for layer, stats in proc.last_stats.items():
        assert stats.sparse and stats.density == pytest.approx(1.0)
        scheme = ALL_BLOCKS.scheme_for_layer(layer)
        assert stats.scheme == scheme
        assert stats.num_blocks == get_partition(GRID, scheme, ALL_BLOCKS.chunk_for_scheme(scheme)).num_blocks

    # threshold=1.0 is dense by definition and runs the default processor
    model.set_attn_processor(VMoBAProcessor(VMoBAConfig(threshold=1.0)))
    torch.testing.assert_close(_run(model, inputs), reference, rtol=1e-9, atol=1e-9)

    # a sparse configuration changes the output and attends to fewer pairs
    proc = VMoBAProcessor(SPARSE)
    model.set_attn_processor(proc)
    out = _run(model, inputs)
    assert out.shape == reference.shape and torch.isfinite(out).all()
    assert (out - reference).abs().max() > 1e-6
    densities = [proc.last_stats[i].density for i in range(n_layers)]
    assert all(0 < d <= 1 for d in densities) and min(densities) < 1


@pytest.mark.parametrize("family", list(FAMILIES))
def test_enable_and_disable_on_a_model(family):
    model, inputs, n_layers = _build(family)
    reference = _run(model, inputs)
    originals = dict(model.attn_processors)
    procs = vmoba.enable(model, ALL_BLOCKS)
    (proc,) = procs.values()
    torch.testing.assert_close(_run(model, inputs), reference, rtol=1e-9, atol=1e-9)
    assert proc.context.grid == GRID and len(proc.layer_index) == n_layers
    # only video self-attention changed hands
    changed = [k for k, p in model.attn_processors.items() if p is proc]
    assert len(changed) == n_layers and all(p is originals[k] for k, p in model.attn_processors.items() if p is not proc)
    vmoba.disable(model)
    assert all(model.attn_processors[k] is p for k, p in originals.items())
    assert not hasattr(model, "_vmoba_state")


def test_dense_layers_and_steps_follow_the_pipeline_step():
    model, inputs, n_layers = _build("wan")
    cfg = VMoBAConfig(threshold=0.2, dense_layers=(1,), dense_steps=2, **SMALL_CHUNKS)
    (proc,) = vmoba.enable(model, cfg).values()
    for step, t in enumerate([900, 900, 700, 700, 500, 300]):  # CFG: two calls per step for the first two
        _run(model, {**inputs, "timestep": torch.tensor([t, t])})
        expected_step = [0, 0, 1, 1, 2, 3][step]
        assert proc.context.step == expected_step
        dense = {i for i, s in proc.last_stats.items() if not s.sparse}
        assert dense == (set(range(n_layers)) if expected_step < 2 else {1})
    _run(model, {**inputs, "timestep": torch.tensor([950, 950])})  # a new pipeline call starts over
    assert proc.context.step == 0


def test_dense_steps_without_enable_says_what_to_call():
    model, inputs, _ = _build("wan")
    model.set_attn_processor(VMoBAProcessor(VMoBAConfig(dense_steps=1, **SMALL_CHUNKS)))
    with pytest.raises(RuntimeError, match="vmoba.enable"):
        _run(model, inputs)


def test_grid_errors_are_explained():
    model, inputs, _ = _build("wan")
    model.set_attn_processor(VMoBAProcessor(SPARSE, grid=(3, 4, 5)))
    with pytest.raises(ValueError, match=r"grid \(3, 4, 5\).*60 tokens.*72 video tokens"):
        _run(model, inputs)
    # CogVideoX 1.0 has no rotary embedding: without enable() the grid is unknown
    model, inputs, _ = _build("cogvideox")
    inputs.pop("image_rotary_emb")
    model.set_attn_processor(VMoBAProcessor(SPARSE))
    with pytest.raises(RuntimeError, match="vmoba.enable"):
        _run(model, inputs)
    vmoba.enable(model, SPARSE)
    assert torch.isfinite(_run(model, inputs)).all()


def test_unsupported_models_and_bad_arguments():
    with pytest.raises(ValueError, match="not a supported video transformer"):
        vmoba.enable(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="pipeline or transformer"):
        vmoba.enable(object())
    with pytest.raises(ValueError, match="family"):
        VMoBAProcessor(family="sora")


def test_backend_choice_reaches_the_dense_paths():
    model, inputs, _ = _build("wan")
    proc = VMoBAProcessor(SPARSE)
    model.set_attn_processor(proc)
    model.set_attention_backend("native")
    assert proc._attention_backend is not None
    _run(model, inputs)
    cross = proc._defaults[("wan", type(model.blocks[0].attn2._default_processor_cls()))]
    assert cross._attention_backend == proc._attention_backend
