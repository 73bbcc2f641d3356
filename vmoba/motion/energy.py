"""`MotionEnergy`: trainable spatiotemporal motion-energy sensing after Adelson and Bergen (1985).

Each unit pairs a spatial Gabor quadrature pair (orientation, frequency, envelope width) with a temporal
quadrature pair ``exp(-t / tau) * (cos, sin)(omega * t)``. Their complex product is a space-time filter
tilted in one direction of motion; its conjugate is tilted the other way. The energy of each (the sum of
squares of its real and imaginary part) is therefore direction selective and phase invariant, and every unit
yields two opponent channels at the cost of one. The same bank runs on every level of a Gaussian pyramid so
that one set of filters covers a wide range of speeds (a level ``s`` channel prefers ``2**s`` times the speed
of its level-0 twin).

Separability keeps this cheap on a CPU: an oriented Gabor with an isotropic envelope is the product of two
1-D complex Gabors (``exp(i(kx x + ky y)) = exp(i kx x) exp(i ky y)``), so the spatial stage is a 1-D
convolution along x followed by a grouped 1-D convolution along y, and the temporal stage is a grouped
convolution along time only.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from .clip import as_clip

# name -> (low, high, log-scale). Every learnable quantity lives inside these bounds through a sigmoid, so
# training can never produce a filter that aliases, collapses to a point or exceeds its kernel support.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "orientation": (-math.pi, math.pi, False),  # radians; the unit's two channels cover theta and theta + pi
    "spatial_frequency": (0.04, 0.40, False),  # cycles per pixel of the pyramid level (Nyquist is 0.5)
    "sigma": (0.7, 2.2, False),  # Gaussian envelope, pixels of the pyramid level (kernel_size 11 spans 2.3 sigma)
    "temporal_frequency": (0.02, 0.45, False),  # cycles per frame (Nyquist is 0.5)
    "tau": (0.6, 4.0, False),  # decay of the temporal envelope, frames
    "energy_constant": (1e-9, 1e-4, True),  # added to every energy: a floor for blank regions
    # Semi-saturation constant of the divisive normalisation, compared with the mean energy over channels:
    # about 5e-6 for a 10%-contrast grating, 3e-4 at 90%, below 1e-7 for 1% pixel noise.
    "norm_constant": (1e-8, 1e-3, True),
}


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def _to_raw(name: str, value: torch.Tensor) -> torch.Tensor:
    lo, hi, log = BOUNDS[name]
    value = torch.as_tensor(value, dtype=torch.float32)
    if ((value < lo) | (value > hi)).any():
        raise ValueError(f"MotionEnergy {name} must lie in [{lo}, {hi}], got {value.tolist()}")
    if log:
        return _logit((value.log() - math.log(lo)) / (math.log(hi) - math.log(lo)))
    return _logit((value - lo) / (hi - lo))


def _from_raw(name: str, raw: torch.Tensor) -> torch.Tensor:
    lo, hi, log = BOUNDS[name]
    s = torch.sigmoid(raw)
    if log:
        return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * s)
    return lo + (hi - lo) * s


def _binomial_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the 5-tap binomial filter and keep every other pixel: one Gaussian-pyramid step."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5))
    x = F.conv2d(x, k.view(1, 1, 5, 1))
    return x[..., ::2, ::2]


def _resample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average down (energy is a density: area pooling keeps its mean) or bilinearly up to ``size``."""
    if x.shape[-2] >= size[0]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MotionEnergy(nn.Module):
    """Multi-scale, direction-selective motion energy of a clip.

    Args:
        num_orientations: spatial orientations per temporal frequency, spread over [0, pi); each gives two
            opposite directions, so ``2 * num_orientations`` directions.
        temporal_frequencies: initial temporal frequency (cycles/frame) of each group of orientations.
        spatial_frequency: initial spatial frequency (cycles/pixel of a pyramid level) of every unit.
        sigma: initial envelope width (pixels); ``None`` gives about 1.8 octaves of bandwidth.
        tau: initial temporal decay (frames).
        num_scales: pyramid levels; level ``s`` is downsampled by ``2**s``.
        kernel_size: taps of the 1-D spatial filters (odd).
        temporal_length: taps of the temporal filters; also the shortest clip accepted.
        feature_stride: output energy maps have ``ceil(H / stride) x ceil(W / stride)`` pixels.
        memory_budget_mb: clips whose filter responses would exceed this are processed in chunks of frames.

    Channel ``c`` is ``((scale * num_units) + unit) * 2 + d``; ``channel_directions`` gives its preferred
    direction of motion (radians, image coordinates: x right, y down, so pi/2 is downward) and
    ``channel_speeds`` its preferred speed in pixels per frame of the input.
    """

    def __init__(
        self,
        num_orientations: int = 8,
        temporal_frequencies: Sequence[float] = (0.15, 0.3),
        spatial_frequency: float = 0.25,
        sigma: float | None = None,
        tau: float = 3.0,
        num_scales: int = 4,
        kernel_size: int = 11,
        temporal_length: int = 7,
        feature_stride: int = 4,
        memory_budget_mb: int = 256,
    ) -> None:
        super().__init__()
        num_orientations, num_scales, kernel_size, temporal_length, feature_stride, memory_budget_mb = (
            checks.integer(f"MotionEnergy {name}", value, min=low) for name, value, low in (
                ("num_orientations", num_orientations, 1),
                ("num_scales", num_scales, 1),
                ("kernel_size", kernel_size, 3),
                ("temporal_length", temporal_length, 2),
                ("feature_stride", feature_stride, 1),
                ("memory_budget_mb", memory_budget_mb, 1),
            ))
        spatial_frequency = checks.real("MotionEnergy spatial_frequency", spatial_frequency, min=0, min_exclusive=True)
        tau = checks.real("MotionEnergy tau", tau, min=0, min_exclusive=True)
        if sigma is not None:
            sigma = checks.real("MotionEnergy sigma", sigma, min=0, min_exclusive=True)
        if isinstance(temporal_frequencies, (str, bytes)) or not hasattr(temporal_frequencies, "__iter__"):
            raise TypeError(f"MotionEnergy temporal_frequencies must be a sequence of numbers, got {temporal_frequencies!r}")
        temporal_frequencies = tuple(checks.real(f"MotionEnergy temporal_frequencies[{i}]", f, min=0, min_exclusive=True)
                                     for i, f in enumerate(temporal_frequencies))
        if kernel_size % 2 == 0:
            raise ValueError(f"MotionEnergy kernel_size must be odd, got {kernel_size}")
        if feature_stride & (feature_stride - 1):
            raise ValueError(f"MotionEnergy feature_stride must be a power of two, got {feature_stride}")
        if not temporal_frequencies:
            raise ValueError("MotionEnergy temporal_frequencies must not be empty")
        if sigma is None:
            # bandwidth b octaves: sigma * f = sqrt(ln 2 / 2) / pi * (2**b + 1) / (2**b - 1); b = 1.8 -> 0.479
            sigma = min(0.479 / spatial_frequency, BOUNDS["sigma"][1])

        self.num_orientations = num_orientations
        self.num_scales = num_scales
        self.kernel_size = kernel_size
        self.temporal_length = temporal_length
        self.feature_stride = feature_stride
        self.memory_budget_mb = memory_budget_mb
        self.config = {
            "num_orientations": num_orientations,
            "temporal_frequencies": list(temporal_frequencies),
            "spatial_frequency": float(spatial_frequency),
            "sigma": float(sigma),
            "tau": float(tau),
            "num_scales": num_scales,
            "kernel_size": kernel_size,
            "temporal_length": temporal_length,
            "feature_stride": feature_stride,
            "memory_budget_mb": memory_budget_mb,
        }

        n_t = len(temporal_frequencies)
        k = num_orientations * n_t
        theta = torch.arange(num_orientations, dtype=torch.float32).repeat(n_t) * (math.pi / num_orientations)
        omega = torch.tensor(temporal_frequencies, dtype=torch.float32).repeat_interleave(num_orientations)
        init = {
            "orientation": theta,
            "spatial_frequency": torch.full((k,), float(spatial_frequency)),
            "sigma": torch.full((k,), float(sigma)),
            "temporal_frequency": omega,
            "tau": torch.full((k,), float(tau)),
            "energy_constant": torch.tensor([1e-7]),
            "norm_constant": torch.tensor([1e-6]),
        }
        for name, value in init.items():
            self.register_parameter(f"raw_{name}", nn.Parameter(_to_raw(name, value)))

    # ---- bounded parameters -------------------------------------------------------------------------------

    def bounded(self, name: str) -> torch.Tensor:
        """The value of a learnable quantity (see ``BOUNDS``), after its sigmoid."""
        return _from_raw(name, getattr(self, f"raw_{name}"))

    @property
    def num_units(self) -> int:
        return self.raw_orientation.numel()

    @property
    def num_channels(self) -> int:
        return 2 * self.num_units * self.num_scales

    @property
    def min_frames(self) -> int:
        return self.temporal_length

    @property
    def min_size(self) -> int:
        return 2 ** (self.num_scales - 1) * 2

    def channel_directions(self) -> torch.Tensor:
        theta = self.bounded("orientation").detach()
        pair = torch.stack([theta, theta + math.pi], dim=1).reshape(-1)
        return torch.remainder(pair, 2 * math.pi).repeat(self.num_scales)

    def channel_speeds(self) -> torch.Tensor:
        speed = (self.bounded("temporal_frequency") / self.bounded("spatial_frequency")).detach()
        per_scale = speed.repeat_interleave(2)
        return torch.cat([per_scale * 2**s for s in range(self.num_scales)])

    def channel_scales(self) -> torch.Tensor:
        return torch.arange(self.num_scales).repeat_interleave(2 * self.num_units)

    # ---- filters ------------------------------------------------------------------------------------------

    def spatial_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights of the separable spatial stage.

        x stage ``(3K, 1, 1, L)``: per unit the cosine and sine Gabors along x and the bare envelope.
        y stage ``(2K, 3, L, 1)`` (groups=K): combines them into the even (real) and odd (imaginary) part of
        the 2-D complex Gabor. The even part carries ``- a * g(x) g(y)`` so that it sums to zero: without it a
        low-frequency Gabor responds to mean luminance, which is not motion.
        """
        theta = self.bounded("orientation")
        freq = self.bounded("spatial_frequency")
        sigma = self.bounded("sigma")
        u = torch.arange(self.kernel_size, dtype=theta.dtype, device=theta.device) - (self.kernel_size - 1) / 2
        g = torch.exp(-(u[None] ** 2) / (2 * sigma[:, None] ** 2))
        g = g / g.sum(dim=1, keepdim=True)
        kx = (2 * math.pi * freq * torch.cos(theta))[:, None] * u[None]
        ky = (2 * math.pi * freq * torch.sin(theta))[:, None] * u[None]
        xc, xs = g * torch.cos(kx), g * torch.sin(kx)
        yc, ys = g * torch.cos(ky), g * torch.sin(ky)
        a = (xc.sum(1) * yc.sum(1))[:, None]
        x_w = torch.stack([xc, xs, g], dim=1).reshape(-1, 1, 1, self.kernel_size)
        even = torch.stack([yc, -ys, -a * g], dim=1)
        odd = torch.stack([ys, yc, torch.zeros_like(g)], dim=1)
        y_w = torch.stack([even, odd], dim=1).reshape(-1, 3, self.kernel_size, 1)
        return x_w, y_w

    def temporal_kernels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal temporal quadrature pair ``(K, L)`` indexed by lag (0 = the current frame), zero-sum.

        Removing the sum of each filter (a multiple of the envelope) makes a static scene give no energy at all,
        so the normalisation pool is not dominated by texture that does not move.
        """
        omega = 2 * math.pi * self.bounded("temporal_frequency")
        tau = self.bounded("tau")
        lag = torch.arange(self.temporal_length, dtype=omega.dtype, device=omega.device)
        env = torch.exp(-lag[None] / tau[:, None])
        env = env / env.sum(dim=1, keepdim=True)
        c = env * torch.cos(omega[:, None] * lag[None])
        s = env * torch.sin(omega[:, None] * lag[None])
        c = c - c.sum(dim=1, keepdim=True) * env
        s = s - s.sum(dim=1, keepdim=True) * env
        return c, s

    def temporal_operator(self, num_frames: int) -> torch.Tensor:
        """Banded matrix ``(K, 4 * T_out, 2 * T)`` from ``(even, odd)`` over time to the parts of ``G H``, ``G conj H``.

        Rows are (re/im of ``G H``, re/im of ``G conj H``) x output time; columns (even/odd) x input frame.
        Output ``t`` sees frames ``t .. t + L - 1`` with lag 0 on the last of them, so the filter is causal.
        ``G H`` is tuned to motion along the unit's orientation, ``G conj H`` against it. One batched matrix
        product per unit beats a grouped 3-D convolution on a CPU by several times.
        """
        c, s = self.temporal_kernels()
        k, L = c.shape
        t_out = num_frames - L + 1
        # (K, 4, 2, L) mixing weights by lag: rows Re(GH), Im(GH), Re(G conj H), Im(G conj H); columns even, odd
        w = torch.stack([
            torch.stack([c, -s], dim=1),
            torch.stack([s, c], dim=1),
            torch.stack([c, s], dim=1),
            torch.stack([-s, c], dim=1),
        ], dim=1)
        op = w.new_zeros(k, 4, t_out, 2, num_frames)
        for lag in range(L):
            # output t, input frame t + L - 1 - lag
            idx = torch.arange(t_out, device=w.device)
            op[:, :, idx, :, idx + L - 1 - lag] = w[..., lag].unsqueeze(0).expand(t_out, k, 4, 2)
        return op.reshape(k, 4 * t_out, 2 * num_frames)

    # ---- energy -------------------------------------------------------------------------------------------

    def oriented_energy(self, frames: torch.Tensor) -> torch.Tensor:
        """Raw (unpooled, unnormalised) energy of one pyramid level.

        ``frames`` ``(B, T, H, W)`` -> ``(B, 2K, T - L + 1, H, W)``; channel ``2k`` prefers motion along unit
        ``k``'s orientation and ``2k + 1`` the opposite direction. Output ``t`` covers frames ``t .. t + L - 1``.
        """
        b, t, h, w = frames.shape
        k, half = self.num_units, self.kernel_size // 2
        x_w, y_w = self.spatial_weights()
        # Pad the one grey channel rather than the 3K filtered ones; replicated borders are static, and the
        # zero-sum temporal filters give static structure no energy.
        x = F.pad(frames.reshape(b * t, 1, h, w), (half, half, half, half), mode="replicate")
        x = F.conv2d(x, x_w.to(x.dtype))
        x = F.conv2d(x, y_w.to(x.dtype), groups=k)
        x = x.reshape(b, t, k, 2, h, w).permute(2, 3, 1, 0, 4, 5)  # (unit, even/odd, time, b, h, w)
        L = self.temporal_length
        t_out = t - L + 1
        # The banded operator multiplies zeros outside its band; blocks of 2L outputs keep that waste small.
        block = 2 * L
        operators: dict[int, torch.Tensor] = {}
        energies = []
        for start in range(0, t_out, block):
            n = min(block, t_out - start)
            if n not in operators:
                operators[n] = self.temporal_operator(n + L - 1).to(x.dtype)
            window = x[:, :, start : start + n + L - 1].reshape(k, 2 * (n + L - 1), b * h * w)
            parts = torch.bmm(operators[n], window).reshape(k, 2, 2, n, b, h, w)  # (unit, direction, re/im, ...)
            energies.append(parts.square().sum(dim=2))
        energy = torch.cat(energies, dim=2) + self.bounded("energy_constant").to(x.dtype)
        return energy.permute(3, 0, 1, 2, 4, 5).reshape(b, 2 * k, t_out, h, w)

    def forward(self, frames: Any, *, temporal_bins: int | None = None, normalize: bool = True) -> torch.Tensor:
        """Motion energy of a clip (layouts in `vmoba.motion.clip`).

        Returns ``(C, h, w)`` for one clip or ``(B, C, h, w)`` for a batch, averaged over time; with
        ``temporal_bins=n``, ``(..., C, n, h, w)``: the time axis of the filter outputs split into ``n`` equal
        bins, each averaged (with more bins than outputs, bins repeat the output they fall in). Normalised
        energies are of order ``1 / C`` (the channels at one place share about one unit); ``normalize=False``
        returns the raw pooled energies instead.
        """
        clip, batched = as_clip(frames, min_frames=self.min_frames, min_size=self.min_size)
        clip = clip.to(self.raw_orientation.device)
        if temporal_bins is not None:
            temporal_bins = checks.integer("temporal_bins", temporal_bins, min=1)
        normalize = checks.boolean("normalize", normalize)
        bins = 1 if temporal_bins is None else temporal_bins
        n_out = clip.shape[1] - self.temporal_length + 1
        energy = self.energy_of_clip(clip, min(bins, n_out))
        if bins > n_out:
            # fewer filter outputs than bins: each bin takes the output whose time span covers its centre
            energy = energy[:, :, (torch.arange(bins) * n_out) // bins]
        if normalize:
            energy = self.normalize(energy)
        if temporal_bins is None:
            energy = energy[:, :, 0]
        return energy if batched else energy[0]

    def energy_of_clip(self, clip: torch.Tensor, bins: int) -> torch.Tensor:
        """Pooled raw energy ``(B, C, bins, h, w)`` of a validated grey clip ``(B, T, H, W)``."""
        b, t, h, w = clip.shape
        L = self.temporal_length
        n_out = t - L + 1
        multiple = max(self.feature_stride, 2 ** (self.num_scales - 1))
        ph, pw = -h % multiple, -w % multiple
        if ph or pw:
            clip = F.pad(clip, (0, pw, 0, ph), mode="replicate")
        grid = ((h + ph) // self.feature_stride, (w + pw) // self.feature_stride)

        # Responses of one frame, all levels: 3K + 2K spatial maps plus 4K temporal ones, 4/3 for the pyramid.
        per_frame = b * (h + ph) * (w + pw) * 4 * 9 * self.num_units * 4 / 3
        # never fewer outputs per chunk than the overlap each chunk recomputes: at worst twice the work
        chunk = max(L - 1, int(self.memory_budget_mb * 2**20 // per_frame) - (L - 1), 1)
        bin_of = (torch.arange(n_out) * bins) // n_out
        counts = torch.bincount(bin_of, minlength=bins).to(clip)
        total = None
        for start in range(0, n_out, chunk):
            stop = min(n_out, start + chunk)
            pooled = self._pooled_chunk(clip[:, start : stop + L - 1], bin_of[start:stop] - bin_of[start], grid)
            placed = torch.zeros(b, self.num_channels, bins, *grid, dtype=pooled.dtype, device=pooled.device)
            placed = placed.index_add(2, torch.arange(pooled.shape[2], device=pooled.device) + int(bin_of[start]),
                                      pooled)
            total = placed if total is None else total + placed
        energy = total / counts.view(1, 1, -1, 1, 1)
        return energy[..., : -(-h // self.feature_stride), : -(-w // self.feature_stride)]

    def _pooled_chunk(self, clip: torch.Tensor, local_bin: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Energies of the filter outputs of ``clip`` summed per (local) bin, resampled to ``grid``."""
        n_bins = int(local_bin[-1]) + 1
        levels = []
        level = clip
        for s in range(self.num_scales):
            if s:
                b, t, h, w = level.shape
                level = _binomial_down(level.reshape(b * t, 1, h, w))
                level = level.reshape(b, t, *level.shape[-2:])
            e = self.oriented_energy(level)  # (B, 2K, n, h, w)
            summed = torch.zeros(*e.shape[:2], n_bins, *e.shape[3:], dtype=e.dtype, device=e.device)
            summed = summed.index_add(2, local_bin.to(e.device), e)
            b2, c2 = summed.shape[:2]
            summed = _resample(summed.reshape(b2, c2 * n_bins, *summed.shape[3:]), grid)
            levels.append(summed.reshape(b2, c2, n_bins, *grid))
        return torch.cat(levels, dim=1)

    def normalize(self, energy: torch.Tensor) -> torch.Tensor:
        """Divisive normalisation: each channel over the mean of all channels in a 3x3 neighbourhood.

        This is what makes the code contrast invariant: a grating at 10% and at 100% contrast gives nearly the
        same normalised pattern, and the pattern, not the level, says which way things move.
        """
        shape = energy.shape
        flat = energy.reshape(shape[0], shape[1], -1, *shape[-2:])
        pool = flat.mean(dim=1)  # (B, bins, h, w)
        pool = F.avg_pool2d(pool, 3, stride=1, padding=1, count_include_pad=False)
        out = flat / (self.bounded("norm_constant") + pool.unsqueeze(1)) / shape[1]
        return out.reshape(shape)
