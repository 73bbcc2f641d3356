"""Training the flow model shipped in ``vmoba/weights/motion`` on synthetic clips with exact flow.

``vmoba train motion`` runs it. The shipped weights came from four runs, each under 30 minutes on one CPU thread
of a shared 2-core machine (``OMP_NUM_THREADS=1 nice -n 10 vmoba train motion ...``)::

    --out stage1.safetensors --steps 1500 --size 64 --freeze-energy --seed 0
    --init stage1.safetensors --out stage2.safetensors --steps 600 --size 80 --lr 3e-4 --seed 1
    --init stage2.safetensors --out stage3.safetensors --steps 1200 --size 64 --lr 3e-4 --seed 2 --minutes 28
    --init stage3.safetensors --out flow.safetensors --steps 600 --size 112 --lr 1.5e-4 --seed 3 --minutes 28

The first keeps the motion-energy filters at their Adelson-Bergen initialisation and teaches the integration
stage to read them; the others tune everything together, the last at a larger size so that the coarse pyramid
levels see real structure rather than padding. Stages 1 and 2 ran with a step-based one-cycle schedule (an
earlier revision of this file); the schedule now also follows wall time, so on a loaded machine a run stops at
its time limit with a fully decayed learning rate, and the number of steps depends on the machine's speed.
benchmarks/results/motion_training.json records what each run did.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checks import atomic_output, int_tuple, integer, real
from .flow import MotionFlowNet
from .synthetic import HELDOUT_IMAGES, AffineMotion, image_clip, load_image, random_batch

SEQUENCE_GAMMA = 0.8


def sequence_loss(flows: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """End-point error of every recurrence, later ones weighted more (they are the ones we keep)."""
    n = len(flows)
    total = flows[0].new_zeros(())
    for i, flow in enumerate(flows):
        epe = torch.sqrt(((flow - target) ** 2).sum(dim=1) + 1e-6).mean()
        total = total + SEQUENCE_GAMMA ** (n - 1 - i) * epe
    return total


def heldout_epe(model: MotionFlowNet, size: int = 96, num_frames: int = 9) -> float:
    """Mean end-point error on held-out images translated at 0.5-4 px/frame in 8 directions (interior only)."""
    errors = []
    with torch.no_grad():
        for name in HELDOUT_IMAGES:
            image = load_image(name)
            for speed in (0.5, 1.0, 2.0, 4.0):
                for k in range(8):
                    a = k * math.pi / 4
                    motion = AffineMotion(speed * math.cos(a), speed * math.sin(a))
                    frames, flow = image_clip(image, (size, size), num_frames, motion)
                    est = model(frames)
                    m = size // 8
                    errors.append(float(torch.linalg.vector_norm(est - flow, dim=0)[m:-m, m:-m].mean()))
    return float(np.mean(errors))


@dataclass(frozen=True)
class FlowTrainingSettings:
    """What one training run does; the saved weights carry it as metadata."""

    steps: int = 2000
    batch_size: int = 8
    size: int = 64  # training crops are size x size pixels
    frames: tuple[int, ...] = (7, 8, 9, 9, 10)  # clip lengths, one drawn per step
    lr: float = 5e-4
    energy_lr_scale: float = 0.2  # the motion-energy filters move slower than the network
    freeze_energy: bool = False  # keep the motion-energy filters at their initialisation
    max_speed: float = 8.0
    minutes: float = 29.0  # stop (and save) after this wall time
    seed: int = 0
    init: str | None = None  # start from these weights instead of the initialisation
    skip_heldout: bool = False  # save without measuring the held-out EPE (a minute of CPU time)

    def __post_init__(self):
        for name in ("steps", "batch_size", "size"):
            integer(name, getattr(self, name), min=1)
        object.__setattr__(self, "frames", int_tuple("frames", self.frames, min=2))
        integer("seed", self.seed, min=0)
        for name in ("lr", "energy_lr_scale", "max_speed", "minutes"):
            real(name, getattr(self, name), min=0, min_exclusive=True)


def train_flow_model(out: str | Path, settings: FlowTrainingSettings = FlowTrainingSettings(), *,
                     on_log: Callable[[str], None] | None = None) -> dict:
    """Train the flow model, measure its held-out EPE and save it to ``out`` (safetensors, with the settings
    and the EPE as metadata). Returns that metadata. ``on_log`` receives progress lines."""
    s = settings
    log = on_log or (lambda line: None)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    model = MotionFlowNet.from_pretrained(s.init).train() if s.init else MotionFlowNet()
    # Training batches are small; let the whole clip go through at once instead of in memory-bounded chunks.
    model.energy.memory_budget_mb = 1 << 14
    model.energy.requires_grad_(not s.freeze_energy)
    groups = [{"params": list(model.integrator.parameters()), "lr": s.lr}]
    if not s.freeze_energy:
        groups.append({"params": list(model.energy.parameters()), "lr": s.lr * s.energy_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    start = time.time()
    budget = s.minutes * 60

    def lr_factor(step: int) -> float:
        # On a shared machine the wall-time limit may bind before the step count: the schedule follows
        # whichever is further along, so a run cut short by time still ends with a fully decayed rate.
        p = min(1.0, max(step / s.steps, (time.time() - start) / budget))
        if p < 0.05:
            return 0.1 + 0.9 * p / 0.05
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (p - 0.05) / 0.95))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    running = None
    step = 0
    for step in range(1, s.steps + 1):
        num_frames = int(rng.choice(s.frames))
        frames, target = random_batch(rng, s.batch_size, (s.size, s.size), num_frames, max_speed=s.max_speed)
        flows = model(frames, all_steps=True)
        loss = sequence_loss(flows, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        epe = float(torch.linalg.vector_norm(flows[-1].detach() - target, dim=1).mean())
        running = epe if running is None else 0.98 * running + 0.02 * epe
        elapsed = time.time() - start
        if step % 50 == 0 or step == 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  epe {epe:.3f}  avg {running:.3f}  {elapsed / 60:.1f} min")
        if elapsed > budget:
            log(f"stopping at step {step}: wall-time limit of {s.minutes} minutes")
            break

    model.eval()
    metadata = {
        "training": {"steps": step, "batch": s.batch_size, "size": s.size, "frames": list(s.frames), "lr": s.lr,
                     "freeze_energy": s.freeze_energy, "max_speed": s.max_speed, "seed": s.seed,
                     "init": s.init, "minutes": round((time.time() - start) / 60, 1),
                     "final_running_epe": running},
    }
    if not s.skip_heldout:
        metadata["heldout_translation_epe"] = heldout_epe(model)
        log(f"held-out translation EPE: {metadata['heldout_translation_epe']:.3f} px/frame")
    with atomic_output(out) as partial:
        model.save_pretrained(partial, **metadata)
    return metadata
