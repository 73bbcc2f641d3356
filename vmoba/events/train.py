"""Train the event-to-video pipeline on simulated events from bundled photographs, with accelerate.

    OMP_NUM_THREADS=1 accelerate launch --cpu -m vmoba.events.train --out runs/events --minutes 25
    ... --out runs/events2 --init-from runs/events --lr 5e-4          # continue a run (new seeds via --seed)
    python -m vmoba.events.train --out runs/events --steps 2000          # plain single process also works

Each step draws fresh sequences (`vmoba.events.data`), so there is no dataset to store and no epoch. Two losses,
summed: the low-frequency estimator regresses every frame of the sequence (MSE); the denoiser learns the
scaled residual ``r_t`` from noisy versions of it on a few frames per sequence (x0-prediction, MSE). The
previous frame given to the denoiser is the true one with a little noise added, so that at sampling time, when
it is the model's own last output, small errors do not take it off its training distribution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..pipelines.event_to_video import EventToVideoPipeline, build_denoiser, build_scheduler
from .conditioner import ConditionerState, EventResidualConditioner
from .data import SequenceConfig, SyntheticBatches


def build_pipeline(num_bins: int = 5, channels: int = 32, residual_scale: float = 5.0) -> EventToVideoPipeline:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the trained pipeline (save_pretrained layout)")
    parser.add_argument("--steps", type=int, default=100000, help="optimizer steps (training also stops at --minutes)")
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--frames", type=int, default=6, help="frames per training sequence")
    parser.add_argument("--denoised-frames", type=int, default=2, help="frames per sequence that train the denoiser")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prev-noise", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes that simulate the batches")
    parser.add_argument("--init-from", default=None, help="a saved pipeline to continue training from")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from accelerate import Accelerator

    if os.path.exists(os.path.join(args.out, "model_index.json")) and not args.overwrite:
        raise SystemExit(f"{args.out} already holds a pipeline; pass --overwrite to replace it")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    accelerator = Accelerator()
    torch.manual_seed(args.seed)
    pipe = EventToVideoPipeline.from_pretrained(args.init_from) if args.init_from else build_pipeline()
    cfg = SequenceConfig(size=args.size, num_frames=args.frames)
    loss_module = ResidualTrainingLoss(pipe, args.denoised_frames, args.prev_noise)
    optimizer = torch.optim.AdamW(loss_module.parameters(), lr=args.lr, weight_decay=1e-4)
    model, optimizer = accelerator.prepare(loss_module, optimizer)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + 1000 * accelerator.process_index)
    batches = SyntheticBatches(cfg, args.batch_size, 10_000_000 * (args.seed + 1), args.steps,
                               accelerator.process_index, accelerator.num_processes)
    if args.workers > 0:
        batches = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.workers,
                                              worker_init_fn=lambda _: torch.set_num_threads(1), prefetch_factor=4)
    batches = iter(batches)
    budget = args.minutes * 60
    start = time.time()
    log = []
    step = 0
    while step < args.steps and time.time() - start < budget:
        # cosine decay over whichever budget ends first (time, judged from the pace so far, or steps)
        elapsed = time.time() - start
        progress = max(step / args.steps, elapsed / budget)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
        frames, voxels = next(batches)
        frames, voxels = frames.to(accelerator.device), voxels.to(accelerator.device)
        lf_loss, diff_loss = model(frames, voxels, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(lf_loss + diff_loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % args.log_every == 0 and accelerator.is_main_process:
            entry = {"step": step, "minutes": round((time.time() - start) / 60, 2), "lowfreq_mse": lf_loss.item(),
                     "diffusion_mse": diff_loss.item(), "lr": optimizer.param_groups[0]["lr"]}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pipe.save_pretrained(args.out)  # the pipeline holds the very modules that were trained
        with open(os.path.join(args.out, "training_log.json"), "w") as f:
            json.dump({"args": vars(args), "steps": step, "minutes": round((time.time() - start) / 60, 2),
                       "log": log}, f, indent=1)
        print(f"saved {args.out} after {step} steps in {(time.time() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
