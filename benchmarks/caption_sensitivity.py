"""Which words of the caption does a text-to-video model use? Its flow-matching loss with one word swapped.

    python benchmarks/caption_sensitivity.py                          # embedded default model
    python benchmarks/caption_sensitivity.py --model runs/default/final

Clips come from the shapes dataset generator (`vmoba.training.shapes`), pass through the model's VAE
(posterior mean, normalised as in training) and are noised at a few fixed noise levels with fixed noise. The
loss of the transformer's prediction is measured with the true caption, with its color, shape or direction
word replaced by another one, and with the empty caption. A word the model ignores leaves the loss where
the true caption has it; a word it relies on raises it. Generation accuracy (default_model_check.py) needs
the direction word to matter at high noise, where sampling decides the motion.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, print_table, write_json  # noqa: E402

SWAP = {"color": {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"},
        "shape": {"circle": "square", "square": "triangle", "triangle": "circle"},
        "direction": {"left": "right", "right": "left", "up": "down", "down": "up"}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a pipeline folder (default: the embedded default model)")
    parser.add_argument("--clips", type=int, default=48, help="rendered clips (default 48)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.95, 0.8, 0.5, 0.2], help="noise levels")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--name", default="caption_sensitivity.json", help="JSON file name")
    args = parser.parse_args(argv)

    from vmoba.pipelines import load_default_pipeline
    from vmoba.pipelines.default import DEFAULT_SIZE
    from vmoba.training.config import FlowSettings
    from vmoba.training.objectives import FlowMatchingLoss, velocity_error
    from vmoba.training.shapes import clip_spec, render_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_default_pipeline(args.model, quiet=True)
    if not pipe.vmoba_trained:
        print("note: the default model has random weights; every caption is as good as any other", file=sys.stderr)
    size, frames = DEFAULT_SIZE["height"], DEFAULT_SIZE["num_frames"]
    # the training objective's own latents and text embeddings (posterior means, no caption dropout)
    objective = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer,
                                 train_text_encoder=False, max_sequence_length=pipe.config.max_sequence_length,
                                 caption_dropout=0.0, flow=FlowSettings(posterior="mean"))
    generator = torch.Generator().manual_seed(0)
    # held-out clips: another generator seed than the dataset recipe's (seed 0)
    specs = [clip_spec(i, frames=frames, size=size, seed=12345) for i in range(args.clips)]

    def caption(spec, swap: str | None) -> str:
        if swap == "empty":
            return ""
        words = {"color": spec.color, "shape": spec.shape, "direction": spec.direction}
        if swap:
            words[swap] = SWAP[swap][words[swap]]
        return f"a {words['color']} {words['shape']} moves {words['direction']}"

    variants = [None, "color", "shape", "direction", "empty"]
    with torch.no_grad():
        video = torch.from_numpy(np.stack([render_clip(s, frames=frames, size=size) for s in specs]))
        x0 = objective.latents({"video": video.float().permute(0, 4, 1, 2, 3) / 127.5 - 1}, generator)
        noise = torch.randn(x0.shape, generator=generator)
        contexts = {v: objective.text({"caption": [caption(s, v) for s in specs]}, generator) for v in variants}
        rows = []
        for sigma in args.sigmas:
            sigmas = torch.full((len(specs),), sigma)
            rows.append({"sigma": sigma, **{v or "caption": velocity_error(pipe.transformer, x0, contexts[v], sigmas,
                                                                           noise).item() for v in variants}})

    columns = [("sigma", "noise level", "{:.2f}"), ("caption", "true caption", "{:.4f}")]
    columns += [(v, f"{v} swapped" if v != "empty" else "empty caption", "{:.4f}") for v in variants[1:]]
    print_table(rows, columns)
    settings = {"model": args.model or "embedded default", "clips": args.clips, "dataset_seed": 12345,
                "command": "python benchmarks/caption_sensitivity.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = write_json(args.name, {"settings": settings, "losses": rows, "machine": machine_info()}, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
