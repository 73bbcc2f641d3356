"""Training the event-to-video pipeline on simulated events from bundled photographs, with accelerate.

Run it as ``vmoba train events`` (docs/events.md has the recipe that made the shipped weights). It lives
beside the pipeline it trains, not in ``vmoba.events``: the event front end sits below the pipelines and
does not import them.

Each step draws fresh sequences (`vmoba.events.data`), so there is no dataset to store and no epoch. Two losses,
summed: the low-frequency estimator regresses every frame of the sequence (MSE); the denoiser learns the
scaled residual ``r_t`` from noisy versions of it on a few frames per sequence (x0-prediction, MSE). The
previous frame given to the denoiser is the true one with a little noise added, so that at sampling time, when
it is the model's own last output, small errors do not take it off its training distribution.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from ..checks import atomic_directory, integer, real
from ..events.conditioner import ConditionerState, EventResidualConditioner
from ..events.data import SequenceConfig, SyntheticBatches
from .event_to_video import EventToVideoPipeline, build_denoiser, build_scheduler


def build_event_pipeline(num_bins: int = 5, channels: int = 32, residual_scale: float = 5.0) -> EventToVideoPipeline:
    """The architecture of the shipped event-to-video pipeline, freshly initialised."""
    conditioner = EventResidualConditioner(num_bins=num_bins, channels=channels)
    unet = build_denoiser(conditioner.out_channels)
    return EventToVideoPipeline(unet, conditioner, build_scheduler(), residual_scale=residual_scale)


class ResidualTrainingLoss(nn.Module):
    """Both losses of one batch in one ``forward``, so DistributedDataParallel sees a single call per step.

    ``forward(frames [B, N + 1, S, S], voxels [B, N, bins, S, S], generator) -> (lowfreq_loss, diffusion_loss)``.
    """

    def __init__(self, pipe: EventToVideoPipeline, denoised_frames: int, prev_noise: float):
        super().__init__()
        self.conditioner, self.unet = pipe.conditioner, pipe.unet
        self.scheduler, self.scale = pipe.scheduler, pipe.config.residual_scale
        self.denoised_frames, self.prev_noise = denoised_frames, prev_noise

    def forward(self, frames: torch.Tensor, voxels: torch.Tensor, generator: torch.Generator):
        B, N = voxels.shape[:2]
        device = generator.device  # every random draw comes from the one seeded generator, on the data's device
        state = ConditionerState(lowfreq=frames[:, :1])
        picked = set(torch.rand(N, generator=generator, device=device).argsort()[: self.denoised_frames].tolist())
        lf_losses, x0s, conditions = [], [], []
        for k in range(N):
            previous, target = frames[:, k : k + 1], frames[:, k + 1 : k + 2]
            jitter = self.prev_noise * torch.rand(B, 1, 1, 1, generator=generator, device=device)
            noisy_previous = (previous + jitter * torch.randn(previous.shape, generator=generator, device=device)).clamp(0, 1)
            condition, lowfreq, state = self.conditioner(voxels[:, k], noisy_previous, state)
            lf_losses.append(F.mse_loss(lowfreq, target))
            if k in picked:
                x0s.append((target - noisy_previous) * self.scale)
                conditions.append(condition)
        # one denoiser call for all picked frames (one batch, one DDP reduction)
        x0, condition = torch.cat(x0s), torch.cat(conditions)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=device)
        prediction = self.unet(torch.cat([self.scheduler.add_noise(x0, noise, t), condition], 1), t).sample
        return torch.stack(lf_losses).mean(), F.mse_loss(prediction, x0)


@dataclass(frozen=True)
class EventTrainingSettings:
    """What one training run does; ``training_log.json`` records it beside the weights."""

    steps: int = 100_000  # optimizer steps; training also stops at ``minutes``
    minutes: float = 25.0  # wall-clock budget
    batch_size: int = 8
    frames: int = 6  # frames per training sequence
    denoised_frames: int = 2  # frames per sequence that train the denoiser
    size: int = 64
    lr: float = 1e-3
    prev_noise: float = 0.02
    seed: int = 0
    log_every: int = 20
    workers: int = 0  # DataLoader processes that simulate the batches
    init: str | None = None  # a saved pipeline folder to continue training from

    def __post_init__(self):
        for name in ("steps", "batch_size", "frames", "size", "log_every"):
            integer(name, getattr(self, name), min=1)
        integer("denoised_frames", self.denoised_frames, min=1, max=self.frames)
        integer("workers", self.workers, min=0)
        integer("seed", self.seed, min=0)
        real("minutes", self.minutes, min=0, min_exclusive=True)
        real("lr", self.lr, min=0, min_exclusive=True)
        real("prev_noise", self.prev_noise, min=0)


def _one_thread_per_worker(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a DataLoader worker process: its own threads, not its parent's


def train_event_pipeline(out: str | Path, settings: EventTrainingSettings = EventTrainingSettings(), *,
                         on_log: Callable[[dict], None] | None = None) -> Path:
    """Train (or continue training) the event-to-video pipeline and save it to ``out`` (save_pretrained
    layout, plus ``training_log.json``). Runs on every process accelerate launched; the main one writes.
    ``on_log`` receives the log entries (step, minutes, both losses, learning rate) as they are made."""
    s = settings
    out = Path(out)
    accelerator = Accelerator()
    torch.manual_seed(s.seed)
    pipe = EventToVideoPipeline.from_pretrained(s.init) if s.init else build_event_pipeline()
    loss_module = ResidualTrainingLoss(pipe, s.denoised_frames, s.prev_noise)
    optimizer = torch.optim.AdamW(loss_module.parameters(), lr=s.lr, weight_decay=1e-4)
    model, optimizer = accelerator.prepare(loss_module, optimizer)
    generator = torch.Generator(device=accelerator.device).manual_seed(s.seed + 1000 * accelerator.process_index)
    batches = SyntheticBatches(SequenceConfig(size=s.size, num_frames=s.frames), s.batch_size,
                               10_000_000 * (s.seed + 1), s.steps, accelerator.process_index, accelerator.num_processes)
    if s.workers > 0:
        batches = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=s.workers,
                                              worker_init_fn=_one_thread_per_worker, prefetch_factor=4)
    batches = iter(batches)
    budget = s.minutes * 60
    start = time.time()
    log = []
    step = 0
    while step < s.steps and time.time() - start < budget:
        # cosine decay over whichever budget ends first (time, judged from the pace so far, or steps)
        progress = max(step / s.steps, (time.time() - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = s.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        frames, voxels = next(batches)
        frames, voxels = frames.to(accelerator.device), voxels.to(accelerator.device)
        lf_loss, diff_loss = model(frames, voxels, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(lf_loss + diff_loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % s.log_every == 0 and accelerator.is_main_process:
            entry = {"step": step, "minutes": round((time.time() - start) / 60, 2), "lowfreq_mse": lf_loss.item(),
                     "diffusion_mse": diff_loss.item(), "lr": optimizer.param_groups[0]["lr"]}
            log.append(entry)
            if on_log is not None:
                on_log(entry)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_directory(out) as partial:
            pipe.save_pretrained(str(partial))  # the pipeline holds the very modules that were trained
            (partial / "training_log.json").write_text(json.dumps(
                {"settings": asdict(s), "steps": step, "minutes": round((time.time() - start) / 60, 2),
                 "log": log}, indent=1))
    accelerator.wait_for_everyone()
    return out
