"""Single-process fine-tuning: the objective against its definition, data errors, checkpoints, cache, LoRA, VAE."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vmoba.motion import MotionEnergyAdapter, load_flow_model
from vmoba.pipelines import load_pipeline
from vmoba.pipelines.default import (DEFAULT_MAX_SEQUENCE_LENGTH, DEFAULT_VMOBA_CONFIG, MOTION_ADAPTER_FILE,
                                     WEIGHTS_DIR, build_default_pipeline, load_default_pipeline)
from vmoba.training import BatchOrder, ConfigError, DataError, config_from_dict, read_clips
from vmoba.training.config import FlowSettings
from vmoba.training.objectives import FlowMatchingLoss, encode_tokens, sample_sigmas, tokenize
from vmoba.training.shapes import write_shapes_dataset
from vmoba.training.state import list_checkpoints
from vmoba.training.trainer import run
from vmoba.video import read_video


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes") / "d", count=6, frames=5, size=32, seed=4)


def _config(tmp_path, root, **sections):
    base = {"model": {"pretrained": "default", "from_scratch": True},
            "data": {"root": str(root), "num_frames": 5, "height": 32, "width": 32},
            "training": {"output_dir": str(tmp_path / "run"), "max_steps": 3, "batch_size": 2, "learning_rate": 1e-3,
                         "checkpoint_every": 2, "log_every": 1, "threads": 1}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return config_from_dict(base, source="test.yaml")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


# -- the objective ----------------------------------------------------------------------------------------


def test_sigma_sampling_follows_the_shifted_uniform_law():
    shift = 3.0
    s = sample_sigmas(40000, torch.Generator().manual_seed(0), shift=shift).double()
    # s = k u / (1 + (k - 1) u) with u uniform  =>  P(S <= x) = x / (k - (k - 1) x)
    for x in (0.1, 0.3, 0.5, 0.7, 0.9):
        assert (s <= x).double().mean().item() == pytest.approx(x / (shift - (shift - 1) * x), abs=0.01)


def test_text_embeddings_match_the_pipelines_encode_prompt():
    pipe = build_default_pipeline(seed=1)
    prompts = ["a red circle moves right", "  a Blue  square goes up on a dark background ", ""]
    ids, mask = tokenize(pipe.tokenizer, prompts, DEFAULT_MAX_SEQUENCE_LENGTH)
    ours = encode_tokens(pipe.text_encoder, ids, mask)
    theirs, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                   max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH, device=torch.device("cpu"))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_flow_matching_loss_is_the_rectified_flow_velocity_error():
    pipe = build_default_pipeline(seed=2)
    seen = {}
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    loss_fn = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer, train_text_encoder=True,
                               max_sequence_length=16, caption_dropout=0.0, flow=FlowSettings(shift=3.0))
    x0 = torch.randn(3, 16, 2, 8, 8)
    mean, std = (t.view(1, -1, 1, 1, 1) for t in (torch.tensor(pipe.vae.config.latents_mean),
                                                     torch.tensor(pipe.vae.config.latents_std)))
    batch = {"latent_mean": x0 * std + mean, "latent_logvar": torch.full_like(x0, -200.0),  # no posterior noise
             "caption": ["a red circle moves right"] * 3}
    with torch.no_grad():
        loss = loss_fn(batch, torch.Generator().manual_seed(0))
        s = seen["timestep"].view(-1, 1, 1, 1, 1) / 1000
        assert torch.all((s > 0) & (s < 1))
        noise = (seen["hidden_states"] - (1 - s) * x0) / s  # x_s = (1 - s) x0 + s noise
        assert noise.std().item() == pytest.approx(1.0, abs=0.1)
        prediction = pipe.transformer(**{**seen, "return_dict": False})[0]
    torch.testing.assert_close(loss, torch.mean((prediction - (noise - x0)) ** 2), rtol=1e-4, atol=1e-5)


def test_foreground_weights_against_a_loop_in_float64():
    from vmoba.training.objectives import foreground_weights

    x0 = torch.randn(2, 3, 2, 4, 5, generator=torch.Generator().manual_seed(5))
    weights = foreground_weights(x0, 6.0)
    assert weights.shape == (2, 1, 2, 4, 5)
    x = x0.double().numpy()
    for b in range(2):
        for t in range(2):
            frame = x[b, :, t].reshape(3, -1)  # (C, positions)
            # torch's median of an even count is the lower of the two middle values
            background = np.sort(frame, axis=1)[:, (frame.shape[1] - 1) // 2]
            distance = np.sqrt(((frame - background[:, None]) ** 2).sum(0))
            expected = 1 + 6.0 * distance / distance.max()
            np.testing.assert_allclose(weights[b, 0, t].flatten().numpy(), expected, rtol=1e-5)

    # a plain frame with one square: the background weighs 1, the square 1 + strength
    plain = torch.full((1, 4, 1, 8, 8), 0.3)
    plain[..., 2:4, 5:7] += torch.tensor([1.0, -2.0, 0.5, 0.0]).view(1, 4, 1, 1, 1)
    w = foreground_weights(plain, 3.0)[0, 0, 0]
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:4, 5:7] = True
    assert torch.all(w[inside] == 4.0) and torch.all(w[~inside] == 1.0)


def test_foreground_weight_makes_the_velocity_error_a_weighted_mean():
    from vmoba.training.objectives import foreground_weights, velocity_error

    class Fixed(torch.nn.Module):  # a "transformer" whose prediction does not depend on its input
        dtype = torch.float32

        def __init__(self, prediction):
            super().__init__()
            self.prediction = prediction

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
            return (self.prediction,)

    g = torch.Generator().manual_seed(6)
    x0, noise, prediction = (torch.randn(2, 4, 2, 6, 6, generator=g) for _ in range(3))
    sigmas, context = torch.tensor([0.3, 0.8]), torch.zeros(2, 3, 8)
    squared = ((prediction - (noise - x0)) ** 2).double()
    plain = velocity_error(Fixed(prediction), x0, context, sigmas, noise)
    assert plain.item() == pytest.approx(squared.mean().item(), rel=1e-6)
    w = foreground_weights(x0, 5.0).double().expand_as(squared)
    weighted = velocity_error(Fixed(prediction), x0, context, sigmas, noise, foreground_weight=5.0)
    assert weighted.item() == pytest.approx(((w * squared).sum() / w.sum()).item(), rel=1e-6)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


def _gaussian_blur_loop(frame: np.ndarray, std: float) -> np.ndarray:
    """A 2-D Gaussian blur of ``frame`` (H, W) in float64, pixel by pixel: the weighted mean over the frame's
    positions with weights ``exp(-d^2 / (2 std^2))``, ``d`` the distance between the two positions."""
    h, w = frame.shape
    out = np.zeros_like(frame, dtype=np.float64)
    for i in range(h):
        for k in range(w):
            weights = np.array([[np.exp(-((i - j) ** 2 + (k - m) ** 2) / (2 * std ** 2)) for m in range(w)]
                                for j in range(h)])
            out[i, k] = (weights * frame).sum() / weights.sum()
    return out


def test_blurred_latents_against_a_gaussian_blur_loop_in_float64():
    from vmoba.training.objectives import blurred_latents

    x0 = torch.randn(2, 3, 2, 6, 7, generator=torch.Generator().manual_seed(11))
    stds = torch.tensor([0.7, 1.9])
    blurred = blurred_latents(x0, stds)
    assert blurred.shape == x0.shape
    for b in range(2):
        for c in range(3):
            for t in range(2):
                expected = _gaussian_blur_loop(x0[b, c, t].double().numpy(), stds[b].item())
                np.testing.assert_allclose(blurred[b, c, t].numpy(), expected, rtol=1e-5, atol=1e-6)
    # a std of 0 leaves the latents as they are; a constant frame stays constant up to the border
    torch.testing.assert_close(blurred_latents(x0, torch.zeros(2)), x0, rtol=0, atol=0)
    plain = torch.full((1, 2, 1, 8, 8), -0.4)
    torch.testing.assert_close(blurred_latents(plain, torch.tensor([2.5])), plain, rtol=0, atol=1e-6)


def test_a_blurred_source_keeps_the_unblurred_latents_as_what_the_velocity_leads_to():
    from vmoba.training.objectives import velocity_error

    seen = {}

    class Fixed(torch.nn.Module):
        dtype = torch.float32

        def __init__(self, prediction):
            super().__init__()
            self.prediction = prediction

        def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict):
            seen["noisy"] = hidden_states
            return (self.prediction,)

    g = torch.Generator().manual_seed(12)
    x0, source, noise, prediction = (torch.randn(2, 4, 2, 5, 5, generator=g) for _ in range(4))
    sigmas, context = torch.tensor([0.25, 0.9]), torch.zeros(2, 3, 8)
    error = velocity_error(Fixed(prediction), x0, context, sigmas, noise, source=source)
    s = sigmas.double().view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * source.double() + s * noise.double()
    torch.testing.assert_close(seen["noisy"].double(), noisy, rtol=1e-6, atol=1e-6)
    target = (noisy - x0.double()) / s  # x_s - s * target == x0
    assert error.item() == pytest.approx(((prediction.double() - target) ** 2).mean().item(), rel=1e-6)
    # without a source it is the plain rectified-flow error
    plain = velocity_error(Fixed(prediction), x0, context, sigmas, noise)
    assert plain.item() == pytest.approx(((prediction.double() - (noise - x0).double()) ** 2).mean().item(), rel=1e-6)


def test_flow_input_blur_noises_blurred_latents_and_targets_the_sharp_ones():
    pipe = build_default_pipeline(seed=2)
    seen = {}
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    # a bright square on a plain background: blurring changes it
    x0 = torch.zeros(2, 16, 2, 8, 8)
    x0[..., 2:5, 3:6] = 2.0
    mean, std = (t.view(1, -1, 1, 1, 1) for t in (torch.tensor(pipe.vae.config.latents_mean),
                                                     torch.tensor(pipe.vae.config.latents_std)))
    batch = {"latent_mean": x0 * std + mean, "latent_logvar": torch.full_like(x0, -200.0),
             "caption": ["a red square moves up"] * 2}
    noisy, losses = {}, {}
    for strength in (0.0, 3.0):
        loss_fn = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer,
                                   train_text_encoder=False, max_sequence_length=16, caption_dropout=0.0,
                                   flow=FlowSettings(shift=3.0, posterior="mean", input_blur=strength))
        with torch.no_grad():
            losses[strength] = loss_fn(batch, torch.Generator().manual_seed(7))  # blurs of about 1 latent pixel
            noisy[strength] = seen["hidden_states"].double()
            s = seen["timestep"].double().view(-1, 1, 1, 1, 1) / 1000
            prediction = pipe.transformer(**{**seen, "return_dict": False})[0].double()
        target = (noisy[strength] - x0.double()) / s  # leads back to the sharp latents from either input
        assert losses[strength].item() == pytest.approx(((prediction - target) ** 2).mean().item(), rel=1e-4)
    # the same noise and levels; the blurred run's input differs by (1 - s) (blur(x0) - x0), a Gaussian blur of
    # at most 3 s latent pixels
    from vmoba.training.objectives import blurred_latents

    difference = (noisy[3.0] - noisy[0.0]) / (1 - s)
    for b in range(2):
        def mismatch(c):
            return (blurred_latents(x0[b:b + 1], c.view(1)).double() - x0[b:b + 1] - difference[b:b + 1]).abs().max()

        candidates = torch.linspace(0, 3.0 * s[b].item(), 301)
        best = candidates[int(np.argmin([mismatch(c) for c in candidates]))]
        step = candidates[1] - candidates[0]
        candidates = torch.linspace(max(best - step, 0), best + step, 401)  # a finer look around the best
        errors = [mismatch(c) for c in candidates]
        assert min(errors) < 1e-4 and candidates[int(np.argmin(errors))] > 0.3


def test_posterior_mean_latents_ignore_the_posterior_spread():
    pipe = build_default_pipeline(seed=2)
    x0 = torch.randn(2, 16, 2, 8, 8)
    losses = {}
    for posterior in ("sample", "mean"):
        loss_fn = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer,
                                   train_text_encoder=False, max_sequence_length=16, caption_dropout=0.0,
                                   flow=FlowSettings(posterior=posterior))
        for logvar in (-200.0, 0.0):
            batch = {"latent_mean": x0, "latent_logvar": torch.full_like(x0, logvar), "caption": ["a red box"] * 2}
            with torch.no_grad():
                losses[posterior, logvar] = loss_fn(batch, torch.Generator().manual_seed(0)).item()
    assert losses["mean", -200.0] == losses["mean", 0.0]  # mean: the spread is not used
    assert losses["sample", 0.0] != losses["sample", -200.0]  # sample: a unit spread changes the latents


def test_autoencoder_options_mean_decoding_and_identity_attention():
    from vmoba.training.objectives import AutoencoderLoss
    from vmoba.training.trainer import _attention_as_identity

    vae = build_default_pipeline(seed=3).vae
    _attention_as_identity(vae.encoder.mid_block, vae.decoder.mid_block)
    attention = vae.decoder.mid_block.attentions[0]
    assert not any(p.requires_grad for p in attention.parameters())
    x = torch.randn(1, attention.dim, 1, 4, 4)
    torch.testing.assert_close(attention(x), x, rtol=0, atol=0)

    video = {"video": torch.rand(1, 3, 5, 32, 32) * 2 - 1}
    with torch.no_grad():
        for sample, same in ((False, True), (True, False)):
            loss = AutoencoderLoss(vae, reconstruction="mse", kl_weight=0.0, sample_posterior=sample)
            a, b = (loss(video, torch.Generator().manual_seed(s)).item() for s in (0, 1))
            assert (a == b) is same


def test_edge_weight_adds_the_error_of_neighbouring_pixel_differences():
    """Against a float64 loop: L1 of the horizontal and vertical differences, weighted, on top of pixel L1."""
    from vmoba.training.objectives import AutoencoderLoss

    vae = build_default_pipeline(seed=3).vae.double()
    video = {"video": (torch.rand(1, 3, 5, 16, 16, dtype=torch.float64) * 2 - 1)}
    with torch.no_grad():
        plain = AutoencoderLoss(vae, kl_weight=0.0, sample_posterior=False)(video, torch.Generator()).item()
        edged = AutoencoderLoss(vae, kl_weight=0.0, sample_posterior=False, edge_weight=0.5)(video,
                                                                                              torch.Generator()).item()
        recon = vae.decode(vae.encode(video["video"]).latent_dist.mean).sample.float().double()
    x = video["video"].float().double()
    total, count = {}, {}
    for name, (dy, dx) in {"x": (0, 1), "y": (1, 0)}.items():
        H, W = x.shape[-2] - dy, x.shape[-1] - dx
        err = 0.0
        for i in range(H):
            for j in range(W):
                a = recon[..., i + dy, j + dx] - recon[..., i, j]
                b = x[..., i + dy, j + dx] - x[..., i, j]
                err += (a - b).abs().sum().item()
        total[name], count[name] = err, x[..., :H, :W].numel()
    expected = plain + 0.5 * sum(total[n] / count[n] for n in total)
    assert edged == pytest.approx(expected, rel=1e-5)
    assert edged > plain


def test_cache_key_ignores_where_the_vae_was_loaded_from(tmp_path, data):
    from vmoba.training.data import cache_key

    vae = build_default_pipeline(seed=5).vae
    vae.save_pretrained(str(tmp_path / "vae"))
    from diffusers import AutoencoderKLWan

    (tmp_path / "x").mkdir()
    a = AutoencoderKLWan.from_pretrained(str(tmp_path / "vae"), local_files_only=True)
    b = AutoencoderKLWan.from_pretrained(str(tmp_path / "x" / ".." / "vae"), local_files_only=True)
    assert a.config._name_or_path != b.config._name_or_path
    settings = _config(tmp_path, data).data
    clips = read_clips(settings.root)
    assert cache_key(clips, a, settings, None) == cache_key(clips, b, settings, None)
    changed = AutoencoderKLWan.from_config({**a.config, "z_dim": 8})
    assert cache_key(clips, changed, settings, None)["vae_config"] != cache_key(clips, a, settings, None)["vae_config"]


def test_batch_order_shards_epochs_without_overlap_and_is_resumable():
    order = BatchOrder(10, batch_size=2, world_size=2, seed=7)
    assert order.batches_per_epoch == 2
    epoch = [i for step in range(2) for rank in range(2) for i in order.indices(step, rank)]
    assert len(set(epoch)) == 8
    again = BatchOrder(10, 2, 2, 7)
    assert [again.indices(s, r) for s in (5, 2, 3) for r in (0, 1)] == [order.indices(s, r) for s in (5, 2, 3)
                                                                       for r in (0, 1)]
    with pytest.raises(DataError, match="fewer than one global batch"):
        BatchOrder(3, batch_size=2, world_size=2, seed=0)


# -- data errors ------------------------------------------------------------------------------------------


def test_caption_index_errors_name_the_file_and_line(tmp_path, data):
    root = tmp_path / "d"
    (root / "videos").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4"):
        (root / "videos" / name).write_bytes((data / "videos/000000.mp4").read_bytes())
    index = root / "captions.jsonl"
    cases = [
        ('{"file": "videos/a.mp4", "caption": "a red circle moves right"}\n', "1 video\\(s\\) .* have no caption: videos/b.mp4"),
        ('{"file": "videos/a.mp4"}\n{"file": "videos/b.mp4", "caption": "x"}\n', "line 1: missing caption for videos/a.mp4"),
        ('{"file": "videos/a.mp4", "caption": "  "}\n', "line 1: missing caption"),
        ('{"file": "videos/a.mp4", "caption": "x"}\nnot json\n', "line 2: not valid JSON"),
        ('{"file": "videos/c.mp4", "caption": "x"}\n', "line 1: video videos/c.mp4 not found"),
        ('{"file": "videos/a.mp4", "caption": "x"}\n{"file": "videos/a.mp4", "caption": "y"}\n', "line 2: .* listed twice"),
    ]
    for text, message in cases:
        index.write_text(text)
        with pytest.raises(DataError, match=message):
            read_clips(root)
    index.unlink()
    with pytest.raises(DataError, match="no captions.jsonl or captions.csv"):
        read_clips(root)
    (root / "captions.csv").write_text("video,text\nvideos/a.mp4,x\n")
    with pytest.raises(DataError, match="captions.csv: the header must name the columns file and caption"):
        read_clips(root)
    (root / "captions.csv").write_text('file,caption\nvideos/a.mp4,"a red circle, moving"\nvideos/b.mp4,a box\n')
    assert [c.caption for c in read_clips(root)] == ["a red circle, moving", "a box"]


def test_corrupt_video_stops_the_run_with_its_name_and_keeps_earlier_checkpoints(tmp_path, data):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data, root)
    # a wall-clock budget of ~0 stops after one step, with a checkpoint to resume from
    assert run(_config(tmp_path, root, training={"max_minutes": 1e-6})) is None
    (step, checkpoint), = list_checkpoints(tmp_path / "run/checkpoints")
    assert step == 1
    before = _digest(checkpoint)
    for video in (root / "videos").iterdir():
        video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(DataError, match=r"videos/0000\d\d\.mp4: cannot decode the video"):
        run(_config(tmp_path, root, training={"resume_from": "latest"}))
    assert [p for _, p in list_checkpoints(tmp_path / "run/checkpoints")] == [checkpoint]
    assert _digest(checkpoint) == before
    assert not (tmp_path / "run/final").exists()


def test_runs_refuse_to_overwrite_checkpoints_or_change_what_resuming_reproduces(tmp_path, data):
    threads = torch.get_num_threads()
    final = run(_config(tmp_path, data, training={"max_steps": 4, "checkpoint_every": 1, "keep_checkpoints": 2,
                                                  "threads": threads + 1}))
    assert torch.get_num_threads() == threads  # training.threads is the command's: the library leaves the host's
    assert final == tmp_path / "run/final"
    assert [s for s, _ in list_checkpoints(tmp_path / "run/checkpoints")] == [2, 3]  # keep_checkpoints: 2
    with pytest.raises(ConfigError, match="holds a finished run"):
        run(_config(tmp_path, data, training={"resume_from": "latest"}))
    (tmp_path / "run/final").rename(tmp_path / "done")
    with pytest.raises(ConfigError, match="already holds checkpoints .*resume_from: latest"):
        run(_config(tmp_path, data))
    with pytest.raises(ConfigError, match="step-0000002 is older than step-0000003 .*would overwrite"):
        run(_config(tmp_path, data, training={"resume_from": str(tmp_path / "run/checkpoints/step-0000002")}))
    with pytest.raises(ConfigError, match="cannot resume exactly .*batch_size"):
        run(_config(tmp_path, data, training={"resume_from": "latest", "batch_size": 3, "max_steps": 6}))
    # a checkpoint interrupted while being written is never taken for a complete one
    (tmp_path / "run/checkpoints/step-0000009.partial").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path / "run/checkpoints")] == [2, 3]


def test_runs_never_overwrite_or_append_to_files_they_did_not_write(tmp_path, data):
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"_class_name": "WanTransformer3DModel"}')  # a model folder, say
    (foreign / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    before = _digest(foreign)
    for resume in (None, "latest"):
        with pytest.raises(ConfigError, match=r"holds config.json, log.jsonl that vmoba training did not write"):
            run(_config(tmp_path, data, training={"resume_from": resume}))
        assert _digest(foreign) == before


def test_a_sequence_parallel_group_must_hold_every_process(tmp_path, data):
    with pytest.raises(ConfigError, match=r"training.sequence_parallel 2 must be 1 or the number of processes \(1\)"):
        run(_config(tmp_path, data, training={"sequence_parallel": 2}))
    assert not (tmp_path / "run").exists()


def test_fine_tunes_of_the_default_architecture_keep_its_attention_config(tmp_path):
    from vmoba import VMoBAConfig
    from vmoba.pipelines.default import DEFAULT_VMOBA_CONFIG
    from vmoba.training.models import vmoba_config

    def folder(name: str, pipeline: str, record: dict | None = None) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
        if record is not None:
            (path / "training.json").write_text(json.dumps(record))
        return path

    def resolved(pretrained, **vmoba) -> VMoBAConfig:
        return vmoba_config(config_from_dict({"model": {"pretrained": str(pretrained)},
                                              "attention": {"vmoba": vmoba}, "data": {"root": "d"},
                                              "training": {"output_dir": "o", "max_steps": 1}}))

    # the default model's grids are a few blocks wide: Wan 480p blocks would leave nothing to select
    assert DEFAULT_VMOBA_CONFIG != VMoBAConfig()
    assert resolved("default") == DEFAULT_VMOBA_CONFIG
    assert resolved(folder("tuned", "VMoBAWanPipeline")) == DEFAULT_VMOBA_CONFIG
    assert resolved(folder("wan", "WanPipeline")) == VMoBAConfig()
    # an export's recorded config wins, and the YAML's fields go on top of it
    recorded = DEFAULT_VMOBA_CONFIG.replace(threshold=0.4, st_chunk=(1, 2, 2))
    export = folder("export", "VMoBAWanPipeline", {"config": {}, "vmoba_config": recorded.to_dict()})
    assert resolved(export) == recorded
    assert resolved(export, threshold=0.3) == recorded.replace(threshold=0.3)
    broken = folder("broken", "VMoBAWanPipeline", {"vmoba_config": {"thresh": 0.4}})
    with pytest.raises(ConfigError, match="model.pretrained: .*broken/training.json: the recorded vmoba_config"):
        resolved(broken)


def test_pretrained_folders_that_do_not_load_are_named(tmp_path, data):
    from vmoba.training.models import load_pipeline as load_training_pipeline

    def config(pretrained):
        return _config(tmp_path, data, model={"pretrained": str(pretrained), "from_scratch": False})

    with pytest.raises(ConfigError, match=r"test.yaml: model.pretrained: .*missing: no such folder"):
        load_training_pipeline(config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.pretrained: .*empty: not a pipeline folder \(no model_index.json"):
        load_training_pipeline(config(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{")
    with pytest.raises(ConfigError, match=r"model.pretrained: .*model_index.json: the pipeline index is not valid JSON"):
        load_training_pipeline(config(tmp_path / "broken"))


# -- cache, validation, export ----------------------------------------------------------------------------


def test_cached_latents_are_reused_validated_and_equal_to_encoding(tmp_path, data):
    cache = tmp_path / "cache"
    config = _config(tmp_path, data, model={"train": ["transformer"]},
                     data={"cache_dir": str(cache), "caption_dropout": 0.5},
                     validation={"every": 2, "prompts": ["a red circle moves right"], "num_inference_steps": 2})
    run(config)
    meta = (cache / "cache.json").stat().st_mtime_ns
    from safetensors.torch import load_file

    from vmoba.training.data import load_frames

    item = load_file(cache / "000003.safetensors")
    clips = read_clips(data)
    pipe = build_default_pipeline(seed=0)
    with torch.no_grad():
        posterior = pipe.vae.encode(load_frames(clips[3].path, 5, 32, 32)[None]).latent_dist
        ids, mask = tokenize(pipe.tokenizer, [clips[3].caption], DEFAULT_MAX_SEQUENCE_LENGTH)
        embeds = encode_tokens(pipe.text_encoder, ids, mask)[0, : int(mask.sum())]
    torch.testing.assert_close(item["latent_mean"], posterior.mean[0])
    torch.testing.assert_close(item["prompt_embeds"], embeds)

    video = read_video(tmp_path / "run/samples/step-0000002/00-a-red-circle-moves-right.mp4")
    assert video.shape == (5, 32, 32, 3)
    log = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(0 < e["vmoba_density"] <= 1 for e in log)

    again = _config(tmp_path, data, model={"train": ["transformer"]}, data={"cache_dir": str(cache)},
                    training={"output_dir": str(tmp_path / "run2")})
    run(again)
    assert (cache / "cache.json").stat().st_mtime_ns == meta  # reused, not rebuilt
    other_vae = _config(tmp_path, data, model={"train": ["transformer"], "from_scratch": True},
                        data={"cache_dir": str(cache)}, training={"output_dir": str(tmp_path / "run3"), "seed": 1})
    with pytest.raises(DataError, match="cache_dir .* was built from other inputs \\(.*vae"):
        run(other_vae)
    (tmp_path / "notacache").mkdir()
    (tmp_path / "notacache/mine.txt").write_text("x")
    with pytest.raises(DataError, match="is not empty and holds no latent cache"):
        run(_config(tmp_path, data, data={"cache_dir": str(tmp_path / "notacache")},
                    training={"output_dir": str(tmp_path / "run4")}))


def test_exported_pipeline_loads_with_its_text_length_and_ema_weights(tmp_path, data):
    final = run(_config(tmp_path, data, model={"train": ["transformer", "text_encoder"]},
                        training={"ema_decay": 0.5}))
    pipe = load_default_pipeline(final)
    assert pipe.vmoba_trained and pipe.config.max_sequence_length == DEFAULT_MAX_SEQUENCE_LENGTH
    report = json.loads((final / "training.json").read_text())
    assert report["steps"] == 3 and len(report["weights_sha256_per_process"]) == 1
    # the attention config the run used is recorded, and sampling reads it back
    assert report["vmoba_config"] == DEFAULT_VMOBA_CONFIG.to_dict()
    assert load_pipeline(final).vmoba_defaults.vmoba_config == DEFAULT_VMOBA_CONFIG
    # no file of the export names the folder a component was loaded from
    assert not [p for p in final.rglob("*.json") if "_name_or_path" in p.read_text()]
    # the exported weights are the EMA average, which after 3 steps differs from the last iterate
    from safetensors.torch import load_file

    state = load_file(tmp_path / "run/checkpoints/step-0000002/model.safetensors")
    ema = torch.load(tmp_path / "run/checkpoints/step-0000002/custom_checkpoint_1.pkl", weights_only=False)
    name = "transformer.proj_out.weight"
    assert not torch.equal(state[name], ema["shadow"][name])
    frames = pipe("a red circle moves right", height=32, width=32, num_frames=5, num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert frames.shape == (5, 32, 32, 3) and np.isfinite(frames).all()
    # a transformer from scratch has no use for the shipped motion adapter, which was trained for other weights
    assert not (final / MOTION_ADAPTER_FILE).exists()


def test_a_fine_tune_that_does_not_train_the_motion_adapter_keeps_it(tmp_path, data):
    final = run(_config(tmp_path, data, model={"pretrained": "default", "from_scratch": False,
                                               "train": ["transformer", "text_encoder"]},
                        training={"max_steps": 1, "learning_rate": 1e-5}))
    assert (final / MOTION_ADAPTER_FILE).read_bytes() == (WEIGHTS_DIR / MOTION_ADAPTER_FILE).read_bytes()
    base, tuned = load_default_pipeline(), load_default_pipeline(final)
    assert any(not torch.equal(a, b) for a, b in zip(base.transformer.state_dict().values(),
                                                     tuned.transformer.state_dict().values()))


def test_a_checkpoint_exports_the_model_a_run_ending_there_would_write(tmp_path, data, monkeypatch):
    from safetensors.torch import load_file

    from vmoba.cli import main as cli_main
    from vmoba.training.trainer import export_checkpoint

    train = {"model": {"train": ["transformer", "text_encoder"]}}
    longer = _config(tmp_path, data, **train, training={"max_steps": 4, "checkpoint_every": 2, "ema_decay": 0.5})
    run(longer)
    (tmp_path / "run").rename(tmp_path / "longer")
    longer = _config(tmp_path, data, **train, training={"output_dir": str(tmp_path / "longer"), "max_steps": 4,
                                                         "checkpoint_every": 2, "ema_decay": 0.5})
    ended = run(_config(tmp_path, data, **train, training={"max_steps": 2, "ema_decay": 0.5}))
    exported = export_checkpoint(longer, tmp_path / "exported", tmp_path / "longer/checkpoints/step-0000002")
    # the same steps (constant learning rate, batches a function of the step), so the same EMA weights, whether
    # the run ended at step 2 or passed it with a checkpoint
    for part in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(ended / part), load_file(exported / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    final = load_file(tmp_path / "longer/final/transformer/diffusion_pytorch_model.safetensors")
    mine = load_file(exported / "transformer/diffusion_pytorch_model.safetensors")
    assert not torch.equal(final["proj_out.weight"], mine["proj_out.weight"])  # step 4's are other weights
    report = json.loads((exported / "training.json").read_text())
    assert report["steps"] == 2 and report["checkpoint"].endswith("step-0000002")
    assert report["vmoba_config"] == DEFAULT_VMOBA_CONFIG.to_dict()
    assert load_default_pipeline(exported).vmoba_trained
    # an export decodes no video, even when the run preloads them all
    with monkeypatch.context() as patch:
        patch.setattr("vmoba.training.data.read_frames", lambda path: pytest.fail(f"{path} was decoded"))
        preloading = dataclasses.replace(longer, data=dataclasses.replace(longer.data, preload=True))
        again = export_checkpoint(preloading, tmp_path / "again", tmp_path / "longer/checkpoints/step-0000002")
    assert _digest(again / "transformer") == _digest(exported / "transformer")

    # the command: latest checkpoint by default; never over an existing folder; only checkpoints of this model
    (tmp_path / "train.yaml").write_text(json.dumps(longer.to_dict()))
    assert cli_main(["train", "--config", str(tmp_path / "train.yaml"), "--export", str(tmp_path / "latest")]) == 0
    assert json.loads((tmp_path / "latest/training.json").read_text())["steps"] == 2  # step 4 is final/, not a checkpoint
    before = _digest(tmp_path / "latest")
    assert cli_main(["train", "--config", str(tmp_path / "train.yaml"), "--export", str(tmp_path / "latest")]) == 2
    assert _digest(tmp_path / "latest") == before
    with pytest.raises(ConfigError, match="cannot export exactly .*: model changed"):
        export_checkpoint(_config(tmp_path, data, training={"output_dir": str(tmp_path / "longer")}),
                          tmp_path / "other")
    with pytest.raises(ConfigError, match="has no checkpoint to export"):
        export_checkpoint(_config(tmp_path, data, **train, training={"output_dir": str(tmp_path / "none")}),
                          tmp_path / "other")
    assert not (tmp_path / "other").exists()
    (tmp_path / "empty/step-0000001").mkdir(parents=True)
    with pytest.raises(ConfigError, match="step-0000001 holds no readable training state"):
        export_checkpoint(longer, tmp_path / "other", tmp_path / "empty/step-0000001")
    # --checkpoint only chooses what --export writes
    assert cli_main(["train", "--config", str(tmp_path / "train.yaml"), "--checkpoint", "step-0000002"]) == 2

def test_lora_fine_tuning_writes_weights_that_load_lora_weights_takes(tmp_path, data):
    pytest.importorskip("peft")
    base = tmp_path / "base"
    build_default_pipeline(seed=5).save_pretrained(base)
    final = run(_config(tmp_path, data, model={"pretrained": str(base), "from_scratch": False,
                                               "lora": {"rank": 4}}, training={"learning_rate": 1e-2}))
    from safetensors.torch import load_file

    weights = load_file(final / "pytorch_lora_weights.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    pipe = load_default_pipeline(base)
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(1))

    def output():
        with torch.no_grad():
            return pipe.transformer(x, torch.tensor([500.0]), context, return_dict=False)[0]

    plain = output()
    pipe.load_lora_weights(str(final))
    adapted = output()
    assert not torch.allclose(plain, adapted)
    pipe.unload_lora_weights()
    torch.testing.assert_close(output(), plain)


def test_autoencoder_task_saves_a_vae_whose_latents_its_statistics_normalise(tmp_path, data):
    config = _config(tmp_path, data, task="autoencoder",
                     data={"num_frames": 5, "clip_start": "random", "preload": True},
                     autoencoder={"statistics_clips": 6}, validation={"clips": 1})
    final = run(config)
    from diffusers import AutoencoderKLWan

    from vmoba.training.data import VideoCaptionDataset

    vae = AutoencoderKLWan.from_pretrained(final)
    dataset = VideoCaptionDataset(read_clips(data), 5, 32, 32)
    with torch.no_grad():
        z = torch.cat([vae.encode(dataset[i]["video"][None]).latent_dist.mean for i in range(6)])
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    normalised = (z - mean) / std
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3, 4), unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert read_video(tmp_path / "run/samples/final/reconstruction-00.mp4").shape == (5, 32, 64, 3)
    assert "_name_or_path" not in (final / "config.json").read_text()


def test_gradient_checkpointing_changes_memory_not_the_math(tmp_path, data):
    losses = {}
    for name, extra in (("plain", {}), ("checkpointed", {"gradient_checkpointing": True})):
        run(_config(tmp_path, data, model={"train": ["transformer", "text_encoder"], **extra},
                    training={"output_dir": str(tmp_path / name)}))
        losses[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert losses["plain"] == pytest.approx(losses["checkpointed"], rel=1e-4)
    run(_config(tmp_path, data, attention={"mode": "dense"}, training={"output_dir": str(tmp_path / "dense")}))
    log = [json.loads(line) for line in (tmp_path / "dense/log.jsonl").read_text().splitlines()]
    assert "vmoba_density" not in log[0]
    assert log[0]["loss"] != pytest.approx(losses["plain"][0], rel=1e-6)  # VMoBA changed the attention


# -- the motion adapter -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data9(tmp_path_factory):
    """Clips long enough for the motion-energy filters (7 frames at least)."""
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes9") / "d", count=4, frames=9, size=32, seed=5)


def test_drop_words_removes_whole_words_only():
    from vmoba.training.data import drop_words

    assert drop_words("a red circle moves left on a dark background", ["left", "right"]) == \
        "a red circle moves on a dark background"
    assert drop_words("Up, up and away", ["up"]) == "and away"
    assert drop_words("a blue upward arrow", ["up"]) == "a blue upward arrow"


def test_motion_adapter_trains_alone_and_exports_beside_the_pipeline(tmp_path, data9):
    from safetensors.torch import load_file

    from vmoba.motion import MotionEnergy
    from vmoba.pipelines import load_motion_adapter
    from vmoba.training.data import load_frames

    cache = tmp_path / "cache"
    config = _config(tmp_path, data9, model={"pretrained": "default", "from_scratch": False,
                                             "train": ["motion_adapter"]},
                     data={"num_frames": 9, "cache_dir": str(cache)},
                     motion_adapter={"hidden": 8}, training={"max_steps": 2, "learning_rate": 1e-2})
    final = run(config)
    # the transformer and text encoder are exactly the pretrained ones; only the adapter moved
    base = load_default_pipeline()
    pipe = load_default_pipeline(final)
    for name in ("transformer", "text_encoder"):
        for (k, a), (_, b) in zip(getattr(base, name).state_dict().items(), getattr(pipe, name).state_dict().items()):
            assert torch.equal(a, b), f"{name}.{k} changed"
    adapter = load_motion_adapter(final)
    assert adapter.pooling == "global" and adapter.hidden == 8
    assert adapter.proj.weight.abs().sum() > 0  # it started at zero
    # the cached reference energy is the clip's energy averaged over the frame, one value per latent frame
    clips = read_clips(data9)
    item = load_file(cache / "000001.safetensors")
    frames = (load_frames(clips[1].path, 9, 32, 32).permute(1, 0, 2, 3)[None].double() + 1) / 2
    energy = MotionEnergy().double()
    with torch.no_grad():
        expected = energy(frames, temporal_bins=3).mean(dim=(3, 4), keepdim=True)[0]
    assert item["motion_energy"].shape == (energy.num_channels, 3, 1, 1)
    torch.testing.assert_close(item["motion_energy"].double(), expected, rtol=1e-4, atol=1e-7)
    # the adapter conditions the exported pipeline from a reference clip
    adapter.attach(pipe.transformer)
    adapter.set_reference(frames[0].float())
    out = pipe("a red circle", height=32, width=32, num_frames=9, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert out.shape == (9, 32, 32, 3) and np.isfinite(out).all()


def _pipe_with_text_adapter(**loss_options):
    """A seeded default pipeline with a text-token motion adapter attached (its projection drawn at random, so
    that it acts) and the flow-matching loss over them (frozen text encoder, 16 tokens)."""
    from vmoba.motion import MotionEnergy, MotionEnergyAdapter

    pipe = build_default_pipeline(seed=2)
    adapter = MotionEnergyAdapter.for_transformer(pipe.transformer, energy=MotionEnergy(num_orientations=4,
                                                  num_scales=2), hidden=8, pooling="global", inject="text")
    torch.manual_seed(0)
    torch.nn.init.normal_(adapter.proj.weight, std=0.3)
    adapter.attach(pipe.transformer)
    loss_fn = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer, train_text_encoder=False,
                               max_sequence_length=16, flow=FlowSettings(shift=3.0), motion_adapter=adapter,
                               **loss_options)
    return pipe, adapter, loss_fn


def test_caption_distillation_targets_the_frozen_model_reading_the_whole_caption():
    from vmoba.motion.synthetic import grating_clip

    pipe, adapter, loss_fn = _pipe_with_text_adapter(caption_dropout=0.0, distill=True)
    pipe.transformer.requires_grad_(False)
    references = torch.stack([torch.as_tensor(grating_clip((32, 32), 9, a, 1.0, frequency=0.15)[0]).float()
                              for a in (0.0, np.pi)])
    energy = adapter.reference_energy(references, (3, 1, 1))
    x0 = torch.randn(2, 16, 3, 8, 8)
    mean, std = (t.view(1, -1, 1, 1, 1) for t in (torch.tensor(pipe.vae.config.latents_mean),
                                                     torch.tensor(pipe.vae.config.latents_std)))
    batch = {"latent_mean": x0 * std + mean, "latent_logvar": torch.zeros_like(x0), "motion_energy": energy,
             "caption": ["a red circle moves", "a blue square moves"],
             "teacher_caption": ["a red circle moves right", "a blue square moves left"]}
    calls = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(k), with_kwargs=True)
    loss = loss_fn(batch, torch.Generator().manual_seed(0))
    hook.remove()
    assert len(calls) == 2 and torch.equal(calls[0]["hidden_states"], calls[1]["hidden_states"])
    # the reference, computed apart: the teacher is the model without the adapter reading the whole caption
    # (embedded as the pipeline embeds it), the student the model with the adapter reading the cut caption
    encode = lambda p: pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=16)[0]  # noqa: E731
    kwargs = {k: v for k, v in calls[0].items() if k != "encoder_hidden_states"}
    with torch.no_grad():
        student = pipe.transformer(**kwargs, encoder_hidden_states=encode(batch["caption"]))[0].double()
        adapter.detach()
        teacher = pipe.transformer(**kwargs, encoder_hidden_states=encode(batch["teacher_caption"]))[0].double()
    torch.testing.assert_close(loss.double(), ((student - teacher) ** 2).mean(), rtol=1e-5, atol=1e-8)
    assert loss.item() > 0
    loss.backward()  # only the adapter learns
    assert adapter.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in pipe.transformer.parameters())
    with pytest.raises(ValueError, match="distill trains a motion adapter"):
        FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer, train_text_encoder=False,
                         max_sequence_length=16, caption_dropout=0.1, flow=FlowSettings(), motion_adapter=adapter,
                         distill=True)


def test_keep_words_trains_whole_captions_without_the_token_and_cut_ones_with_it():
    """Every clip reaches the text embedder in one of three allowed forms: its whole caption without the motion
    token, its cut caption with its reference's token in the first padding row, or the empty caption (caption
    dropout) without a token; nothing else. Built apart with the pipeline's own encode_prompt."""
    from vmoba.motion.synthetic import grating_clip

    pipe, adapter, loss_fn = _pipe_with_text_adapter(caption_dropout=0.25, keep_words=0.5)
    n = 8
    angles = [0.0, np.pi / 2, np.pi, 3 * np.pi / 2] * 2
    references = torch.stack([torch.as_tensor(grating_clip((32, 32), 9, a, 1.0, frequency=0.15)[0]).float()
                              for a in angles])
    energy = adapter.reference_energy(references, (3, 1, 1))
    mean, std = (t.view(1, -1, 1, 1, 1) for t in (torch.tensor(pipe.vae.config.latents_mean),
                                                     torch.tensor(pipe.vae.config.latents_std)))
    x0 = torch.randn(n, 16, 3, 8, 8)
    words = ["right", "up", "left", "down"] * 2
    colours = ["red", "blue", "green", "yellow", "red", "blue", "green", "yellow"]
    batch = {"latent_mean": x0 * std + mean, "latent_logvar": torch.zeros_like(x0), "motion_energy": energy,
             "caption": [f"a {c} circle moves" for c in colours],
             "teacher_caption": [f"a {c} circle moves {w}" for c, w in zip(colours, words)]}
    seen = []
    embedder = pipe.transformer.condition_embedder.text_embedder
    hook = embedder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))  # after the adapter's
    loss = loss_fn(batch, torch.Generator().manual_seed(3))
    hook.remove()
    encode = lambda p: pipe.encode_prompt(p, do_classifier_free_guidance=False, max_sequence_length=16)[0]  # noqa: E731
    with torch.no_grad():
        whole, cut, empty = encode(batch["teacher_caption"]), encode(batch["caption"]), encode([""] * n)
        token = adapter.condition((1, 1, 1)).flatten(1)
    (got,) = seen
    kinds = []
    for i in range(n):
        with_token = cut[i].clone()
        with_token[int((cut[i] != 0).any(-1).sum())] = token[i]
        allowed = {"whole": whole[i], "cut+token": with_token, "empty": empty[i]}
        match = [k for k, e in allowed.items() if torch.allclose(got[i], e, atol=1e-6)]
        assert len(match) == 1, f"clip {i} reached the model in none of the allowed forms"
        kinds.append(match[0])
    assert set(kinds) == {"whole", "cut+token", "empty"}, kinds  # this seed draws all three
    loss.backward()  # the transformer and the adapter both learn
    assert adapter.proj.weight.grad.abs().sum() > 0
    assert pipe.transformer.proj_out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="keep_words mixes whole captions"):
        FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer, train_text_encoder=False,
                         max_sequence_length=16, caption_dropout=0.0, flow=FlowSettings(), keep_words=0.5)


def test_caption_distillation_run_caches_the_teachers_embeddings(tmp_path, data9):
    from safetensors.torch import load_file

    from vmoba.training.data import drop_words

    cache = tmp_path / "cache"
    config = _config(tmp_path, data9, model={"pretrained": "default", "from_scratch": False,
                                             "train": ["motion_adapter"]},
                     data={"num_frames": 9, "cache_dir": str(cache)},
                     motion_adapter={"hidden": 8, "target": "caption"}, training={"max_steps": 2, "learning_rate": 1e-2})
    final = run(config)
    pipe = load_default_pipeline()
    clips = read_clips(data9)
    item = load_file(cache / "000002.safetensors")
    caption = clips[2].caption
    assert drop_words(caption, ["left", "right", "up", "down"]) != caption
    for key, text in (("teacher_embeds", caption), ("prompt_embeds", drop_words(caption, ["left", "right", "up",
                                                                                           "down"]))):
        ids, mask = tokenize(pipe.tokenizer, [text], 16)
        with torch.no_grad():
            expected = encode_tokens(pipe.text_encoder, ids, mask)[0, : int(mask.sum())]
        torch.testing.assert_close(item[key], expected)
    from vmoba.pipelines import load_motion_adapter

    assert load_motion_adapter(final).proj.weight.abs().sum() > 0


def test_joint_run_starts_from_the_pretrained_adapter_and_trains_both(tmp_path, data9):
    from vmoba.pipelines import load_motion_adapter

    shipped = load_motion_adapter()
    settings = {"pooling": "global", "inject": "text", "normalize": True, "hidden": shipped.hidden,
                "start": "pretrained", "keep_words": 0.5}
    config = _config(tmp_path, data9, model={"pretrained": "default", "from_scratch": False,
                                             "train": ["transformer", "motion_adapter"]},
                     data={"num_frames": 9, "cache_dir": str(tmp_path / "cache"), "caption_dropout": 0.1},
                     motion_adapter=settings, training={"max_steps": 2, "learning_rate": 1e-5})
    final = run(config)
    trained = load_motion_adapter(final)
    moved = max((a - b).abs().max().item() for a, b in zip(trained.state_dict().values(),
                                                              shipped.state_dict().values()))
    assert 0 < moved < 1e-3  # two small steps from the shipped adapter, not from a fresh one (its projection is 0)
    base, pipe = load_default_pipeline(), load_default_pipeline(final)
    assert any(not torch.equal(a, b) for a, b in zip(base.transformer.state_dict().values(),
                                                     pipe.transformer.state_dict().values()))
    with pytest.raises(ConfigError, match=r"motion_adapter.hidden is 8 but the pretrained adapter "
                                          r"\(motion_adapter.start: pretrained\) has 64"):
        run(_config(tmp_path, data9, model={"pretrained": "default", "train": ["transformer", "motion_adapter"]},
                    data={"num_frames": 9}, motion_adapter={**settings, "hidden": 8},
                    training={"output_dir": str(tmp_path / "run2")}))
    # the same adapter with the flow model's filters: its energy is not the config's default bank
    flow_folder = tmp_path / "flow_energy"
    base.save_pretrained(flow_folder)
    swapped = MotionEnergyAdapter(shipped.inner_dim, energy=load_flow_model().energy, hidden=shipped.hidden,
                                  pooling=shipped.pooling, inject=shipped.inject, normalize=shipped.normalize)
    swapped.save_pretrained(flow_folder / "motion_adapter.safetensors")
    with pytest.raises(ConfigError, match=r"motion_adapter.energy is 'default' but the pretrained adapter "
                                          r"\(motion_adapter.start: pretrained\) has 'flow'"):
        run(_config(tmp_path, data9, model={"pretrained": str(flow_folder),
                                            "train": ["transformer", "motion_adapter"]},
                    data={"num_frames": 9}, motion_adapter=settings, training={"output_dir": str(tmp_path / "run4")}))
    base.save_pretrained(tmp_path / "plain")  # a pipeline folder without a motion adapter
    with pytest.raises(ConfigError, match=r"motion_adapter.start: pretrained: .*plain has no motion adapter"):
        run(_config(tmp_path, data9, model={"pretrained": str(tmp_path / "plain"),
                                            "train": ["transformer", "motion_adapter"]},
                    data={"num_frames": 9}, motion_adapter=settings, training={"output_dir": str(tmp_path / "run3")}))


def test_motion_adapter_settings_are_checked(tmp_path, data9):
    def config(**sections):
        return _config(tmp_path, data9, **{"model": {"train": ["motion_adapter"]}, **sections})

    with pytest.raises(ConfigError, match="validation .*motion reference"):
        config(validation={"every": 1, "prompts": ["a red circle"]})
    with pytest.raises(ConfigError, match="motion_adapter.pooling"):
        config(motion_adapter={"pooling": "mean"})
    with pytest.raises(ConfigError, match=r"motion_adapter.drop_words\[1\] must be one word"):
        config(motion_adapter={"drop_words": ["left", "to the right"]})
    with pytest.raises(ConfigError, match="motion_adapter.target must be one of"):
        config(motion_adapter={"target": "teacher"})
    with pytest.raises(ConfigError, match=r"motion_adapter.target caption distils the frozen model: model.train must "
                                          r"be \[motion_adapter\]"):
        _config(tmp_path, data9, model={"train": ["transformer", "motion_adapter"]},
                motion_adapter={"target": "caption"})
    with pytest.raises(ConfigError, match="data.caption_dropout must be 0 with motion_adapter.target: caption"):
        config(motion_adapter={"target": "caption"}, data={"caption_dropout": 0.1})
    with pytest.raises(ConfigError, match="motion_adapter.drop_words is empty"):
        config(motion_adapter={"target": "caption", "drop_words": []})
    with pytest.raises(ConfigError, match="flow.foreground_weight weighs the error against the data"):
        config(motion_adapter={"target": "caption"}, flow={"foreground_weight": 4.0})
    with pytest.raises(ConfigError, match=r"motion_adapter.keep_words must be in \[0, 1\), got 1.0"):
        config(motion_adapter={"keep_words": 1.0})
    with pytest.raises(ConfigError, match=r"motion_adapter.keep_words trains the transformer on whole captions: "
                                          r"model.train must list transformer too"):
        config(motion_adapter={"keep_words": 0.5})
    with pytest.raises(ConfigError, match="motion_adapter.start must be one of"):
        config(motion_adapter={"start": "shipped"})
    with pytest.raises(ConfigError, match="autoencoder task trains the VAE alone"):
        _config(tmp_path, data9, task="autoencoder", model={"train": ["motion_adapter"]})
    with pytest.raises(FileNotFoundError, match="has no motion adapter"):
        from vmoba.pipelines import load_motion_adapter

        load_motion_adapter(tmp_path)
