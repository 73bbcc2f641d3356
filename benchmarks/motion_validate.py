"""Validate the motion front end on stimuli whose answer is known in closed form.

1. Drifting gratings in 8 directions: decoded direction, from the raw motion energy (population vector of
   opponent energies, no learned read-out) and from `estimate_flow`.
2. Speed tuning: estimated speed of gratings and random dots from 0.25 to 8 pixels/frame; must rise with speed.
3. End-point error on held-out real images (never seen in training) translated at known velocities, against
   OpenCV Farneback and DIS on the same clips (they see the middle frame and the next; `estimate_flow` sees
   the 9-frame clip). Rotation/zoom clips are reported too.

    OMP_NUM_THREADS=1 python benchmarks/motion_validate.py [--out benchmarks/results/motion_validate.json]

Needs the ``motion`` extra (scikit-image, opencv-python-headless).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vmoba.motion import energy_to_rgb, estimate_flow, flow_to_rgb, load_flow_model, to_pil
from vmoba.motion.synthetic import HELDOUT_IMAGES, AffineMotion, dots_clip, grating_clip, image_clip, load_image

NUM_FRAMES = 9
SIZE = 160
MARGIN = 16  # border excluded from every error: content entering the view has no defined match
SPEEDS = (0.5, 1.0, 2.0, 4.0, 6.0)


def angle_error(a: float, b: float) -> float:
    return abs((a - b + math.pi) % (2 * math.pi) - math.pi)


def energy_direction(model, frames: torch.Tensor) -> float:
    me = model.energy
    with torch.no_grad():
        e = me(frames)[..., MARGIN // 4 : -MARGIN // 4, MARGIN // 4 : -MARGIN // 4].mean(dim=(-2, -1))
    d = me.channel_directions()
    opponent = e[0::2] - e[1::2]
    return math.atan2(float((opponent * torch.sin(d[0::2])).sum()), float((opponent * torch.cos(d[0::2])).sum()))


def median_flow(flow: torch.Tensor) -> tuple[float, float]:
    inner = flow[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(2, -1)
    return float(inner[0].median()), float(inner[1].median())


def gratings(model) -> dict:
    rows = []
    for k in range(8):
        direction = k * math.pi / 4
        frames, _ = grating_clip((SIZE, SIZE), NUM_FRAMES, direction, 1.0, frequency=0.1, contrast=0.5)
        e_dir = energy_direction(model, frames)
        fx, fy = median_flow(estimate_flow(frames, model=model))
        f_dir = math.atan2(fy, fx)
        rows.append({
            "direction_deg": k * 45,
            "energy_decoded_deg": round(math.degrees(e_dir) % 360, 1),
            "energy_error_deg": round(math.degrees(angle_error(e_dir, direction)), 1),
            "flow_decoded_deg": round(math.degrees(f_dir) % 360, 1),
            "flow_error_deg": round(math.degrees(angle_error(f_dir, direction)), 1),
            "flow_speed": round(math.hypot(fx, fy), 3),
        })
    ok = all(r["energy_error_deg"] < 22.5 and r["flow_error_deg"] < 22.5 for r in rows)
    return {"rows": rows, "all_within_22.5_deg": ok}


def speed_tuning(model) -> dict:
    speeds = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    rng = np.random.default_rng(0)
    rows = []
    for speed in speeds:
        g_est, d_est = [], []
        for k in range(4):
            direction = k * math.pi / 2 + math.pi / 8
            # the grating's frequency keeps it below the temporal Nyquist limit at every speed
            frames, _ = grating_clip((SIZE, SIZE), NUM_FRAMES, direction, speed, frequency=0.05, contrast=0.5)
            g_est.append(math.hypot(*median_flow(estimate_flow(frames, model=model))))
            motion = AffineMotion(speed * math.cos(direction), speed * math.sin(direction))
            frames, _ = dots_clip(rng, (SIZE, SIZE), NUM_FRAMES, motion, density=0.04)
            d_est.append(math.hypot(*median_flow(estimate_flow(frames, model=model))))
        rows.append({"speed": speed, "grating_estimate": round(float(np.mean(g_est)), 3),
                     "dots_estimate": round(float(np.mean(d_est)), 3)})
    rising = all(b["grating_estimate"] > a["grating_estimate"] and b["dots_estimate"] > a["dots_estimate"]
                 for a, b in zip(rows, rows[1:]))
    return {"rows": rows, "rises_with_speed": rising}


def opencv_flows(frames: torch.Tensor) -> dict[str, np.ndarray]:
    import cv2

    mid = (NUM_FRAMES - 1) // 2
    a = np.round(frames[mid].numpy() * 255).astype(np.uint8)
    b = np.round(frames[mid + 1].numpy() * 255).astype(np.uint8)
    out = {}
    t = time.perf_counter()
    out["farneback"] = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)
    out["farneback_s"] = time.perf_counter() - t
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    t = time.perf_counter()
    out["dis"] = dis.calc(a, b, None)
    out["dis_s"] = time.perf_counter() - t
    return out


def epe(est: np.ndarray, gt: np.ndarray) -> float:
    """Mean end-point error over the interior; both ``(H, W, 2)``."""
    d = est - gt
    return float(np.sqrt((d**2).sum(-1))[MARGIN:-MARGIN, MARGIN:-MARGIN].mean())


def heldout(model) -> dict:
    methods = ("motion_energy", "farneback", "dis", "zero")
    cases = [("translation", s, AffineMotion(s, 0.0)) for s in SPEEDS]
    cases += [("rotation 0.02 rad/frame", None, AffineMotion(0.0, 0.0, 0.02, 0.0)),
              ("zoom 2%/frame", None, AffineMotion(0.0, 0.0, 0.0, 0.02))]
    rows, times = [], {m: [] for m in methods[:3]}
    for kind, speed, base in cases:
        errs = {m: [] for m in methods}
        for name in HELDOUT_IMAGES:
            image = load_image(name)
            for k in range(8 if speed is not None else 1):
                a = k * math.pi / 4
                motion = AffineMotion(speed * math.cos(a), speed * math.sin(a)) if speed is not None else base
                frames, flow = image_clip(image, (SIZE, SIZE), NUM_FRAMES, motion)
                gt = flow.permute(1, 2, 0).numpy()
                t = time.perf_counter()
                ours = estimate_flow(frames, model=model).permute(1, 2, 0).numpy()
                times["motion_energy"].append(time.perf_counter() - t)
                cv = opencv_flows(frames)
                times["farneback"].append(cv["farneback_s"])
                times["dis"].append(cv["dis_s"])
                errs["motion_energy"].append(epe(ours, gt))
                errs["farneback"].append(epe(cv["farneback"], gt))
                errs["dis"].append(epe(cv["dis"], gt))
                errs["zero"].append(epe(np.zeros_like(gt), gt))
        rows.append({"case": kind, "speed": speed, "clips": len(errs["zero"]),
                     **{m: round(float(np.mean(v)), 3) for m, v in errs.items()}})
    translation = [r for r in rows if r["speed"] is not None]
    summary = {m: round(float(np.mean([r[m] for r in translation])), 3) for m in methods}
    return {"rows": rows, "translation_mean": summary,
            "seconds_per_clip": {m: round(float(np.mean(v)), 4) for m, v in times.items()}}


def figure(model, path: str) -> None:
    """Middle frame | true flow | estimate_flow | motion energy, for a held-out image that rotates and zooms."""
    motion = AffineMotion(1.0, -0.5, 0.02, 0.015)
    frames, gt = image_clip(load_image("motorcycle"), (SIZE, SIZE), NUM_FRAMES, motion)  # the most textured
    est = estimate_flow(frames, model=model)
    with torch.no_grad():
        energy = model.energy(frames)
    top = float(gt.norm(dim=0).max())
    mid = np.round(frames[(NUM_FRAMES - 1) // 2].numpy() * 255).astype(np.uint8)
    tiles = [np.repeat(mid[..., None], 3, axis=-1), flow_to_rgb(gt, top), flow_to_rgb(est, top),
             energy_to_rgb(energy, model.energy.channel_directions(), size=(SIZE, SIZE))]
    gap = np.full((SIZE, 4, 3), 255, np.uint8)
    row = np.concatenate(sum([[t, gap] for t in tiles], [])[:-1], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    to_pil(row).save(path)


def markdown(result: dict) -> str:
    lines = ["**Drifting gratings, 8 directions** (1 px/frame, 0.1 cycles/px; decoded direction in degrees)", "",
             "| direction | energy population vector | error | estimate_flow | error |", "|---|---|---|---|---|"]
    for r in result["gratings"]["rows"]:
        lines.append(f"| {r['direction_deg']} | {r['energy_decoded_deg']} | {r['energy_error_deg']} | "
                     f"{r['flow_decoded_deg']} | {r['flow_error_deg']} |")
    lines += ["", "**Speed tuning** (median estimated speed, px/frame, mean of 4 directions)", "",
              "| true speed | grating (0.05 cycles/px) | random dots |", "|---|---|---|"]
    for r in result["speed_tuning"]["rows"]:
        lines.append(f"| {r['speed']} | {r['grating_estimate']} | {r['dots_estimate']} |")
    lines += ["", f"**End-point error on held-out images** ({', '.join(HELDOUT_IMAGES)}; {SIZE}x{SIZE}, "
              f"{NUM_FRAMES} frames, {MARGIN}-px border excluded; px/frame, lower is better)", "",
              "| motion | clips | estimate_flow | Farneback | DIS (medium) | zero flow |", "|---|---|---|---|---|---|"]
    for r in result["heldout"]["rows"]:
        label = f"translation {r['speed']} px/frame" if r["speed"] is not None else r["case"]
        lines.append(f"| {label} | {r['clips']} | {r['motion_energy']} | {r['farneback']} | {r['dis']} | "
                     f"{r['zero']} |")
    s = result["heldout"]["translation_mean"]
    lines.append(f"| translation, mean | | {s['motion_energy']} | {s['farneback']} | {s['dis']} | {s['zero']} |")
    t = result["heldout"]["seconds_per_clip"]
    lines += ["", f"Seconds per clip on one CPU thread: estimate_flow {t['motion_energy']}, "
              f"Farneback {t['farneback']}, DIS {t['dis']}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/motion_validate.json")
    parser.add_argument("--weights", help="flow weights to validate (default: the shipped ones)")
    parser.add_argument("--figure", help="also save an example image (frame, true flow, estimate, energy) here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_flow_model(args.weights)
    start = time.time()
    result = {
        "gratings": gratings(model),
        "speed_tuning": speed_tuning(model),
        "heldout": heldout(model),
        "weights": getattr(model, "metadata", {}),
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1},
    }
    result["seconds"] = round(time.time() - start, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.figure:
        figure(model, args.figure)
    print(markdown(result))
    print(f"\ngratings all within 22.5 deg: {result['gratings']['all_within_22.5_deg']}; "
          f"speed estimate rises with speed: {result['speed_tuning']['rises_with_speed']}; "
          f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
