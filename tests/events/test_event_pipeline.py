import json
import os

import numpy as np
import pytest
import torch

from vmoba.events import EventStream, simulate_events
from vmoba.events.conditioner import ConditionerState, EventResidualConditioner
from vmoba.events.data import HELD_OUT_IMAGES, TRAIN_IMAGES, SequenceConfig, load_photo, make_batch, make_sequence
from vmoba.events.evaluate import evaluate, ssim
from vmoba.pipelines.event_training import ResidualTrainingLoss
from vmoba.pipelines import EventToVideoPipeline
from vmoba.pipelines.event_to_video import DEFAULT_WEIGHTS, build_denoiser, build_scheduler

RESULTS = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results", "events_eval.json")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pipeline(seed=0, residual_scale=4.0):
    torch.manual_seed(seed)
    conditioner = EventResidualConditioner(num_bins=3, channels=8, lowfreq_channels=8)
    unet = build_denoiser(conditioner.out_channels, sample_size=16, block_out_channels=(8, 16))
    return EventToVideoPipeline(unet, conditioner, build_scheduler(), residual_scale=residual_scale)


def test_conditioner_shapes_and_errors():
    c = EventResidualConditioner(num_bins=3, channels=8, lowfreq_channels=8)
    vox, prev = torch.randn(2, 3, 12, 16), torch.rand(2, 1, 12, 16)
    cond, lowfreq, state = c(vox, prev, c.initial_state(prev))
    assert cond.shape == (2, c.out_channels, 12, 16) and lowfreq.shape == (2, 1, 12, 16)
    assert torch.equal(cond[:, -2:-1], prev)  # the previous frame is passed through unchanged
    assert 0 <= lowfreq.min() and lowfreq.max() <= 1 and state.encoder_hidden is not None
    cond[:, -1:].sum().backward()  # the estimate is detached: denoiser gradients never train the baseline
    assert all(p.grad is None for p in c.lowfreq_estimator.parameters())
    lowfreq.sum().backward()
    assert all(p.grad is not None for p in c.lowfreq_estimator.parameters())
    with pytest.raises(ValueError, match="divisible by 4"):
        c(torch.randn(1, 3, 10, 16), torch.rand(1, 1, 10, 16), ConditionerState(torch.rand(1, 1, 10, 16)))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        c(torch.randn(1, 5, 12, 16), prev[:1], c.initial_state(prev[:1]))
    with pytest.raises(ValueError, match="multiple of 8"):
        EventResidualConditioner(channels=12)


def test_frames_accumulate_residuals():
    """With a denoiser that always predicts x0 = 0.5, deterministic DDIM ends exactly on x0, so frame k is
    first_frame + k * 0.5 / residual_scale."""
    pipe = tiny_pipeline(residual_scale=5.0)

    class Constant(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.full_like(x[:, :1], 0.5)})()

    pipe.unet.forward = Constant().forward
    first = torch.full((16, 16), 0.2)
    out = pipe(voxels=torch.zeros(1, 4, 3, 16, 16), first_frame=first, num_inference_steps=3, output_type="pt")
    expected = torch.stack([torch.full((16, 16), 0.2 + 0.1 * k) for k in range(1, 5)])[None]
    torch.testing.assert_close(out.frames, expected)


def test_pipeline_from_events_and_round_trip(tmp_path):
    pipe = tiny_pipeline()
    frames = torch.rand(6, 13, 18, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    events = simulate_events(frames, torch.linspace(0, 0.1, 6))
    kwargs = dict(frame_timestamps=np.linspace(0, 0.1, 6), first_frame=frames[0], num_inference_steps=3)
    out = pipe(events, generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.frames.shape == (5, 13, 18) and out.lowfreq.shape == (5, 13, 18)  # padded inside, cropped back
    assert isinstance(out.frames, np.ndarray) and out.frames.min() >= 0 and out.frames.max() <= 1
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["conditioner"] == ["vmoba.events.conditioner", "EventResidualConditioner"]
    loaded = EventToVideoPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.config.residual_scale == 4.0 and loaded.conditioner.config.num_bins == 3
    for name in ("unet", "conditioner"):
        saved, back = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    again = loaded(events, generator=torch.Generator().manual_seed(0), **kwargs)
    # same weights, same noise; the loaded modules may pick other conv kernels, hence float32 rounding only
    np.testing.assert_allclose(again.frames, out.frames, atol=1e-5)
    np.testing.assert_allclose(again.lowfreq, out.lowfreq, atol=1e-5)
    by_count = pipe(events, num_frames=5, first_frame=frames[0], num_inference_steps=2)
    assert by_count.frames.shape == (5, 13, 18)


def test_pipeline_input_errors():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=r"first_frame must hold 1 frame\(s\) of 16x16"):
        pipe(voxels=torch.zeros(1, 2, 3, 16, 16), first_frame=torch.zeros(8, 8))
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, W\)"):
        pipe(voxels=torch.zeros(1, 2, 5, 16, 16))
    with pytest.raises(ValueError, match="not both or neither"):
        pipe()
    with pytest.raises(ValueError, match="frame_timestamps"):
        pipe(EventStream([0], [0], [0.0], [1], (4, 4)))
    with pytest.raises(ValueError, match="outside the boundaries"):
        pipe(EventStream([0, 1], [0, 0], [0.0, 2.0], [1, 1], (4, 4)), frame_timestamps=[0.0, 1.0])
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1, got -1"):
        pipe(voxels=torch.zeros(1, 2, 3, 16, 16), num_inference_steps=-1)
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(voxels=torch.zeros(1, 2, 3, 16, 16), output_type="pil")
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        pipe(EventStream([0, 1], [0, 0], [0.0, 2.0], [1, 1], (4, 4)), num_frames=0)
    bad_unet = build_denoiser(4, sample_size=16, block_out_channels=(8, 16))
    with pytest.raises(ValueError, match="conditioning channels"):
        EventToVideoPipeline(bad_unet, EventResidualConditioner(num_bins=3, channels=8), build_scheduler())


def test_a_transposed_first_frame_is_refused_not_scrambled():
    pipe = tiny_pipeline()
    voxels = torch.zeros(1, 2, 3, 8, 16)
    frame = torch.rand(8, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"first_frame must hold 1 frame\(s\) of 8x16 .*got \(16, 8\)"):
        pipe(voxels=voxels, first_frame=frame.T, num_inference_steps=1)
    # the layouts that are accepted all give the same video
    runs = [pipe(voxels=voxels, first_frame=f, num_inference_steps=1, output_type="pt",
                 generator=torch.Generator().manual_seed(1)).frames
            for f in (frame, frame[None], frame[None, None], frame.numpy())]
    assert all(torch.equal(r, runs[0]) for r in runs)
    with pytest.raises(TypeError, match="first_frame must hold float intensities.*frame / 255"):
        pipe(voxels=voxels, first_frame=(frame * 255).to(torch.uint8))


@pytest.mark.parametrize("where", ["first_frame", "voxels"])
def test_non_finite_inputs_are_refused_not_spread_into_the_video(where):
    pipe = tiny_pipeline()
    voxels, frame = torch.zeros(1, 3, 3, 16, 16), torch.full((16, 16), 0.5)
    if where == "voxels":
        voxels[0, 1, 2, 5, 7] = float("nan")
    else:
        frame[3, 4] = float("inf")
    with pytest.raises(ValueError, match=f"{where} must be finite, got (nan|inf) at index"):
        pipe(voxels=voxels, first_frame=frame, num_inference_steps=1)


def test_a_few_training_steps_reduce_the_loss():
    pipe = tiny_pipeline()
    cfg = SequenceConfig(size=16, num_frames=3, num_bins=3, substeps=2)
    frames, voxels = make_batch(range(4), cfg)
    loss = ResidualTrainingLoss(pipe, denoised_frames=3, prev_noise=0.0)
    opt = torch.optim.Adam(loss.parameters(), lr=3e-3)

    def total(seed):
        lf, diff = loss(frames, voxels, torch.Generator().manual_seed(seed))
        return lf + diff

    with torch.no_grad():
        before = total(123).item()
    for step in range(15):
        opt.zero_grad()
        value = total(step)
        value.backward()
        opt.step()
    grads = [p.grad for p in loss.parameters()]
    assert all(g is not None for g in grads)  # every parameter is trained by one of the two losses
    with torch.no_grad():
        assert total(123).item() < 0.7 * before


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 32, 40, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(3, 32, 40, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        ref = metrics.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_bundled_photographs_load_offline_and_sequences_are_seeded():
    for name in TRAIN_IMAGES + HELD_OUT_IMAGES:
        image = load_photo(name)
        assert image.dim() == 2 and min(image.shape) >= 150 and 0 <= image.min() and image.max() <= 1
    assert not set(TRAIN_IMAGES) & set(HELD_OUT_IMAGES)
    cfg = SequenceConfig(size=24, num_frames=3)
    f1, v1 = make_sequence(5, cfg)
    f2, v2 = make_sequence(5, cfg)
    assert torch.equal(f1, f2) and torch.equal(v1, v2)
    assert f1.shape == (4, 24, 24) and v1.shape == (3, cfg.num_bins, 24, 24)
    assert not torch.equal(f1, make_sequence(6, cfg)[0])
    # where the log intensity rose a lot, the net polarity of the events is positive, and vice versa
    dlog = torch.log(f1[-1] + 1e-3) - torch.log(f1[0] + 1e-3)
    net = v1.sum(dim=(0, 1))
    strong = dlog.abs() > 0.6
    assert strong.sum() > 0
    assert (torch.sign(net[strong]) == torch.sign(dlog[strong])).float().mean() > 0.9


def test_shipped_checkpoint_reproduces_committed_metrics():
    with open(RESULTS) as f:
        committed = json.load(f)
    pipe = EventToVideoPipeline.from_default_weights()
    pipe.set_progress_bar_config(disable=True)
    cfg = committed["config"]
    config = SequenceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
                               if k in SequenceConfig.__dataclass_fields__})
    subset = evaluate(pipe, 2, config=config, num_inference_steps=cfg["num_inference_steps"], use_lpips=False)
    for got, want in zip(subset["per_sequence"], committed["per_sequence"][:2]):
        assert got["sequence"] == want["sequence"]
        for method in ("diffusion", "lowfreq", "hold_first_frame"):
            for metric in ("mse", "ssim"):
                assert got[method][metric] == pytest.approx(want[method][metric], rel=1e-3, abs=1e-5), (method, metric)
    assert os.path.isfile(os.path.join(DEFAULT_WEIGHTS, "unet", "diffusion_pytorch_model.safetensors"))


def test_training_batches_do_not_depend_on_worker_count():
    from vmoba.events.data import SyntheticBatches

    cfg = SequenceConfig(size=16, num_frames=2, num_bins=3, substeps=2)
    plain = list(SyntheticBatches(cfg, batch_size=2, base_seed=7, steps=4))
    loader = torch.utils.data.DataLoader(SyntheticBatches(cfg, batch_size=2, base_seed=7, steps=4), batch_size=None,
                                         num_workers=2)
    pooled = list(loader)
    assert len(pooled) == len(plain) == 4
    for (f1, v1), (f2, v2) in zip(plain, pooled):
        assert torch.equal(f1, f2) and torch.equal(v1, v2)
    assert not torch.equal(plain[0][0], plain[1][0])
