"""`EventToVideoPipeline`: events (and optionally a first frame) in, intensity frames out.

Per frame interval the events become a voxel grid; `EventResidualConditioner` turns it, the previous frame and
its recurrent state into a conditioning map; a UNet denoiser, run by a diffusers scheduler, samples the
temporal residual ``r_t = I_t - I_{t-1}`` (scaled by ``residual_scale`` so it spans the noise's range), and the
frame is ``I_{t-1} + r_t``. Without a first frame the sequence starts from mid-grey, as a sensor with no
absolute reference must.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput

from .. import checks
from ..events.conditioner import EventResidualConditioner
from ..events.representations import events_to_voxel_windows
from ..events.stream import EventStream

PAD_MULTIPLE = 8
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "events")


@dataclass
class EventToVideoOutput(BaseOutput):
    """``frames``: reconstructed frames ``I_1..I_N``; ``lowfreq``: the low-frequency estimates beside them.
    ``[N, H, W]`` for one stream, ``[B, N, H, W]`` for batched voxel grids; numpy unless ``output_type="pt"``."""

    frames: np.ndarray | torch.Tensor
    lowfreq: np.ndarray | torch.Tensor


def build_denoiser(condition_channels: int, sample_size: int = 64,
                   block_out_channels: Sequence[int] = (32, 48, 64)) -> UNet2DModel:
    """The residual denoiser: a small UNet over ``[noisy residual, condition]``."""
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=1 + condition_channels,
        out_channels=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("DownBlock2D",) * len(block_out_channels),
        up_block_types=("UpBlock2D",) * len(block_out_channels),
        layers_per_block=1,
        norm_num_groups=8,
    )


def build_scheduler() -> DDIMScheduler:
    # x0 ("sample") prediction: with few sampling steps a small model is far better at predicting the
    # residual itself than the noise; trailing spacing starts sampling from pure noise.
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                         clip_sample=False, timestep_spacing="trailing")


def _finite(name: str, tensor: torch.Tensor) -> None:
    # one NaN spreads through the recurrent state and the denoiser into every later frame
    bad = ~torch.isfinite(tensor)
    if bad.any():
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} must be finite, got {tensor[index].item()} at index {index} "
                         f"({int(bad.sum())} non-finite values)")


def _first_frame(first_frame, batch: int, height: int, width: int) -> torch.Tensor:
    """``first_frame`` as ``(B, 1, H, W)`` float32: shape checked exactly (a transposed frame has the right
    number of pixels too, and reshaping it would scramble it), values finite and in [0, 1]."""
    if isinstance(first_frame, np.ndarray):
        first_frame = torch.from_numpy(np.ascontiguousarray(first_frame))
    if not isinstance(first_frame, torch.Tensor):
        raise TypeError(f"first_frame must be a torch.Tensor or numpy array, got {type(first_frame).__name__}")
    if not (first_frame.is_floating_point() or first_frame.dtype == torch.bool):
        raise TypeError(f"first_frame must hold float intensities in [0, 1], got dtype {first_frame.dtype}"
                        + (" (for uint8 images use frame / 255)" if first_frame.dtype == torch.uint8 else ""))
    shape = tuple(first_frame.shape)
    accepted = [(batch, height, width), (batch, 1, height, width)] + ([(height, width)] if batch == 1 else [])
    if shape not in accepted:
        raise ValueError(f"first_frame must hold {batch} frame(s) of {height}x{width} pixels in [0, 1]: shape "
                         f"{' or '.join(map(str, accepted))}, got {shape}")
    first = first_frame.detach().float().cpu().reshape(batch, 1, height, width)
    _finite("first_frame", first)
    if first.min() < 0 or first.max() > 1:
        raise ValueError(f"first_frame must hold intensities in [0, 1], got values in "
                         f"[{first.min().item():.4g}, {first.max().item():.4g}]")
    return first


class EventToVideoPipeline(DiffusionPipeline):
    """Event-to-video reconstruction by temporal-residual diffusion.

    Components: ``unet`` (UNet2DModel over ``[noisy residual, condition]``), ``conditioner``
    (`EventResidualConditioner`), ``scheduler`` (any diffusers scheduler; DDIM by default).
    """

    model_cpu_offload_seq = "conditioner->unet"

    def __init__(self, unet: UNet2DModel, conditioner: EventResidualConditioner, scheduler, residual_scale: float = 5.0):
        super().__init__()
        expected = 1 + conditioner.out_channels
        if unet.config.in_channels != expected or unet.config.out_channels != 1:
            raise ValueError(
                f"unet must take 1 + {conditioner.out_channels} conditioning channels = {expected} and return 1, "
                f"got in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels}"
            )
        residual_scale = checks.real("residual_scale", residual_scale, min=0, min_exclusive=True)
        self.register_modules(unet=unet, conditioner=conditioner, scheduler=scheduler)
        self.register_to_config(residual_scale=float(residual_scale))

    @classmethod
    def from_default_weights(cls, **kwargs) -> "EventToVideoPipeline":
        """The small checkpoint shipped inside the package (trained on simulated events; see docs/events.md)."""
        if not os.path.isfile(os.path.join(DEFAULT_WEIGHTS, "model_index.json")):
            raise FileNotFoundError(f"the shipped event-to-video weights are missing from {DEFAULT_WEIGHTS}")
        return cls.from_pretrained(DEFAULT_WEIGHTS, **kwargs)

    # ------------------------------------------------------------------------------------------ inputs

    def _prepare(self, events, voxels, frame_timestamps, num_frames, first_frame):
        num_bins = self.conditioner.config.num_bins
        if (events is None) == (voxels is None):
            raise ValueError("pass either events (an EventStream) or voxels (B, N, num_bins, H, W), not both or neither")
        single = voxels is None
        if single:
            if not isinstance(events, EventStream):
                raise TypeError(f"events must be an EventStream (or pass voxels=), got {type(events).__name__}")
            if frame_timestamps is None:
                if num_frames is None:
                    raise ValueError("pass frame_timestamps (N + 1 boundaries, seconds) or num_frames >= 1")
                num_frames = checks.integer("num_frames", num_frames, min=1)
                if len(events) == 0:
                    raise ValueError("an empty event stream needs explicit frame_timestamps")
                frame_timestamps = np.linspace(events.t[0], events.t[-1], num_frames + 1)
            voxels = events_to_voxel_windows(events, frame_timestamps, num_bins)[None]
        else:
            if not isinstance(voxels, torch.Tensor):
                raise TypeError(f"voxels must be a torch.Tensor (B, N, {num_bins}, H, W), got {type(voxels).__name__}")
            if voxels.dim() != 5 or voxels.shape[2] != num_bins or voxels.numel() == 0:
                raise ValueError(f"voxels must have shape (B, N, {num_bins}, H, W), got {tuple(voxels.shape)}")
            _finite("voxels", voxels)
        B, _, _, H, W = voxels.shape
        if first_frame is None:
            first = torch.full((B, 1, H, W), 0.5)
        else:
            first = _first_frame(first_frame, B, H, W)
        pad_h, pad_w = -H % PAD_MULTIPLE, -W % PAD_MULTIPLE
        voxels = F.pad(voxels.float(), (0, pad_w, 0, pad_h))
        first = F.pad(first, (0, pad_w, 0, pad_h), mode="replicate")
        return voxels.to(self.device), first.to(self.device), (H, W), single

    def _finish(self, frames, lowfreq, size, single, output_type):
        H, W = size
        frames, lowfreq = frames[..., :H, :W].cpu(), lowfreq[..., :H, :W].cpu()
        if single:
            frames, lowfreq = frames[0], lowfreq[0]
        if output_type == "np":
            frames, lowfreq = frames.numpy(), lowfreq.numpy()
        elif output_type != "pt":
            raise ValueError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        return frames, lowfreq

    # ------------------------------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        events: EventStream | None = None,
        *,
        voxels: torch.Tensor | None = None,
        frame_timestamps: Sequence[float] | None = None,
        num_frames: int | None = None,
        first_frame: np.ndarray | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        """Reconstruct the frames at the ends of the intervals between ``frame_timestamps``.

        Give either ``events`` (with ``frame_timestamps``, N + 1 boundaries in seconds, or ``num_frames`` equal
        intervals over the stream) or precomputed ``voxels`` ``[B, N, num_bins, H, W]``. ``first_frame``:
        the frame at the first boundary, ``[H, W]`` (or ``[B, H, W]``) in [0, 1], shape checked exactly.
        Non-finite voxels or first frames are refused: one NaN would spread into every frame.
        """
        num_inference_steps = checks.integer("num_inference_steps", num_inference_steps, min=1)
        checks.choice("output_type", output_type, ("np", "pt"))
        return_dict = checks.boolean("return_dict", return_dict)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        voxels, previous, size, single = self._prepare(events, voxels, frame_timestamps, num_frames, first_frame)
        state = self.conditioner.initial_state(previous)
        scale = self.config.residual_scale
        frames, lowfreqs = [], []
        for k in range(voxels.shape[1]):
            condition, lowfreq, state = self.conditioner(voxels[:, k], previous, state)
            self.scheduler.set_timesteps(num_inference_steps, device=self.device)
            sample = torch.randn(previous.shape, generator=generator, device=previous.device)
            sample = sample * self.scheduler.init_noise_sigma
            for t in self.scheduler.timesteps:
                model_input = self.scheduler.scale_model_input(sample, t)
                prediction = self.unet(torch.cat([model_input, condition], 1), t).sample
                sample = self.scheduler.step(prediction, t, sample).prev_sample
            previous = (previous + sample / scale).clamp(0, 1)
            frames.append(previous[:, 0])
            lowfreqs.append(lowfreq[:, 0])
        frames, lowfreq = self._finish(torch.stack(frames, 1), torch.stack(lowfreqs, 1), size, single, output_type)
        if not return_dict:
            return frames, lowfreq
        return EventToVideoOutput(frames=frames, lowfreq=lowfreq)
