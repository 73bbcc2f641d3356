import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vmoba.motion import MotionEnergy, load_flow_model
from vmoba.motion.energy import BOUNDS
from vmoba.motion.synthetic import grating_clip

SIZE = (48, 48)


def angle_diff(a, b):
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def level0_mean(energy, me):
    """Mean energy over space of the level-0 channels, ``(2K,)``."""
    return energy[: 2 * me.num_units].mean(dim=(-2, -1))


@pytest.fixture(scope="module")
def me():
    return MotionEnergy()


@pytest.mark.parametrize("k", range(8))
def test_each_direction_beats_its_opponent(me, k):
    """A grating drifting along d excites the channel tuned to d far more than the one tuned to d + pi."""
    direction = k * math.pi / 4
    frames, _ = grating_clip(SIZE, 9, direction, 0.6, frequency=0.25, contrast=0.8)
    e = level0_mean(me(frames, normalize=False), me)
    dirs = me.channel_directions()[: 2 * me.num_units]
    matched = [c for c in range(len(dirs)) if angle_diff(float(dirs[c]), direction) < 1e-4]
    assert matched, "the default bank has a channel for each of the 8 test directions"
    for c in matched:
        opponent = c + 1 if c % 2 == 0 else c - 1
        assert angle_diff(float(dirs[opponent]), direction + math.pi) < 1e-4
        assert e[c] > 2 * e[opponent]
    # the unit tuned to this speed (0.15 cycles/frame at 0.25 cycles/pixel) is strongly selective
    assert e[matched[0]] > 15 * e[matched[0] ^ 1]
    assert angle_diff(float(dirs[int(e.argmax())]), direction) < 1e-4


def test_directions_of_the_trained_filters():
    """The shipped (trained) filters keep their direction selectivity for all 8 directions."""
    me = load_flow_model().energy
    dirs = me.channel_directions()
    for k in range(8):
        direction = k * math.pi / 4
        frames, _ = grating_clip(SIZE, 9, direction, 0.5, frequency=0.2, contrast=0.8)
        with torch.no_grad():
            e = me(frames).mean(dim=(-2, -1))
        toward = torch.tensor([angle_diff(float(d), direction) < math.pi / 2 for d in dirs])
        away = torch.tensor([angle_diff(float(d), direction) > math.pi / 2 for d in dirs])
        assert e[toward].sum() > 2 * e[away].sum(), f"direction {k * 45} degrees"
        # population vector of the opponent energies points the right way
        vec = ((e[0::2] - e[1::2])[:, None] * torch.stack([torch.cos(dirs[0::2]), torch.sin(dirs[0::2])], 1)).sum(0)
        assert angle_diff(math.atan2(float(vec[1]), float(vec[0])), direction) < math.radians(22.5)


def test_temporal_frequency_tuning(me):
    """Speed preference follows omega / (2 pi f): slow units win for slow gratings, fast units for fast ones."""
    n = me.num_orientations
    speeds = me.channel_speeds()[: 2 * me.num_units]
    assert torch.allclose(speeds[0], torch.tensor(0.6)) and torch.allclose(speeds[2 * n], torch.tensor(1.2))
    slow, fast = [], []
    for speed in (0.6, 1.2):
        frames, _ = grating_clip(SIZE, 9, 0.0, speed, frequency=0.25, contrast=0.8)
        e = level0_mean(me(frames, normalize=False), me)
        slow.append(float(e[0].detach()))  # unit 0: orientation 0, 0.15 cycles/frame
        fast.append(float(e[2 * n].detach()))  # unit n: orientation 0, 0.3 cycles/frame
    assert slow[0] > 2 * slow[1] and fast[1] > 2 * fast[0]
    assert slow[0] > 2 * fast[0] and fast[1] > 2 * slow[1]


def naive_level_energy(me, frames):
    """Direct space-time correlation with the full (non-separable) complex filter, built from the closed forms."""
    theta = me.bounded("orientation").double()
    freq = me.bounded("spatial_frequency").double()
    sigma = me.bounded("sigma").double()
    omega = 2 * math.pi * me.bounded("temporal_frequency").double()
    tau = me.bounded("tau").double()
    L, Lt = me.kernel_size, me.temporal_length
    u = torch.arange(L, dtype=torch.float64) - (L - 1) / 2
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    env = torch.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2))
    env = env / env.sum(dim=(1, 2), keepdim=True)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    phase = 2 * math.pi * freq[:, None, None] * (xx * c + yy * s)
    gabor = env * torch.exp(1j * phase)
    gabor = gabor - gabor.real.sum(dim=(1, 2), keepdim=True) * env  # zero mean, as the real part must be
    lag = torch.arange(Lt, dtype=torch.float64)
    tenv = torch.exp(-lag[None] / tau[:, None])
    tenv = tenv / tenv.sum(1, keepdim=True)
    h = tenv * torch.exp(1j * omega[:, None] * lag[None])
    h = h - h.sum(1, keepdim=True) * tenv
    x = F.pad(frames.double()[None], (L // 2,) * 4, mode="replicate")[0]  # (T, H+, W+)
    T, H, W = frames.shape
    patches = x.unfold(1, L, 1).unfold(2, L, 1)  # (T, H, W, L, L)
    spatial = torch.einsum("thwij,kij->kthw", patches.to(torch.complex128), gabor)
    out = []
    for t in range(T - Lt + 1):
        window = spatial[:, t : t + Lt].flip(1)  # lag 0 = the latest frame
        toward = (window * h[:, :, None, None]).sum(1)
        against = (window * h.conj()[:, :, None, None]).sum(1)
        out.append(torch.stack([toward.abs() ** 2, against.abs() ** 2], dim=1).reshape(-1, H, W))
    return torch.stack(out, dim=1) + float(me.bounded("energy_constant").detach())


def test_separable_matches_direct_space_time_filter():
    torch.manual_seed(1)
    me = MotionEnergy(num_orientations=3, temporal_frequencies=(0.12, 0.3))
    with torch.no_grad():  # move off the symmetric initialisation so every term matters
        for p in me.parameters():
            p.add_(0.5 * torch.randn_like(p))
    frames = torch.rand(9, 20, 24)
    with torch.no_grad():
        fast = me.oriented_energy(frames[None])[0].double()
        ref = naive_level_energy(me, frames)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-7 * float(ref.abs().max()))


def test_static_scene_gives_no_energy(me):
    frames = torch.rand(1, 24, 24).expand(9, 24, 24)
    e = me(frames, normalize=False)
    assert torch.allclose(e, me.bounded("energy_constant").detach().expand_as(e), rtol=1e-3, atol=1e-9)


def test_temporal_bins_and_chunks_agree_with_pooling_by_hand():
    me = MotionEnergy(num_scales=2, memory_budget_mb=1)
    frames = torch.rand(2, 14, 32, 32)
    with torch.no_grad():
        whole = MotionEnergy(num_scales=2, memory_budget_mb=4096)(frames, temporal_bins=3, normalize=False)
        chunked = me(frames, temporal_bins=3, normalize=False)
        raw = me.oriented_energy(frames)  # level 0, (B, 2K, 8, H, W)
    assert whole.shape == (2, me.num_channels, 3, 8, 8)
    assert torch.allclose(whole, chunked, rtol=1e-5, atol=1e-9)
    bins = [raw[:, :, 0:3], raw[:, :, 3:6], raw[:, :, 6:8]]  # 8 outputs into 3 bins: floor(t * 3 / 8)
    by_hand = torch.stack([F.avg_pool2d(b.mean(2), 4) for b in bins], dim=2)
    assert torch.allclose(whole[:, : 2 * me.num_units], by_hand, rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        mean = me(frames, normalize=False)
    assert torch.allclose(mean[:, : 2 * me.num_units], F.avg_pool2d(raw.mean(2), 4), rtol=1e-5, atol=1e-9)


@torch.no_grad()
def test_normalisation_gives_contrast_invariance(me):
    clips = [grating_clip(SIZE, 9, 0.7, 0.8, frequency=0.15, contrast=c)[0] for c in (0.1, 0.9)]
    outs = [me(frames).mean(dim=(-2, -1)) for frames in clips]
    peak = [float(me(frames, normalize=False).mean(dim=(-2, -1)).max()) for frames in clips]
    assert peak[1] / peak[0] > 50  # energy grows with contrast squared ...
    # ... the normalised pattern hardly does (the semi-saturation constant still shows at 10% contrast)
    assert float((outs[0] - outs[1]).abs().max()) < 0.25 * float(outs[1].max())


def test_layouts_and_batches_agree(me):
    torch.manual_seed(2)
    rgb = torch.rand(2, 8, 3, 32, 32)
    grey = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 1, 3, 1, 1)).sum(2)
    batched = me(rgb)
    assert batched.shape == (2, me.num_channels, 8, 8)
    assert torch.allclose(me(grey), batched, atol=1e-6)
    assert torch.allclose(me(rgb[1]), batched[1], atol=1e-6)
    assert torch.allclose(me(grey[1]), batched[1], atol=1e-6)
    assert torch.allclose(me(grey[1][:, None]), batched[1], atol=1e-6)  # (T, 1, H, W)
    assert torch.allclose(me(grey[1].numpy()), batched[1], atol=1e-6)
    assert torch.allclose(me(grey.double()), batched, atol=1e-5)
    odd = me(torch.rand(7, 3, 37, 50))  # odd sizes are padded inside and cropped back
    assert odd.shape == (me.num_channels, 10, 13)


@pytest.mark.parametrize("frames", [7, 13])
def test_any_clip_length_from_the_filter_length(me, frames):
    out = me(torch.rand(frames, 32, 32), temporal_bins=2)
    assert out.shape == (me.num_channels, 2, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "frames, error, match",
    [
        (torch.rand(6, 32, 32), ValueError, r"6 frames but at least 7"),
        (torch.rand(3, 3, 32, 32), ValueError, r"3 frames but at least 7"),
        ((torch.rand(9, 32, 32) * 255).to(torch.uint8), TypeError, r"floating-point.*uint8.*/ 255"),
        (torch.zeros(9, 32, 32, dtype=torch.int64), TypeError, r"dtype torch.int64"),
        (torch.zeros(9, 32, 32, dtype=torch.bool), TypeError, r"dtype torch.bool"),
        (torch.zeros(9, 32, 32, dtype=torch.complex64), TypeError, r"complex64"),
        (torch.rand(9, 32, 32) * 255, ValueError, r"\[0, 1\].*x / 255"),
        (torch.rand(9, 32, 32) * 2 - 1, ValueError, r"\[0, 1\]"),
        (torch.full((9, 32, 32), float("nan")), ValueError, r"non-finite"),
        (torch.rand(9, 32, 32).index_fill(0, torch.tensor([4]), float("inf")), ValueError, r"non-finite"),
        (torch.rand(32, 32), ValueError, r"\(T, H, W\).*got shape \(32, 32\)"),
        (torch.rand(1, 1, 9, 1, 32, 32), ValueError, r"got shape"),
        (torch.rand(1, 9, 2, 32, 32), ValueError, r"C = 1 or 3"),
        (torch.rand(9, 12, 32), ValueError, r"at least 16x16"),
        ([[0.5]], TypeError, r"torch.Tensor or numpy array"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(me, frames, error, match):
    with pytest.raises(error, match=match):
        me(frames)


def test_bad_arguments(me):
    with pytest.raises(ValueError, match="temporal_bins"):
        me(torch.rand(9, 32, 32), temporal_bins=0)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MotionEnergy(kernel_size=10)
    with pytest.raises(ValueError, match="spatial_frequency must lie in"):
        MotionEnergy(spatial_frequency=0.6)
    for kwargs, error, words in (
        ({"num_orientations": 2.0}, TypeError, "num_orientations must be an integer"),
        ({"num_scales": 0}, ValueError, "num_scales must be >= 1, got 0"),
        ({"tau": float("nan")}, ValueError, "tau must be a finite number"),
        ({"spatial_frequency": -0.1}, ValueError, "spatial_frequency must be > 0"),
        ({"temporal_frequencies": 0.2}, TypeError, "temporal_frequencies must be a sequence"),
        ({"temporal_frequencies": (0.2, "fast")}, TypeError, r"temporal_frequencies\[1\] must be a number"),
    ):
        with pytest.raises(error, match=words):
            MotionEnergy(**kwargs)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        me(torch.rand(9, 32, 32), normalize="no")


def test_numpy_scalars_build_the_same_bank(me):
    frames = torch.rand(9, 32, 32, generator=torch.Generator().manual_seed(0))
    a = MotionEnergy(num_orientations=np.int64(4), num_scales=np.int32(2), tau=np.float32(3.0),
                     temporal_frequencies=np.array([0.15, 0.3]))
    b = MotionEnergy(num_orientations=4, num_scales=2, tau=3.0)
    assert torch.equal(a(frames, temporal_bins=np.int64(2)), b(frames, temporal_bins=2))


def test_parameters_stay_bounded_and_trainable():
    me = MotionEnergy(num_orientations=2, num_scales=2)
    with torch.no_grad():
        for i, p in enumerate(me.parameters()):
            p.fill_(1e4 if i % 2 else -1e4)
    for name, (lo, hi, _) in BOUNDS.items():
        value = me.bounded(name)
        tol = 1e-6 * max(abs(lo), abs(hi))
        assert torch.all(value >= lo - tol) and torch.all(value <= hi + tol), name
    me = MotionEnergy(num_orientations=2, num_scales=2)
    frames, _ = grating_clip((32, 32), 9, 0.3, 1.0, frequency=0.2)
    me(frames).pow(2).sum().backward()
    for name, p in me.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().max()) > 0 for p in me.parameters())
    assert np.isfinite(float(me(frames).detach().sum()))
