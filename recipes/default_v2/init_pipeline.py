"""The starting point of the next default model: the shipped pipeline's tokenizer, text encoder and scheduler
with a wider VAE and a transformer that reads every latent pixel as its own token.

    python recipes/default_v2/init_pipeline.py --out runs/default_v2_init

VAE: the shipped architecture (4x compression in time and space, 17 x 64 x 64 frames -> 5 x 16 x 16 x 16
latents) at twice the width (``base_dim`` 16 instead of 8). Transformer: every size of the shipped one (6
layers, 4 heads x 32, FFN 512) but patch (1, 1, 1) instead of (1, 2, 2): 5 x 16 x 16 = 1,280 tokens, each
4 x 4 pixels of a frame, where the shipped model's 320 tokens cover 8 x 8 pixels and a shape 16 pixels wide
falls on 2 x 2 of them. Both get seeded random weights: vae.yaml, vae_refine.yaml and transformer.yaml train
them from scratch, so only the architecture written here matters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from vmoba.checks import atomic_directory, integer
from vmoba.pipelines import load_default_pipeline
from vmoba.training.models import save_pretrained

PATCH_SIZE = (1, 1, 1)
VAE_BASE_DIM = 16


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="pipeline folder to write (refused if it exists)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seed = integer("--seed", args.seed, min=0)
    pipe = load_default_pipeline()
    if not pipe.vmoba_trained:
        parser.error("the shipped default weights are not installed: this takes their tokenizer and text encoder")
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out {out} exists; give a new folder")
    transformer_config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    transformer_config["patch_size"] = PATCH_SIZE
    vae_config = {k: v for k, v in pipe.vae.config.items() if not k.startswith("_")}
    vae_config["base_dim"] = VAE_BASE_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**transformer_config)
        vae = AutoencoderKLWan(**vae_config)
    pipe.register_modules(transformer=transformer, vae=vae)
    with atomic_directory(out) as tmp:
        save_pretrained(pipe, tmp)
    for name, module in (("transformer", transformer), ("vae", vae), ("text encoder", pipe.text_encoder)):
        count = sum(p.numel() for p in module.parameters())
        print(f"{name}: {count / 1e6:.2f} M parameters, {count * 4 / 2**20:.1f} MiB in float32")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
