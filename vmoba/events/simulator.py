"""ESIM-style event simulation from intensity frames, vectorised over pixels in torch.

Each pixel keeps a reference log intensity ``ref`` (initially ``log(I_0 + eps)``). Between two frames the log
intensity is taken to vary linearly in time; every time it crosses ``ref + C+`` (or ``ref - C-``) an ON (OFF)
event is emitted at the interpolated crossing time and ``ref`` moves by that threshold. Because the path is
linear inside an interval, the crossings of one interval are closed-form: ``n = floor((L1 - ref) / C)``
crossings at the levels ``ref + j C``, ``j = 1..n``, which is what makes the whole thing a few tensor ops.

Non-idealities (all off by default, all drawn from one seeded generator):
    threshold_noise: per-pixel thresholds ``C ~ N(C, sigma)``, fixed for the recording, floored at 0.01.
    refractory_period: seconds after an event during which the pixel emits nothing; crossings it misses
        still move ``ref``, as a pixel's reset would.
    leak_rate: reference drift towards ON in thresholds per second (ON events in a static scene).
    shot_noise_rate: spontaneous events per pixel per second, random polarity; they do not touch ``ref``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import checks
from .stream import EventStream

MIN_THRESHOLD = 0.01


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {type(value).__name__}") from None
    if value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value.detach().to("cpu", torch.float64)


def _positive(name: str, value: float, allow_zero: bool) -> float:
    return checks.real(name, value, min=0, min_exclusive=not allow_zero)


def simulate_events(
    frames: Any,
    timestamps: Any,
    contrast_threshold: float = 0.2,
    *,
    contrast_threshold_neg: float | None = None,
    threshold_noise: float = 0.0,
    refractory_period: float = 0.0,
    leak_rate: float = 0.0,
    shot_noise_rate: float = 0.0,
    eps: float = 1e-3,
    seed: int = 0,
) -> EventStream:
    """Events that an ideal (or, with the noise options, a realistic) DVS would report for ``frames``.

    Args:
        frames: ``(N, H, W)`` intensities in [0, 1] (tensor or array), N >= 2.
        timestamps: ``(N,)`` strictly increasing, seconds.
        contrast_threshold: ``C+`` in log-intensity units; ``contrast_threshold_neg`` is ``C-`` (default ``C+``).
        eps: offset inside ``log(I + eps)``, keeps black pixels finite.
        seed: seeds every random draw; the result is a function of the arguments.
    """
    frames = _as_tensor("frames", frames)
    ts = _as_tensor("timestamps", timestamps)
    if frames.dim() != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must have shape (N, H, W) with N >= 2, got {tuple(frames.shape)}")
    if ts.shape != (frames.shape[0],):
        raise ValueError(f"timestamps must have shape ({frames.shape[0]},) to match the frames, got {tuple(ts.shape)}")
    if not torch.isfinite(frames).all() or frames.min() < 0 or frames.max() > 1:
        raise ValueError("frames must be finite intensities in [0, 1]")
    if not torch.isfinite(ts).all() or not (ts[1:] > ts[:-1]).all():
        raise ValueError("timestamps must be finite and strictly increasing (seconds)")
    c_pos = _positive("contrast_threshold", contrast_threshold, allow_zero=False)
    c_neg = c_pos if contrast_threshold_neg is None else _positive("contrast_threshold_neg", contrast_threshold_neg, False)
    sigma = _positive("threshold_noise", threshold_noise, True)
    refractory = _positive("refractory_period", refractory_period, True)
    leak = _positive("leak_rate", leak_rate, True)
    shot = _positive("shot_noise_rate", shot_noise_rate, True)
    eps = _positive("eps", eps, False)
    seed = checks.integer("seed", seed, min=0, max=2**64 - 1)

    N, H, W = frames.shape
    gen = torch.Generator().manual_seed(seed)
    pixels = H * W
    logs = torch.log(frames.reshape(N, pixels) + eps)
    thr_pos = torch.full((pixels,), c_pos, dtype=torch.float64)
    thr_neg = torch.full((pixels,), c_neg, dtype=torch.float64)
    if sigma > 0:
        thr_pos = (thr_pos + sigma * torch.randn(pixels, generator=gen, dtype=torch.float64)).clamp_(min=MIN_THRESHOLD)
        thr_neg = (thr_neg + sigma * torch.randn(pixels, generator=gen, dtype=torch.float64)).clamp_(min=MIN_THRESHOLD)

    ref = logs[0].clone()
    last_fire = torch.full((pixels,), -np.inf, dtype=torch.float64)
    out_pix, out_t, out_p = [], [], []
    for k in range(N - 1):
        t_a, t_b = float(ts[k]), float(ts[k + 1])
        dt = t_b - t_a
        L_a = logs[k]
        # leak lowers the reference linearly in time; that equals a steeper log-intensity slope against a
        # fixed reference, so the closed-form crossings below still hold with L_b shifted by the drift.
        drift = leak * thr_pos * dt
        L_b = logs[k + 1] + drift
        slope = L_b - L_a
        n_on = torch.floor((L_b - ref) / thr_pos).clamp_(min=0)
        n_off = torch.floor((ref - L_b) / thr_neg).clamp_(min=0)
        step = torch.where(n_on > 0, thr_pos, -thr_neg)
        count = (n_on + n_off).long()
        max_count = int(count.max())
        for j in range(1, max_count + 1):
            active = torch.nonzero(count >= j).squeeze(1)
            if active.numel() == 0:
                break
            level = ref[active] + j * step[active]
            when = t_a + (level - L_a[active]) / slope[active] * dt
            when = when.clamp_(t_a, t_b)  # rounding at the interval ends only
            if refractory > 0:
                keep = when - last_fire[active] >= refractory
                active, when = active[keep], when[keep]
                last_fire[active] = when
            out_pix.append(active)
            out_t.append(when)
            out_p.append(torch.sign(step[active]).to(torch.int8))
        ref = ref + count * step - drift
        if shot > 0:
            n_noise = int(torch.poisson(torch.tensor(shot * dt * pixels, dtype=torch.float64), generator=gen))
            if n_noise:
                out_pix.append(torch.randint(0, pixels, (n_noise,), generator=gen))
                out_t.append(t_a + dt * torch.rand(n_noise, generator=gen, dtype=torch.float64))
                out_p.append((2 * torch.randint(0, 2, (n_noise,), generator=gen) - 1).to(torch.int8))

    if not out_t:
        empty = np.zeros(0, dtype=np.int64)
        return EventStream(empty, empty, np.zeros(0), empty, (H, W))
    pix, t, p = torch.cat(out_pix), torch.cat(out_t), torch.cat(out_p)
    order = torch.argsort(t, stable=True)
    pix, t, p = pix[order].numpy(), t[order].numpy(), p[order].numpy()
    return EventStream(pix % W, pix // W, t, p, (H, W))
