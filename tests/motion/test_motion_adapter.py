import math

import pytest
import torch
from diffusers import WanTransformer3DModel

from vmoba.motion import MotionEnergy, MotionEnergyAdapter
from vmoba.motion.synthetic import grating_clip

# The tiny shapes diffusers' own Wan tests use: two heads of 12, two layers.
TINY_WAN = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)


@pytest.fixture
def wan():
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY_WAN).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(2, 4, 3, 16, 16, generator=g),
        timestep=torch.tensor([10, 500]),
        encoder_hidden_states=torch.randn(2, 12, 16, generator=g),
    )
    return model, inputs


def reference(direction, n=9):
    frames, _ = grating_clip((64, 64), n, direction, 1.0, frequency=0.15, contrast=0.8)
    return frames


def small_adapter(model, std=None):
    """A small adapter for ``model``; with ``std`` its projection is drawn from N(0, std^2), so that it acts."""
    adapter = MotionEnergyAdapter.for_transformer(model, energy=MotionEnergy(num_orientations=4, num_scales=3), hidden=16)
    if std is not None:
        torch.nn.init.normal_(adapter.proj.weight, std=std)
    return adapter


def test_untrained_adapter_changes_nothing(wan):
    model, inputs = wan
    with torch.no_grad():
        before = model(**inputs).sample
        adapter = small_adapter(model)
        with adapter.attached(model, reference(0.0)):
            assert adapter.is_attached
            during = model(**inputs).sample
        after = model(**inputs).sample
    assert torch.equal(before, during)
    assert torch.equal(before, after)
    assert not adapter.is_attached and not model.patch_embedding._forward_hooks


def test_conditioning_reaches_the_output_and_depends_on_the_motion(wan):
    model, inputs = wan
    adapter = small_adapter(model, std=0.05)
    with torch.no_grad():
        before = model(**inputs).sample
        adapter.attach(model)
        adapter.set_reference(reference(0.0))
        right = model(**inputs).sample
        adapter.set_reference(reference(math.pi))
        left = model(**inputs).sample
        adapter.detach()
    assert not torch.allclose(before, right, atol=1e-4)
    assert not torch.allclose(right, left, atol=1e-4)
    # a condition of zero strength is the bare model again
    adapter.scale = 0.0
    with torch.no_grad(), adapter.attached(model, reference(0.0)):
        assert torch.equal(model(**inputs).sample, before)


def test_condition_follows_the_token_grid_and_batch(wan):
    model, inputs = wan
    adapter = small_adapter(model)
    adapter.set_reference(torch.stack([reference(0.0), reference(1.0)]))
    cond = adapter.condition((3, 8, 8))
    assert cond.shape == (2, model.config.num_attention_heads * model.config.attention_head_dim, 3, 8, 8)
    e = adapter.energy_features((3, 8, 8))
    assert e.shape == (2, adapter.energy.num_channels, 3, 8, 8)
    # one reference clip serves a whole batch (and the doubled batch of classifier-free guidance)
    adapter.set_reference(reference(0.0))
    out = adapter(torch.zeros(4, adapter.inner_dim, 3, 8, 8))
    assert torch.equal(out[0], out[3])


def test_adapter_trains_while_the_transformer_stays_frozen(wan):
    model, inputs = wan
    model.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    # the target is what a randomly initialised adapter of the same shape produces: reachable by training
    teacher = small_adapter(model)
    torch.nn.init.normal_(teacher.proj.weight, std=0.1)
    with torch.no_grad(), teacher.attached(model, reference(0.5)):
        target = model(**inputs).sample
    adapter = small_adapter(model)
    optimizer = torch.optim.Adam(adapter.trainable_parameters(), lr=1e-2)
    assert all(p.requires_grad for p in adapter.trainable_parameters())
    assert not any(p.requires_grad for p in adapter.energy.parameters())
    losses = []
    with adapter.attached(model, reference(0.5)):
        for _ in range(15):
            loss = torch.nn.functional.mse_loss(model(**inputs).sample, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, frozen[k]) for k, v in model.state_dict().items())
    assert float(adapter.proj.weight.detach().abs().max()) > 0


def test_save_and_load_round_trip(wan, tmp_path):
    model, inputs = wan
    adapter = small_adapter(model, std=0.05)
    adapter.save_pretrained(tmp_path / "adapter.safetensors")
    loaded = MotionEnergyAdapter.from_pretrained(tmp_path / "adapter.safetensors")
    with torch.no_grad():
        outs = []
        for a in (adapter, loaded):
            with a.attached(model, reference(0.0)):
                outs.append(model(**inputs).sample)
    assert torch.equal(outs[0], outs[1])


def test_clear_errors(wan):
    model, inputs = wan
    adapter = small_adapter(model)
    with pytest.raises(TypeError, match="patch_embedding"):
        adapter.attach(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not match"):
        MotionEnergyAdapter(7, energy=MotionEnergy(num_orientations=2, num_scales=2)).attach(model)
    adapter.attach(model)
    with pytest.raises(RuntimeError, match="already attached"):
        adapter.attach(model)
    with pytest.raises(RuntimeError, match="set_reference"):
        model(**inputs)
    with pytest.raises(ValueError, match="5 frames but at least 7"):
        adapter.set_reference(torch.rand(5, 3, 64, 64))
    with pytest.raises(TypeError, match="uint8"):
        adapter.set_reference(torch.zeros(9, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-finite"):
        adapter.set_reference(torch.full((9, 64, 64), float("nan")))
    adapter.set_reference(torch.rand(3, 9, 64, 64))
    with pytest.raises(ValueError, match="does not divide"):
        model(**inputs)
    adapter.detach()


def test_adapter_arguments_are_checked():
    energy = MotionEnergy(num_orientations=2, num_scales=1)
    for kwargs, error, words in (({"inner_dim": 0}, ValueError, "inner_dim must be >= 1"),
                                 ({"inner_dim": 8, "hidden": 2.5}, TypeError, "hidden must be an integer"),
                                 ({"inner_dim": 8, "scale": float("inf")}, ValueError, "scale must be a finite"),
                                 ({"inner_dim": 8, "train_energy": "yes"}, TypeError, "train_energy must be True"),
                                 ({"inner_dim": 8, "energy": "default"}, TypeError, "energy must be a MotionEnergy")):
        with pytest.raises(error, match=words):
            MotionEnergyAdapter(**{"energy": energy, **kwargs})
    import numpy as np

    assert MotionEnergyAdapter(np.int64(8), energy=energy, scale=np.float32(0.5)).inner_dim == 8


def test_global_pooling_is_the_frame_mean_of_token_pooling(wan):
    """Under global pooling every token of a latent frame gets the energy averaged over the whole frame: the
    token-pooled features of the same clip averaged over space (equal patches, so the mean of means)."""
    model, _ = wan
    energy = MotionEnergy(num_orientations=4, num_scales=3)
    tokens = MotionEnergyAdapter.for_transformer(model, energy=energy, hidden=16)
    pooled = MotionEnergyAdapter.for_transformer(model, energy=energy, hidden=16, pooling="global")
    clip = reference(0.7)
    grid = (3, 8, 8)
    tokens.set_reference(clip)
    pooled.set_reference(clip)
    expected = tokens.energy_features(grid).double().mean(dim=(3, 4), keepdim=True).expand(-1, -1, *grid)
    torch.testing.assert_close(pooled.energy_features(grid).double(), expected, rtol=1e-5, atol=1e-9)


def test_global_pooling_ignores_where_the_motion_is(wan):
    """The same motion in another place of the frame gives the same globally pooled features (and different
    token-pooled ones)."""
    model, _ = wan
    energy = MotionEnergy(num_orientations=4, num_scales=3)
    clip = torch.zeros(9, 3, 96, 128)
    left, right = clip.clone(), clip.clone()
    for t in range(9):  # a bright bar moving right, in the left or the right half, clear of the borders
        left[t, :, 40:56, 30 + t : 34 + t] = 1.0
        right[t, :, 40:56, 74 + t : 78 + t] = 1.0
    grid = (3, 6, 8)
    feats = {}
    for pooling in ("tokens", "global"):
        adapter = MotionEnergyAdapter.for_transformer(model, energy=energy, hidden=16, pooling=pooling)
        feats[pooling] = [adapter.reference_energy(c, grid) for c in (left, right)]
    torch.testing.assert_close(feats["global"][0], feats["global"][1], rtol=0.02, atol=1e-6)
    assert not torch.allclose(feats["tokens"][0], feats["tokens"][1], rtol=0.02)


def test_precomputed_energy_gives_the_same_output_as_the_clip(wan):
    model, inputs = wan
    for pooling in ("tokens", "global"):
        adapter = MotionEnergyAdapter.for_transformer(model, energy=MotionEnergy(num_orientations=4, num_scales=3),
                                                      hidden=16, pooling=pooling)
        torch.nn.init.normal_(adapter.proj.weight, std=0.05)
        grid = (3, 8, 8)
        with torch.no_grad(), adapter.attached(model, reference(1.2)):
            from_clip = model(**inputs).sample
            cached = adapter.reference_energy(reference(1.2), grid)
            adapter.set_reference_energy(cached)
            from_energy = model(**inputs).sample
        assert cached.shape[3:] == ((1, 1) if pooling == "global" else (8, 8))
        torch.testing.assert_close(from_energy, from_clip)


def test_precomputed_energy_is_checked(wan):
    model, _ = wan
    energy = MotionEnergy(num_orientations=4, num_scales=3)
    adapter = MotionEnergyAdapter.for_transformer(model, energy=energy, hidden=16, pooling="global")
    c = energy.num_channels
    with pytest.raises(ValueError, match=rf"\(B, {c}, T', H', W'\), got \(1, {c + 1}"):
        adapter.set_reference_energy(torch.zeros(1, c + 1, 3, 1, 1))
    with pytest.raises(ValueError, match="globally pooled"):
        adapter.set_reference_energy(torch.zeros(1, c, 3, 8, 8))
    adapter.set_reference_energy(torch.zeros(1, c, 5, 1, 1))
    with pytest.raises(ValueError, match="token grid"):
        adapter.energy_features((3, 8, 8))
    trained = MotionEnergyAdapter.for_transformer(model, energy=energy, hidden=16, train_energy=True)
    with pytest.raises(RuntimeError, match="train_energy"):
        trained.set_reference_energy(torch.zeros(1, c, 3, 8, 8))
    with pytest.raises(ValueError, match="pooling"):
        MotionEnergyAdapter(8, energy=energy, pooling="mean")


def test_pooling_survives_save_and_load(wan, tmp_path):
    model, _ = wan
    adapter = MotionEnergyAdapter.for_transformer(model, energy=MotionEnergy(num_orientations=4, num_scales=3),
                                                  hidden=16, pooling="global")
    adapter.save_pretrained(tmp_path / "a.safetensors")
    assert MotionEnergyAdapter.from_pretrained(tmp_path / "a.safetensors").pooling == "global"
    with pytest.raises(FileNotFoundError, match="no motion adapter"):
        MotionEnergyAdapter.from_pretrained(tmp_path / "missing.safetensors")


def test_attaching_does_not_make_the_transformer_part_of_the_adapter(wan, tmp_path):
    """The hook is the only link: the adapter's parameters and saved file hold the adapter alone."""
    model, _ = wan
    adapter = small_adapter(model)
    keys, count = set(adapter.state_dict()), len(list(adapter.parameters()))
    with adapter.attached(model):
        assert set(adapter.state_dict()) == keys and len(list(adapter.parameters())) == count
        adapter.save_pretrained(tmp_path / "a.safetensors")
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "a.safetensors")) == keys


def text_adapter(model):
    return MotionEnergyAdapter.for_transformer(model, energy=MotionEnergy(num_orientations=4, num_scales=3),
                                               hidden=16, pooling="global", inject="text")


def test_text_injection_is_exact_identity_untrained_and_adds_one_vector_per_clip(wan):
    model, inputs = wan
    adapter = text_adapter(model)
    assert adapter.inner_dim == TINY_WAN["text_dim"]
    inputs["encoder_hidden_states"][:, 7:] = 0  # the prompt's last 5 positions are padding, as WanPipeline pads
    with torch.no_grad():
        before = model(**inputs).sample
        with adapter.attached(model, reference(0.0)):
            untrained = model(**inputs).sample
        assert torch.equal(before, untrained)
        torch.nn.init.normal_(adapter.proj.weight, std=0.5)
        adapter.set_reference(reference(0.0))
        vector = adapter.condition((1, 1, 1)).flatten(1)  # (1, text_dim)
        # the reference: the same model called with that vector written into the padding rows by hand
        by_hand = inputs["encoder_hidden_states"].clone()
        by_hand[:, 7] = vector  # the first padding row only: the rest stays padding
        expected = model(**dict(inputs, encoder_hidden_states=by_hand)).sample
        with adapter.attached(model):
            steered = model(**inputs).sample
            adapter.set_reference(reference(math.pi))
            other = model(**inputs).sample
    torch.testing.assert_close(steered, expected)
    assert not torch.allclose(steered, before) and not torch.allclose(steered, other)
    # cached features give the same vector
    cached = adapter.reference_energy(reference(0.0), (3, 8, 8))
    assert cached.shape[2:] == (1, 1, 1)
    adapter.set_reference_energy(cached)
    torch.testing.assert_close(adapter.condition((1, 1, 1)).flatten(1), vector)
    # a prompt without padding has nowhere to put the motion: refused, not silently ignored
    full = dict(inputs, encoder_hidden_states=torch.randn(2, 12, TINY_WAN["text_dim"]))
    with adapter.attached(model), pytest.raises(ValueError, match="fills all 12 positions .has no padding position"):
        model(**full)


def test_conditioning_puts_the_motion_token_in_the_prompt_and_not_the_negative_prompt():
    from vmoba.pipelines.default import build_default_pipeline

    pipe = build_default_pipeline(seed=3)
    pipe.set_progress_bar_config(disable=True)
    adapter = MotionEnergyAdapter.for_transformer(pipe.transformer, energy=MotionEnergy(num_orientations=4,
                                                  num_scales=2), hidden=8, pooling="global", inject="text")
    torch.nn.init.normal_(adapter.proj.weight, std=0.5)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()),
                                               with_kwargs=True)
    call = dict(height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=5.0, output_type="latent")
    with torch.no_grad(), adapter.conditioning(pipe, reference(0.0)):
        steered = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames
        vector = adapter.condition((1, 1, 1)).flatten()
    # by hand: the prompt's embeddings with the vector in their first padding row; the negative prompt's untouched
    encode = lambda p: pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=16)[0]  # noqa: E731
    prompt, negative = encode("a red circle"), encode("")
    length = int((prompt[0] != 0).any(-1).sum())
    expected = prompt.clone()
    expected[0, length] = vector
    assert len(seen) == 4  # two steps, each a conditional and an unconditional call
    for i, states in enumerate(seen):
        torch.testing.assert_close(states, expected if i % 2 == 0 else negative)
    # outside the context the pipeline is as before
    assert "encode_prompt" not in vars(pipe) and not adapter.is_attached
    with torch.no_grad():
        plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **call).frames
        torch.testing.assert_close(seen[-2], prompt)
    assert not torch.allclose(plain, steered)
    with pytest.raises(RuntimeError, match="already wrapped"), adapter.conditioning(pipe):
        with adapter.conditioning(pipe):
            pass
    assert "encode_prompt" not in vars(pipe)
    with pytest.raises(TypeError, match="not a Wan-family pipeline"), adapter.conditioning(object()):
        pass
    # a patch adapter hooks the transformer for the duration
    patch = MotionEnergyAdapter.for_transformer(pipe.transformer, energy=MotionEnergy(num_orientations=4,
                                                num_scales=2), hidden=8)
    with patch.conditioning(pipe, reference(0.0)):
        assert patch.is_attached
    assert not patch.is_attached


def test_bypassed_adapter_passes_embeddings_through_while_attached(wan):
    model, inputs = wan
    adapter = small_adapter(model, std=0.5)
    with torch.no_grad():
        before = model(**inputs).sample
        with adapter.attached(model, reference(0.0)):
            steered = model(**inputs).sample
            with adapter.bypassed():
                assert adapter.is_attached
                torch.testing.assert_close(model(**inputs).sample, before, rtol=0, atol=0)
            torch.testing.assert_close(model(**inputs).sample, steered, rtol=0, atol=0)  # back on afterwards
    assert not torch.allclose(steered, before)


def test_bypassed_samples_pass_unchanged_and_the_others_are_conditioned(wan):
    """Per sample: what a batch gives with ``bypassed(samples)`` is, sample by sample, what the model gives
    with the adapter off (named samples) or on (the others); the transformer treats samples independently."""
    model, inputs = wan
    for adapter in (small_adapter(model, std=0.5), text_adapter(model)):
        if adapter.inject == "text":
            torch.nn.init.normal_(adapter.proj.weight, std=0.5)
            inputs["encoder_hidden_states"][:, 7:] = 0
        with torch.no_grad():
            before = model(**inputs).sample
            with adapter.attached(model, reference(0.0)):
                steered = model(**inputs).sample
                with adapter.bypassed(torch.tensor([True, False])):
                    mixed = model(**inputs).sample
                with adapter.bypassed(torch.tensor([False, True])):
                    other = model(**inputs).sample
        assert not torch.allclose(steered, before)
        torch.testing.assert_close(mixed[0], before[0], rtol=0, atol=0)
        torch.testing.assert_close(mixed[1], steered[1])
        torch.testing.assert_close(other[0], steered[0])
        torch.testing.assert_close(other[1], before[1], rtol=0, atol=0)
        with adapter.attached(model, reference(0.0)):
            with pytest.raises(ValueError, match="names 3 samples for a batch of 2"), adapter.bypassed(
                    torch.tensor([True, False, True])):
                model(**inputs)
            for bad in (torch.tensor([1, 0]), [True, False], torch.ones(2, 1, dtype=torch.bool)):
                with pytest.raises(ValueError, match=r"samples must be a \(batch,\) bool tensor"):
                    with adapter.bypassed(bad):
                        pass


def test_text_injection_settings_are_checked_and_saved(wan, tmp_path):
    model, _ = wan
    energy = MotionEnergy(num_orientations=4, num_scales=3)
    with pytest.raises(ValueError, match="needs pooling='global'"):
        MotionEnergyAdapter(16, energy=energy, inject="text")
    with pytest.raises(ValueError, match="inject"):
        MotionEnergyAdapter(16, energy=energy, pooling="global", inject="both")
    with pytest.raises(ValueError, match="text width"):
        MotionEnergyAdapter(17, energy=energy, pooling="global", inject="text").attach(model)
    adapter = text_adapter(model)
    c = energy.num_channels
    with pytest.raises(ValueError, match=rf"\(B, {c}, 1, 1, 1\)"):
        adapter.set_reference_energy(torch.zeros(1, c, 3, 1, 1))
    adapter.save_pretrained(tmp_path / "t.safetensors")
    loaded = MotionEnergyAdapter.from_pretrained(tmp_path / "t.safetensors")
    assert (loaded.inject, loaded.pooling, loaded.inner_dim) == ("text", "global", TINY_WAN["text_dim"])


def test_normalize_standardises_the_log_energy_over_channels(wan):
    """By hand: log(e C + 0.01), minus its channel mean, over its channel std, through encoder and projection."""
    model, _ = wan
    adapter = MotionEnergyAdapter.for_transformer(model, energy=MotionEnergy(num_orientations=4, num_scales=3),
                                                  hidden=16, pooling="global", inject="text", normalize=True)
    torch.nn.init.normal_(adapter.proj.weight, std=0.5)
    adapter.set_reference(reference(0.3))
    with torch.no_grad():
        e = adapter.energy_features((1, 1, 1)).double()
        f = torch.log(e * e.shape[1] + 1e-2)
        f = (f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-5)
        expected = adapter.double().proj(adapter.encoder(f))
        adapter.float()
        torch.testing.assert_close(adapter.condition((1, 1, 1)).double(), expected, rtol=1e-4, atol=1e-5)
    assert MotionEnergyAdapter(8, energy=MotionEnergy(num_orientations=4, num_scales=3), pooling="global",
                               inject="text", normalize=True).config()["normalize"] is True
