"""One rank of a sequence-parallel training check, launched by ``torchrun``: a tiny Wan transformer with VMoBA
takes a few AdamW steps on a rectified-flow loss, once alone on this rank (the reference) and once with its
sequence split over every rank (`vmoba.parallel.training`) inside DistributedDataParallel, as accelerate wraps
it. Every rank writes the losses of both runs and the largest weight difference.

Usage: ``torchrun --nproc_per_node P train_worker.py OUT_DIR CASE [CASE ...]``, CASE ``LAYOUT`` (``ulysses``,
``ring``, ``unified``) inside DDP, or ``LAYOUT:fsdp2`` with the model sharded by FSDP2 (``fully_shard`` per block
class that recipes/parallel/fsdp2.yaml names, then at the root, as accelerate's FSDP2 plugin wraps it).
"""

import json
import sys
from pathlib import Path

import torch
import yaml
import torch.distributed as dist
from diffusers import WanTransformer3DModel
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import vmoba
from vmoba.parallel.training import enable_sequence_parallel, loss_scale

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "parallel" / "fsdp2.yaml"
CONFIG = vmoba.VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3), threshold=0.25)
STEPS = 3


def build():
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vmoba.enable(model, CONFIG)
    return model.double()


def batch(step: int):
    """The same clip, noise and time on every rank of the group (seeded by the step alone)."""
    g = torch.Generator().manual_seed(100 + step)
    x0 = torch.randn(1, 4, 4, 8, 12, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.rand(1, generator=g, dtype=torch.float64)
    text = torch.randn(1, 7, 16, generator=g, dtype=torch.float64)
    return (1 - t) * x0 + t * noise, noise - x0, t, text


def train(model, scale: float = 1.0):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(STEPS):
        x_t, target, t, text = batch(step)
        pred = model(hidden_states=x_t, timestep=(t * 1000).long(), encoder_hidden_states=text, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, target)
        (loss * scale).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def main():
    out_dir, layouts = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    result = {}
    for case in layouts:
        layout, _, wrapper = case.partition(":")
        model = build()
        reference = build()  # the same weights, its own processors and hooks
        ref_losses = train(reference)
        enable_sequence_parallel(model, world, layout)
        if wrapper == "fsdp2":  # as accelerate applies the recipe: its block class, then the root
            fsdp = yaml.safe_load(RECIPE.read_text())["fsdp_config"]
            assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
            blocks = [m for m in model.modules() if type(m).__name__ == fsdp["fsdp_transformer_layer_cls_to_wrap"]]
            assert blocks, fsdp["fsdp_transformer_layer_cls_to_wrap"]
            for block in blocks:
                fully_shard(block, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
            fully_shard(model, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
            wrapped = model
        else:
            wrapped = DistributedDataParallel(model)
        losses = train(wrapped, loss_scale(world))
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        weights = max((p - r).abs().max().item() / (r.abs().max().item() or 1.0)
                      for p, r in zip(params, reference.parameters()))
        result[case] = {"losses": losses, "reference_losses": ref_losses, "weights": weights}
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
