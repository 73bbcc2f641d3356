"""Evaluate event-to-video reconstruction on held-out synthetic sequences (``vmoba eval events`` runs it).

Sequences are made by `vmoba.events.data` from photographs the training never sees (``HELD_OUT_IMAGES``),
from seeds disjoint from training. Three methods, all given the events and the first frame:

* ``diffusion``: the full `EventToVideoPipeline` (DDIM, seeded per sequence);
* ``lowfreq``: the regression-only baseline, the pipeline's low-frequency estimator alone;
* ``hold_first_frame``: the first frame repeated, a floor any method must clear.

Metrics per frame, averaged per sequence then over sequences: MSE, SSIM (Gaussian window 11, sigma 1.5, data
range 1, as scikit-image's ``structural_similarity(..., gaussian_weights=True)``) and, if the ``lpips`` package
and its backbone weights are available offline, LPIPS (AlexNet). Per-sequence values are written too, so any
subset can be re-checked against the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import HELD_OUT_IMAGES, SequenceConfig, make_sequence

EVAL_SEED = 900_000_000  # training seeds are 10_000_000 * (k + 1) + step * batch, far below this
METHODS = ("diffusion", "lowfreq", "hold_first_frame")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of ``[..., H, W]`` images (one value per leading index), float64, valid-region only."""
    if x.shape != y.shape or x.dim() < 2 or min(x.shape[-2:]) < 11:
        raise ValueError(f"ssim needs two images of one shape, at least 11x11, got {tuple(x.shape)} and {tuple(y.shape)}")
    lead = x.shape[:-2]
    x = x.double().reshape(-1, 1, *x.shape[-2:])
    y = y.double().reshape(-1, 1, *y.shape[-2:])
    w = _gaussian_window().to(x.device)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)


def load_lpips():
    """An LPIPS callable on ``[N, H, W]`` images in [0, 1], or ``(None, reason)`` when it cannot run offline."""
    try:
        import lpips  # optional: LPIPS is reported only where the package is installed
    except ImportError:
        return None, "lpips package not installed"
    try:
        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as error:  # the backbone weights come from a download that may be impossible here
        return None, f"lpips could not load its weights: {type(error).__name__}: {error}"

    def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(a[:, None].float() * 2 - 1, b[:, None].float() * 2 - 1).flatten().double()

    return score, None


def frame_metrics(prediction: torch.Tensor, target: torch.Tensor, lpips_fn=None) -> dict[str, float]:
    """Metrics of ``[N, H, W]`` frames against the truth, averaged over the N frames (``ssim_per_frame`` too)."""
    per_frame = ssim(prediction, target)
    out = {
        "mse": float(((prediction.double() - target.double()) ** 2).mean()),
        "ssim": float(per_frame.mean()),
        "ssim_per_frame": [round(v, 6) for v in per_frame.tolist()],
    }
    if lpips_fn is not None:
        out["lpips"] = float(lpips_fn(prediction, target).mean())
    return out


def evaluate(pipe, num_sequences: int, *, config: SequenceConfig = SequenceConfig(num_frames=8),
             num_inference_steps: int = 50, first: int = 0, use_lpips: bool = True) -> dict:
    """Per-sequence and mean metrics of the three methods on held-out sequences ``first .. first + n - 1``."""
    lpips_fn, lpips_note = load_lpips() if use_lpips else (None, "disabled")
    rows = []
    for index in range(first, first + num_sequences):
        frames, voxels = make_sequence(EVAL_SEED + index, config, HELD_OUT_IMAGES)
        out = pipe(voxels=voxels[None], first_frame=frames[:1], num_inference_steps=num_inference_steps,
                   generator=torch.Generator().manual_seed(index), output_type="pt")
        truth = frames[1:]
        predictions = {"diffusion": out.frames[0], "lowfreq": out.lowfreq[0],
                       "hold_first_frame": frames[:1].expand_as(truth)}
        rows.append({"sequence": index, **{m: frame_metrics(predictions[m], truth, lpips_fn) for m in METHODS}})
    metric_names = [k for k in rows[0]["diffusion"] if k != "ssim_per_frame"]
    mean = {m: {k: sum(r[m][k] for r in rows) / len(rows) for k in metric_names} for m in METHODS}
    for m in METHODS:  # how the methods drift along the sequence
        mean[m]["ssim_per_frame"] = [round(sum(v) / len(rows), 4) for v in zip(*(r[m]["ssim_per_frame"] for r in rows))]
    return {"mean": mean, "per_sequence": rows, "lpips": lpips_note or "alex",
            "config": {**config.__dict__, "num_inference_steps": num_inference_steps, "first_sequence": first,
                       "num_sequences": num_sequences, "held_out_images": list(HELD_OUT_IMAGES), "seed_base": EVAL_SEED}}


def format_table(result: dict) -> str:
    names = [n for n in result["mean"]["diffusion"] if n != "ssim_per_frame"]
    arrows = {"mse": "lower", "ssim": "higher", "lpips": "lower"}
    lines = ["| method | " + " | ".join(f"{n.upper()} ({arrows[n]} is better)" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(f"{result['mean'][method][n]:.4f}" for n in names) + " |")
    return "\n".join(lines)
