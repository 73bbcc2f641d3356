"""Train the flow model shipped in ``vmoba/weights/motion`` on synthetic clips with exact flow.

The shipped weights came from four runs, each under 30 minutes on one CPU thread of a shared 2-core machine
(``OMP_NUM_THREADS=1 nice -n 10 python -m vmoba.motion.train_flow ...``)::

    --out stage1.safetensors --steps 1500 --size 64 --freeze-energy --seed 0
    --init stage1.safetensors --out stage2.safetensors --steps 600 --size 80 --lr 3e-4 --seed 1
    --init stage2.safetensors --out stage3.safetensors --steps 1200 --size 64 --lr 3e-4 --seed 2 --max-minutes 28
    --init stage3.safetensors --out flow.safetensors --steps 600 --size 112 --lr 1.5e-4 --seed 3 --max-minutes 28

The first keeps the motion-energy filters at their Adelson-Bergen initialisation and teaches the integration
stage to read them; the others tune everything together, the last at a larger size so that the coarse pyramid
levels see real structure rather than padding. Stages 1 and 2 ran with a step-based one-cycle schedule (an
earlier revision of this file); the schedule now also follows wall time, so on a loaded machine a run stops at
its time limit with a fully decayed learning rate, and the number of steps depends on the machine's speed.
benchmarks/results/motion_training.json records what each run did.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the safetensors weights")
    parser.add_argument("--init", help="start from these weights instead of the initialisation")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="training crops are size x size pixels")
    parser.add_argument("--frames", type=int, nargs="+", default=[7, 8, 9, 9, 10], help="clip lengths, drawn per step")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--energy-lr-scale", type=float, default=0.2, help="filters move slower than the network")
    parser.add_argument("--freeze-energy", action="store_true", help="keep the motion-energy filters fixed")
    parser.add_argument("--max-speed", type=float, default=8.0)
    parser.add_argument("--max-minutes", type=float, default=29.0, help="stop (and save) after this wall time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = MotionFlowNet.from_pretrained(args.init).train() if args.init else MotionFlowNet()
    # Training batches are small; let the whole clip go through at once instead of in memory-bounded chunks.
    model.energy.memory_budget_mb = 1 << 14
    model.energy.requires_grad_(not args.freeze_energy)
    groups = [{"params": list(model.integrator.parameters()), "lr": args.lr}]
    if not args.freeze_energy:
        groups.append({"params": list(model.energy.parameters()), "lr": args.lr * args.energy_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=1e-4)
    start = time.time()
    budget = args.max_minutes * 60

    def progress(step: int) -> float:
        # On a shared machine the wall-time limit may bind before the step count: the schedule follows
        # whichever is further along, so a run cut short by time still ends with a fully decayed rate.
        return min(1.0, max(step / args.steps, (time.time() - start) / budget))

    def lr_factor(step: int) -> float:
        p = progress(step)
        if p < 0.05:
            return 0.1 + 0.9 * p / 0.05
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (p - 0.05) / 0.95))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    running = None
    step = 0
    for step in range(1, args.steps + 1):
        num_frames = int(rng.choice(args.frames))
        frames, target = random_batch(rng, args.batch, (args.size, args.size), num_frames, max_speed=args.max_speed)
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
            print(f"step {step:5d}  loss {loss.item():.3f}  epe {epe:.3f}  avg {running:.3f}  {elapsed / 60:.1f} min",
                  flush=True)
        if elapsed > budget:
            print(f"stopping at step {step}: wall-time limit of {args.max_minutes} minutes", flush=True)
            break

    model.eval()
    heldout = heldout_epe(model)
    print(f"held-out translation EPE: {heldout:.3f} px/frame")
    metadata = {
        "training": {"steps": step, "batch": args.batch, "size": args.size, "frames": args.frames, "lr": args.lr,
                     "freeze_energy": args.freeze_energy, "max_speed": args.max_speed, "seed": args.seed,
                     "init": args.init, "minutes": round((time.time() - start) / 60, 1),
                     "final_running_epe": running},
        "heldout_translation_epe": heldout,
    }
    model.save_pretrained(args.out, **metadata)
    print(json.dumps(metadata, indent=1))


if __name__ == "__main__":
    main()
