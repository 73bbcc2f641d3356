"""From motion energy to optical flow: a recurrent self-attention integration stage.

Local motion energy is ambiguous: along a straight edge only the velocity component normal to the edge is
measured (the aperture problem), and in blank regions nothing is. The integration stage treats the energy map
as a set of tokens and lets every token repeatedly attend to all others, carrying flow estimates in the
values, so that unambiguous measurements (corners, texture) propagate to ambiguous ones that move together.
A convex combination of coarse neighbours (weights predicted per fine pixel) brings the flow back to full
resolution without smearing it across motion boundaries.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from .clip import as_clip
from .energy import MotionEnergy

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "motion" / "flow.safetensors"

# Flows enter the network divided by this, so that typical values (a few pixels per frame) are of order one.
FLOW_SCALE = 4.0


def _grid_encoding(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Sinusoidal code of token positions ``(h * w, dim)``, in token units so it does not depend on image size.

    The dot product of two codes depends on their offset only, which is what lets attention learn to prefer
    nearby tokens at any resolution.
    """
    quarter = dim // 4
    freqs = torch.exp(torch.linspace(math.log(1.0), math.log(1 / 64), quarter, device=device, dtype=dtype))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    parts = []
    for coord in (xs.reshape(-1), ys.reshape(-1)):
        angle = coord[:, None] * freqs[None]
        parts += [torch.sin(angle), torch.cos(angle)]
    code = torch.cat(parts, dim=1)
    return F.pad(code, (0, dim - code.shape[1]))


class IntegrationStep(nn.Module):
    """One recurrence: self-attention over all tokens, then a GRU update of the state and a flow increment."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.norm = nn.GroupNorm(1, dim)
        self.qk = nn.Conv2d(2 * dim, 2 * dim, 1)
        self.v = nn.Conv2d(dim + 2, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)
        gru_in = 3 * dim + 2 + 2 * heads
        self.gates = nn.Conv2d(dim + gru_in, 2 * dim, 1)
        self.candidate = nn.Conv2d(dim + gru_in, dim, 3, padding=1)
        self.delta = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, 2, 3, padding=1))

    def forward(self, state: torch.Tensor, features: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, d, h, w = state.shape
        scaled = flow / FLOW_SCALE
        q, k = self.qk(torch.cat([self.norm(state), features], dim=1)).chunk(2, dim=1)
        v = self.v(torch.cat([self.norm(state), scaled], dim=1))
        pos = _grid_encoding(h, w, d, state.device, state.dtype)

        def heads(x: torch.Tensor, add_pos: bool) -> torch.Tensor:
            x = x.flatten(2).transpose(1, 2)
            if add_pos:
                x = x + pos
            return x.reshape(b, h * w, self.heads, -1).transpose(1, 2)

        # Each head carries the current flow next to its value vector, so what it gathers includes an explicit
        # flow: a vote of the tokens it trusts, which the update can compare with its own estimate.
        flow_tokens = scaled.flatten(2).transpose(1, 2).unsqueeze(1).expand(b, self.heads, -1, -1)
        values = torch.cat([heads(v, False), flow_tokens], dim=-1)
        # Two zero channels on queries and keys leave the scores unchanged but give all three the same width,
        # which lets PyTorch pick its memory-efficient kernel instead of materialising S x S scores.
        qh, kh = (F.pad(heads(x, True), (0, 2)) for x in (q, k))
        scale = (d // self.heads) ** -0.5
        attended = F.scaled_dot_product_attention(qh, kh, values, scale=scale)  # (B, heads, S, d/h + 2)
        message = attended[..., :-2].transpose(1, 2).reshape(b, h, w, d).permute(0, 3, 1, 2)
        votes = attended[..., -2:].permute(0, 1, 3, 2).reshape(b, 2 * self.heads, h, w)
        message = self.out(message)

        disagreement = votes - scaled.repeat(1, self.heads, 1, 1)
        x = torch.cat([features, message, self.norm(state), scaled, disagreement], dim=1)
        z, r = torch.sigmoid(self.gates(torch.cat([state, x], dim=1))).chunk(2, dim=1)
        cand = torch.tanh(self.candidate(torch.cat([r * state, x], dim=1)))
        state = (1 - z) * state + z * cand
        return state, flow + FLOW_SCALE * self.delta(state)


class FlowIntegrator(nn.Module):
    """Energy map ``(B, C, h, w)`` and middle frame ``(B, 1, H, W)`` -> flows ``(B, 2, H, W)``, one per step."""

    def __init__(self, energy_channels: int, stride: int = 4, dim: int = 64, heads: int = 4,
                 iterations: int = 6, context_channels: int = 32) -> None:
        super().__init__()
        self.stride = stride
        self.iterations = iterations
        self.encode = nn.Sequential(
            nn.Conv2d(energy_channels, dim, 1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        # Appearance of the middle frame enters the initial state and the upsampling weights, because motion
        # boundaries tend to follow image edges; a single frame carries no motion, so that comes from energy.
        layers: list[nn.Module] = []
        c_in = 1
        for _ in range(int(math.log2(stride))):
            layers += [nn.Conv2d(c_in, context_channels, 3, stride=2, padding=1), nn.GELU()]
            c_in = context_channels
        layers.append(nn.Conv2d(c_in, context_channels, 3, padding=1))
        self.context = nn.Sequential(*layers)
        self.init_state = nn.Conv2d(dim + context_channels, dim, 3, padding=1)
        self.init_flow = nn.Conv2d(dim, 2, 1)
        self.step = IntegrationStep(dim, heads)
        self.mask = nn.Sequential(
            nn.Conv2d(dim + context_channels, dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim, 9 * stride * stride, 1),
        )

    def upsample(self, flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Convex upsampling: each fine pixel is a softmax-weighted mix of the 3x3 coarse flows around it."""
        b, _, h, w = flow.shape
        s = self.stride
        weights = torch.softmax(mask.view(b, 1, 9, s, s, h, w), dim=2)
        patches = F.unfold(F.pad(flow, (1, 1, 1, 1), mode="replicate"), 3).view(b, 2, 9, 1, 1, h, w)
        fine = (weights * patches).sum(dim=2)  # (B, 2, s, s, h, w)
        return fine.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, h * s, w * s)

    def forward(self, energy: torch.Tensor, frame: torch.Tensor, iterations: int | None = None) -> list[torch.Tensor]:
        h, w = energy.shape[-2:]
        size = frame.shape[-2:]
        ph, pw = h * self.stride - size[0], w * self.stride - size[1]
        ctx = self.context(F.pad(frame - 0.5, (0, pw, 0, ph), mode="replicate"))[..., :h, :w]
        feats = self.encode(torch.log(energy * energy.shape[1] + 1e-2))
        state = torch.tanh(self.init_state(torch.cat([feats, ctx], dim=1)))
        flow = FLOW_SCALE * self.init_flow(feats)
        flows = []
        for _ in range(self.iterations if iterations is None else iterations):
            state, flow = self.step(state, feats, flow)
            fine = self.upsample(flow, 0.25 * self.mask(torch.cat([state, ctx], dim=1)))
            flows.append(fine[..., : size[0], : size[1]])
        if not flows:
            fine = self.upsample(flow, 0.25 * self.mask(torch.cat([state, ctx], dim=1)))
            flows.append(fine[..., : size[0], : size[1]])
        return flows


class MotionFlowNet(nn.Module):
    """`MotionEnergy` followed by `FlowIntegrator`: a clip in, the flow at its middle frame out."""

    def __init__(self, energy: dict[str, Any] | None = None, integrator: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.energy = MotionEnergy(**(energy or {}))
        integrator = dict(integrator or {})
        self.integrator = FlowIntegrator(self.energy.num_channels, stride=self.energy.feature_stride, **integrator)
        self.config = {"energy": self.energy.config, "integrator": integrator}

    @property
    def min_frames(self) -> int:
        return self.energy.min_frames

    def forward(self, frames: Any, iterations: int | None = None, *, all_steps: bool = False) -> Any:
        """Flow ``(2, H, W)`` (or ``(B, 2, H, W)`` for a batch) in pixels per frame at the middle frame.

        The middle frame is frame ``(T - 1) / 2``; for even ``T`` that is halfway between the two central
        frames. ``all_steps=True`` returns the list of flows after every recurrence (for training).
        """
        clip, batched = as_clip(frames, min_frames=self.energy.min_frames, min_size=self.energy.min_size)
        clip = clip.to(self.integrator.init_flow.weight.device)
        energy = self.energy.normalize(self.energy.energy_of_clip(clip, 1))[:, :, 0]
        t = clip.shape[1]
        middle = 0.5 * (clip[:, (t - 1) // 2] + clip[:, t // 2])
        flows = self.integrator(energy, middle.unsqueeze(1), iterations)
        if not batched:
            flows = [f[0] for f in flows]
        return flows if all_steps else flows[-1]

    def save_pretrained(self, path: str | Path, **metadata: Any) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"config": json.dumps(self.config), **{k: json.dumps(v) for k, v in metadata.items()}}
        with checks.atomic_output(path) as partial:
            save_file(tensors, str(partial), metadata=meta)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "MotionFlowNet":
        """Load weights saved by `save_pretrained`; ``None`` loads the ones shipped with vmoba."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"no motion flow weights at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path} has no 'config' metadata; it was not written by MotionFlowNet.save_pretrained")
        model = cls(**json.loads(meta["config"]))
        model.load_state_dict(load_file(str(path)))
        model.metadata = {k: json.loads(v) for k, v in meta.items() if k != "config"}
        return model.eval()


@functools.lru_cache(maxsize=1)
def _default_model() -> MotionFlowNet:
    model = MotionFlowNet.from_pretrained()
    model.requires_grad_(False)
    return model


def load_flow_model(path: str | Path | None = None) -> MotionFlowNet:
    """The trained flow model (shipped weights unless ``path`` is given), in eval mode."""
    return MotionFlowNet.from_pretrained(path)


def estimate_flow(frames: Any, *, model: MotionFlowNet | None = None, iterations: int | None = None) -> torch.Tensor:
    """Optical flow at the middle frame of a clip, in pixels per frame, channels ``(x, y)`` with y downwards.

    ``frames``: ``(T, H, W)`` grey or ``(T, 3, H, W)`` RGB intensities in [0, 1] (or a batch ``(B, T, ...)``),
    at least ``model.min_frames`` frames (7 for the shipped model). Returns ``(2, H, W)`` (``(B, 2, H, W)``
    for a batch) float32 on the device of ``frames``. Runs offline on the weights shipped with vmoba.
    ``iterations``: recurrences of the integration stage (default: the model's own; 0 is the initial estimate).
    Overshoot of resampling up to 0.1 past [0, 1] is clamped; channels-last input is refused with the fix.
    """
    if model is not None and not isinstance(model, MotionFlowNet):
        raise TypeError(f"model must be a MotionFlowNet (see load_flow_model) or None, got {type(model).__name__}")
    if iterations is not None:
        iterations = checks.integer("iterations", iterations, min=0)
    net = _default_model() if model is None else model
    device = frames.device if isinstance(frames, torch.Tensor) else torch.device("cpu")
    net = net.to(device)
    with torch.no_grad():
        return net(frames, iterations)
