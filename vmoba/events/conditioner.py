"""`EventResidualConditioner`: from event voxel grids to the conditioning of a residual denoiser.

After the conditioning branch of "Temporal Residual Guided Diffusion Framework for Event-Driven Video
Reconstruction" (ECCV 2024), designed here from the paper's description:

* a **low-frequency intensity estimator**: a small recurrent network, trained by plain regression, that
  turns each voxel grid and its own previous estimate into a smooth intensity image;
* a **temporal recurrent encoder** (ConvGRU) over the voxel grids, which carries motion context from window
  to window;
* a **high-frequency prior enhancement**: recurrent criss-cross attention over the encoded event features, so
  every position sees the whole map at ``O(positions x (H + W))`` cost.

The conditioning handed to the denoiser is ``[enhanced event features, previous frame, low-frequency
estimate]`` at full resolution. The estimate is detached there: it stays a pure regression model (the
baseline the evaluation compares against), trained only by its own loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .. import checks
from ..crisscross import RecurrentCrissCrossAttention


class ConvGRUCell(nn.Module):
    """Convolutional GRU: the gates of a GRU computed by 3x3 convolutions over ``[input, hidden]``."""

    def __init__(self, in_channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 2 * hidden_channels, 3, padding=1)
        self.candidate = nn.Conv2d(in_channels + hidden_channels, hidden_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], 1)))
        return (1 - update) * h + update * candidate


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class LowFrequencyEstimator(nn.Module):
    """Recurrent regression network: ``(voxels_t, estimate_{t-1}, state) -> (estimate_t, state)``.

    It works at quarter resolution (the low-frequency content is all it has to get right) and predicts the
    change of the estimate, which events describe directly, rather than the intensity from scratch.
    """

    def __init__(self, num_bins: int, channels: int):
        super().__init__()
        self.down = nn.Sequential(_conv(num_bins + 1, channels // 2, 2), _conv(channels // 2, channels, 2))
        self.gru = ConvGRUCell(channels, channels)
        self.up = nn.Sequential(_conv(channels + num_bins + 1, channels // 2), nn.Conv2d(channels // 2, 1, 3, padding=1))

    def forward(self, voxels: torch.Tensor, previous: torch.Tensor, state: torch.Tensor | None):
        inputs = torch.cat([voxels, previous], 1)
        state = self.gru(self.down(inputs), state)
        coarse = F.interpolate(state, size=voxels.shape[-2:], mode="bilinear", align_corners=False)
        delta = self.up(torch.cat([coarse, inputs], 1))
        return (previous + delta).clamp(0, 1), state


@dataclass
class ConditionerState:
    """Recurrent state carried from one frame to the next."""

    lowfreq: torch.Tensor  # previous low-frequency estimate, [B, 1, H, W]
    lowfreq_hidden: torch.Tensor | None = None
    encoder_hidden: torch.Tensor | None = None


class EventResidualConditioner(ModelMixin, ConfigMixin):
    """Conditioning for a denoiser that predicts ``r_t = I_t - I_{t-1}`` from events.

    Calling it with ``(voxels, previous_frame, state)`` consumes one voxel grid ``[B, num_bins, H, W]`` (H, W multiples of
    4) and returns ``(condition [B, out_channels, H, W], lowfreq [B, 1, H, W], state)``.
    """

    @register_to_config
    def __init__(self, num_bins: int = 5, channels: int = 32, lowfreq_channels: int = 32, recurrence: int = 2):
        super().__init__()
        num_bins = checks.integer("EventResidualConditioner.num_bins", num_bins, min=1)
        channels = checks.integer("EventResidualConditioner.channels", channels, min=8)
        lowfreq_channels = checks.integer("EventResidualConditioner.lowfreq_channels", lowfreq_channels, min=2)
        recurrence = checks.integer("EventResidualConditioner.recurrence", recurrence, min=1)
        if channels % 8:
            raise ValueError(f"EventResidualConditioner.channels must be a multiple of 8, got {channels}")
        # the recorded config must hold plain ints (numpy ones would not survive save_pretrained's JSON)
        self.register_to_config(num_bins=num_bins, channels=channels, lowfreq_channels=lowfreq_channels,
                                recurrence=recurrence)
        self.lowfreq_estimator = LowFrequencyEstimator(num_bins, lowfreq_channels)
        self.embed = _conv(num_bins, channels, 2)
        self.encoder = ConvGRUCell(channels, channels)
        self.enhance = RecurrentCrissCrossAttention(channels, recurrence)
        self.fuse = nn.Sequential(_conv(channels + num_bins, channels), _conv(channels, channels))

    @property
    def out_channels(self) -> int:
        return self.config.channels + 2

    def initial_state(self, first_frame: torch.Tensor) -> ConditionerState:
        return ConditionerState(lowfreq=first_frame)

    def forward(self, voxels: torch.Tensor, previous_frame: torch.Tensor, state: ConditionerState):
        if voxels.dim() != 4 or voxels.shape[1] != self.config.num_bins:
            raise ValueError(
                f"voxels must have shape (B, {self.config.num_bins}, H, W) for this conditioner, got {tuple(voxels.shape)}"
            )
        H, W = voxels.shape[-2:]
        if H % 4 or W % 4:
            raise ValueError(f"voxel grids must have H and W divisible by 4, got {H}x{W}; pad them first")
        if previous_frame.shape != (voxels.shape[0], 1, H, W):
            raise ValueError(f"previous_frame must have shape {(voxels.shape[0], 1, H, W)}, got {tuple(previous_frame.shape)}")
        lowfreq, lf_hidden = self.lowfreq_estimator(voxels, state.lowfreq, state.lowfreq_hidden)
        hidden = self.encoder(self.embed(voxels), state.encoder_hidden)
        features = F.interpolate(self.enhance(hidden), size=(H, W), mode="bilinear", align_corners=False)
        features = self.fuse(torch.cat([features, voxels], 1))
        condition = torch.cat([features, previous_frame, lowfreq.detach()], 1)
        return condition, lowfreq, ConditionerState(lowfreq, lf_hidden, hidden)
