"""One rank of a context-parallel check, launched by ``torchrun``: a tiny Wan transformer with a VMoBA or
criss-cross processor runs once on the whole sequence (the reference, no collectives) and once under
``enable_parallelism``; the rank writes the largest differences of output and summed parameter gradients.

Usage: ``torchrun --nproc_per_node P cp_worker.py OUT_DIR CASE [CASE ...]``, each CASE ``PROCESSOR:LAYOUT``.
PROCESSOR, for a tiny Wan transformer (``ltx/PROCESSOR``: a tiny LTX-Video one): ``default`` (diffusers' own
processor), ``enabled`` (`vmoba.enable`, which reads the grid from the transformer's input), or installed with
`set_attn_processor` (the grid then comes from the gathered rotary table): ``vmoba``, ``vmoba-global``,
``vmoba-block``, ``vmoba-reordered``, ``mixed`` (criss-cross and VMoBA layers), ``crisscross``. LAYOUT:
``ulysses``, ``ring`` or ``unified`` (both, 4 processes); PROCESSOR ``nan``: VMoBA with NaN in one rank's
shard of the input, which must raise on every rank. The vmoba processors capture their calls under
parallelism; the rank writes how many records it got and how many kept a selection mask. The model runs in
float64; diffusers merges ring steps in float32 (``convert_to_fp32``), the one rounding left.
"""

import json
import sys
import traceback
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, LTXVideoTransformer3DModel, WanTransformer3DModel

import vmoba
from vmoba import parallel
from vmoba.processors.base import AttentionProcessor

CHUNKS = dict(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3))
CONFIG = vmoba.VMoBAConfig(**CHUNKS, threshold=0.25)
# selection that groups over every query of a head (tiles pooled across shards): the gathering ring path
GLOBAL = vmoba.VMoBAConfig(**CHUNKS, threshold=0.3, granularity="tile", query_tile=5, threshold_type="head_global")
# selection grouped over all heads: impossible under Ulysses, where a rank holds some of the heads
BLOCK = vmoba.VMoBAConfig(**CHUNKS, threshold=0.3, threshold_type="block")
# a criss-cross layer first: Ulysses runs it, ring has no form for it
MIXED = CONFIG.replace(layer_schedule=("crisscross", "2d", "3d"))


def build(seed: int = 0, family: str = "wan"):
    torch.manual_seed(seed)
    if family == "ltx":  # grid 4x4x6 (96 tokens), 6 text tokens: both split evenly over 2 and 4 ranks.
        # diffusers' own cross-attention (attn2) limits what can be checked: it fails under Ulysses with a
        # text mask (the mask keeps the local text length) and in the backward pass (its Ulysses backward
        # assumes as many keys as queries), and on CPU its native op has no ring form. So LTX-Video checks
        # the forward pass under Ulysses, without a text mask.
        model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                           num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                           num_layers=3, caption_channels=16).double()
        inputs = dict(hidden_states=torch.randn(1, 96, 8, dtype=torch.float64),
                      encoder_hidden_states=torch.randn(1, 6, 16, dtype=torch.float64), timestep=torch.tensor([500]),
                      encoder_attention_mask=None, num_frames=4, height=4, width=6,
                      rope_interpolation_scale=(0.32, 32, 32))
        return model, inputs
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=3,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    model = model.double()
    inputs = dict(hidden_states=torch.randn(1, 4, 4, 8, 12, dtype=torch.float64),
                  timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 7, 16, dtype=torch.float64))
    return model, inputs


def install(model, kind: str) -> None:
    if kind == "default":
        return
    if kind == "enabled":
        vmoba.enable(model, CONFIG)
        return
    if kind in ("vmoba", "vmoba-global", "vmoba-block", "mixed"):
        config = {"vmoba": CONFIG, "vmoba-global": GLOBAL, "vmoba-block": BLOCK, "mixed": MIXED}[kind]
        processor = vmoba.VMoBAProcessor(config)
    elif kind == "vmoba-reordered":  # heads dealt to the Ulysses ranks in another order: the same result
        processor = vmoba.VMoBAProcessor(GLOBAL)
        processor.head_order = torch.tensor([3, 0, 2, 1])
    else:
        processor = vmoba.CrissCrossAttnProcessor(CONFIG)
    model.set_attn_processor(processor)


def run(model, inputs, weight, backward=True):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    if not backward:
        return out.detach(), {}
    (out * weight).sum().backward()
    grads = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in
             model.named_parameters()}
    return out.detach(), grads


def layout_config(layout: str, world: int) -> ContextParallelConfig:
    if layout == "ulysses":
        return ContextParallelConfig(ulysses_degree=world)
    if layout == "ring":
        return ContextParallelConfig(ring_degree=world)
    return ContextParallelConfig(ring_degree=2, ulysses_degree=world // 2)


def check(kind: str, layout: str) -> dict:
    world = dist.get_world_size()
    family, _, kind = kind.rpartition("/")
    model, inputs = build(family=family or "wan")
    reference, _ = build(family=family or "wan")  # the same weights; its own processors and hooks
    install(model, kind)
    install(reference, kind)
    shape = model(**inputs, return_dict=False)[0].shape
    weight = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    backward = family != "ltx"
    ref_out, ref_grads = run(reference, inputs, weight, backward)
    processors = {id(p): p for p in model.attn_processors.values() if isinstance(p, AttentionProcessor)}.values()
    for p in processors:
        p.reset_stats()
        p.capture = True
    try:
        with mock.patch.object(torch.accelerator, "device_count", return_value=1):
            model.enable_parallelism(config=layout_config(layout, world))
        out, grads = run(model, inputs, weight, backward)
    except parallel.UnsupportedParallelism as error:
        return {"error": f"{type(error).__name__}: {error}"}
    grad_diff = 0.0
    for name, g in grads.items():
        dist.all_reduce(g)  # every rank holds the gradient of its own tokens: the sum is the model's
        scale = ref_grads[name].abs().max().item() or 1.0
        grad_diff = max(grad_diff, (g - ref_grads[name]).abs().max().item() / scale)
    records = [record for p in processors for record in p.captured]
    return {"output": (out - ref_out).abs().max().item(), "output_scale": ref_out.abs().max().item(),
            "gradient": grad_diff if backward else None, "captured": len(records),
            "masks": sum(record.mask is not None for record in records)}


def check_nan(layout: str) -> dict:
    """NaN in the last frame of the input: under parallelism only the last rank's shard holds it, and every
    rank must raise (a rank that went on would wait forever in the next collective)."""
    model, inputs = build()
    install(model, "vmoba")
    inputs["hidden_states"][:, :, -1] = float("nan")
    with mock.patch.object(torch.accelerator, "device_count", return_value=1):
        model.enable_parallelism(config=layout_config(layout, dist.get_world_size()))
    try:
        model(**inputs, return_dict=False)
    except ValueError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"error": "no error"}


def main():
    out_dir, cases = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {}
    for case in cases:
        try:
            kind, layout = case.split(":")
            results[case] = check_nan(layout) if kind == "nan" else check(kind, layout)
        except Exception:  # noqa: BLE001 - reported to the test, which shows it
            results[case] = {"crash": traceback.format_exc()}
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
