"""`vmoba.enable` on whole pipelines: the denoising step it follows, and xformers on top of it."""

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName
from PIL import Image

import vmoba
from tiny_models import SMALL_CHUNKS, build, run_model
from vmoba import VMoBAConfig
from vmoba.processors import patching

STEPS = 4


def _tiny_wan22_i2v():
    """Wan 2.2 image-to-video as the 5B TI2V model runs it (``expand_timesteps``: the first latent frame holds the
    image and gets timestep 0 on every step), at toy sizes, random weights."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1,
                           temperal_downsample=[True, True], scale_factor_temporal=4, scale_factor_spatial=4)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=16, freq_dim=32, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    # the prompt goes in as embeddings: the pipeline's text cleaning needs ftfy, which tests need not install
    return WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
                                   expand_timesteps=True)


@pytest.mark.slow
def test_dense_steps_follow_the_pipeline_step_with_expanded_timesteps():
    pipe = _tiny_wan22_i2v()
    (proc,) = vmoba.enable(pipe, VMoBAConfig(threshold=0.2, dense_steps=2, **SMALL_CHUNKS)).values()
    proc.capture = True
    text = torch.randn(1, 8, 16)
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    for _ in range(2):  # a second pipeline call starts counting again
        proc.reset_stats()
        pipe(image=image, prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text), height=32, width=32, num_frames=5,
             num_inference_steps=STEPS, guidance_scale=2.0, output_type="latent")
        # two video self-attention layers, two classifier-free-guidance calls per step
        assert [r.step for r in proc.captured] == [s for s in range(STEPS) for _ in range(4)]
        assert [r.scheme == "dense" for r in proc.captured] == [s < 2 for s in range(STEPS) for _ in range(4)]
        assert {r.grid for r in proc.captured} == {(2, 4, 4)}


def test_a_pipelines_transformer_called_directly_before_any_pipeline_call_counts_its_own_timesteps():
    """The pipeline's current timestep exists only once a pipeline call started; before that (a training loop
    calling pipe.transformer) the step follows the transformer's own timestep input."""
    pipe = _tiny_wan22_i2v()
    (proc,) = vmoba.enable(pipe, VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)).values()
    inputs = dict(hidden_states=torch.randn(1, 16, 2, 8, 8), encoder_hidden_states=torch.randn(1, 8, 16))
    for step, t in enumerate((900.0, 700.0)):
        pipe.transformer(timestep=torch.tensor([t]), **inputs)
        assert proc.context.step == step


@pytest.mark.slow
def test_a_pipeline_generates_with_a_mixed_schedule():
    pipe = _tiny_wan22_i2v()
    config = VMoBAConfig(layer_schedule=("crisscross", "2d"), threshold=0.2, **SMALL_CHUNKS)
    (proc,) = vmoba.enable(pipe, config).values()
    text = torch.randn(1, 8, 16)
    image = Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    latents = pipe(image=image, prompt_embeds=text, negative_prompt_embeds=torch.zeros_like(text), height=32,
                   width=32, num_frames=5, num_inference_steps=2, guidance_scale=2.0, output_type="latent").frames
    assert latents.shape == (1, 16, 2, 8, 8) and torch.isfinite(latents).all()
    assert [proc.last_stats[i].scheme for i in range(2)] == ["crisscross", "2d"]
    assert all(s.sparse for s in proc.last_stats.values())


def test_a_model_alone_counts_steps_from_its_largest_timestep():
    model, inputs, _ = build("wan")
    (proc,) = vmoba.enable(model, VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)).values()
    tokens = 3 * 4 * 6
    for step, t in enumerate((900.0, 700.0, 500.0)):
        timestep = torch.full((2, tokens), t)
        timestep[:, : 4 * 6] = 0  # the first latent frame is the clean conditioning image
        run_model(model, {**inputs, "timestep": timestep})
        assert proc.context.step == step


def test_an_explicit_timestep_source_is_followed():
    model, inputs, _ = build("wan")
    now = {"t": 900}
    (proc,) = vmoba.enable(model, VMoBAConfig(**SMALL_CHUNKS), timestep_source=lambda: now["t"]).values()
    for step, t in enumerate((900, 800, 700)):
        now["t"] = t
        run_model(model, inputs)  # the model's own timestep input stays 500
        assert proc.context.step == step
    with pytest.raises(TypeError, match="timestep_source"):
        vmoba.enable(model, timestep_source=3)


def _pipe_with(model):
    class Pipe:  # the part of a diffusers pipeline enable() uses
        def __init__(self):
            self.components = {"transformer": model, "vae": torch.nn.Identity()}

    return Pipe()


def test_xformers_without_the_package_says_so_and_changes_nothing(monkeypatch):
    monkeypatch.setattr(patching, "is_xformers_available", lambda: False)
    model, inputs, _ = build("wan")
    pipe = _pipe_with(model)
    (proc,) = vmoba.enable(pipe, VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)).values()
    before = dict(model.attn_processors)
    for call in (pipe.enable_xformers_memory_efficient_attention, model.enable_xformers_memory_efficient_attention):
        with pytest.raises(ModuleNotFoundError, match="xformers package"):
            call()
    assert dict(model.attn_processors) == before
    assert all(p._attention_backend is None for p in before.values())
    run_model(model, inputs)
    assert all(s.sparse for s in proc.last_stats.values())


def test_xformers_runs_the_dense_paths_and_keeps_vmoba(monkeypatch):
    # what diffusers checks before it switches to its xformers backend, as on a machine that has xformers
    monkeypatch.setattr(patching, "is_xformers_available", lambda: True)
    monkeypatch.setattr(attention_dispatch, "_CAN_USE_XFORMERS_ATTN", True)
    registry = attention_dispatch._AttentionBackendRegistry
    active = registry._active_backend
    monkeypatch.setattr(registry, "_active_backend", active)  # restored after the test whatever happens
    model, _, _ = build("wan")
    pipe = _pipe_with(model)
    (proc,) = vmoba.enable(pipe, VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)).values()
    pipe.enable_xformers_memory_efficient_attention()
    processors = model.attn_processors
    assert [n for n, p in processors.items() if p is proc] == [f"blocks.{i}.attn1.processor" for i in range(4)]
    assert all(p._attention_backend == AttentionBackendName.XFORMERS for p in processors.values())
    with pytest.raises(ValueError, match="attention_op"):
        pipe.enable_xformers_memory_efficient_attention(attention_op=object())
    assert registry._active_backend == AttentionBackendName.XFORMERS
    pipe.disable_xformers_memory_efficient_attention()
    assert all(p._attention_backend is None for p in model.attn_processors.values())
    assert registry._active_backend == active
    vmoba.disable(pipe)
    assert not hasattr(pipe, "enable_xformers_memory_efficient_attention")


def test_a_processor_replaced_behind_enable_is_reported(recwarn):
    model, inputs, _ = build("wan")
    vmoba.enable(model, VMoBAConfig(**SMALL_CHUNKS))
    run_model(model, inputs)
    assert not [w for w in recwarn if "were replaced since" in str(w.message)]
    attn = model.blocks[1].attn1
    attn.set_processor(attn._default_processor_cls())
    with pytest.warns(UserWarning, match="some of its VMoBA processors were replaced since"):
        run_model(model, inputs)
    vmoba.disable(model)
