"""Finding the latent grid of an attention call: from the model's inputs (a forward pre-hook) or from the
rotary embedding the processor receives."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

# Video DiT families and the transformer classes that belong to them.
FAMILIES = {
    "wan": ("WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel"),
    "cogvideox": ("CogVideoXTransformer3DModel",),
    "hunyuan": ("HunyuanVideoTransformer3DModel",),
    "ltx": ("LTXVideoTransformer3DModel",),
}


def model_family(model: torch.nn.Module) -> str | None:
    name = type(model).__name__
    return next((family for family, classes in FAMILIES.items() if name in classes), None)


def supported_models() -> str:
    return ", ".join(c for classes in FAMILIES.values() for c in classes)


def _bound(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    try:
        return inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except TypeError:
        return dict(kwargs)


def grid_from_inputs(model: torch.nn.Module, family: str, args: tuple, kwargs: dict) -> tuple[int, int, int]:
    """The post-patch latent grid ``(T, H, W)`` of a transformer call, from its inputs and config."""
    a = _bound(model, args, kwargs)
    cfg = model.config
    if family == "ltx":
        frames, height, width = a.get("num_frames"), a.get("height"), a.get("width")
        if None in (frames, height, width):
            raise RuntimeError("LTX-Video transformer was called without num_frames/height/width: VMoBA needs them "
                               "to know the latent grid")
        return (int(frames) // cfg.patch_size_t, int(height) // cfg.patch_size, int(width) // cfg.patch_size)
    x = a.get("hidden_states")
    if x is None or x.dim() != 5:
        raise RuntimeError(f"{type(model).__name__} was called without 5-D latents; VMoBA cannot find the grid")
    if family == "wan":
        pt, ph, pw = cfg.patch_size
        _, _, frames, height, width = x.shape
        return (frames // pt, height // ph, width // pw)
    if family == "cogvideox":
        _, frames, _, height, width = x.shape
        pt = cfg.patch_size_t or 1
        return (math.ceil(frames / pt), height // cfg.patch_size, width // cfg.patch_size)
    _, _, frames, height, width = x.shape  # hunyuan
    return (frames // cfg.patch_size_t, height // cfg.patch_size, width // cfg.patch_size)


def timestep_of(model: torch.nn.Module, args: tuple, kwargs: dict) -> float | None:
    t = _bound(model, args, kwargs).get("timestep")
    if t is None:
        return None
    return float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)


def grid_from_rotary(rotary: Any, n_tokens: int) -> tuple[int, int, int] | None:
    """Recover ``(T, H, W)`` from a 3D rotary table over ``n_tokens`` video tokens in frame-major order.

    Each rotary channel depends on one axis, and equal positions give bit-identical values. With W, H >= 2
    (true of any video latent): the channels that differ between tokens 0 and 1 are w channels, and W is
    the first token where they all return to token 0's values; the channels that differ between tokens 0
    and W are h channels, and H*W is the first multiple of W where those return. Returns None when the
    table does not have that structure.
    """
    tables = list(rotary) if isinstance(rotary, (tuple, list)) else [rotary]
    if not tables or not all(isinstance(t, torch.Tensor) and t.shape == tables[0].shape for t in tables):
        return None
    cos = torch.cat(tables, -1)  # cos and sin: cos alone cannot tell position p from -p
    if cos.dim() == 4:  # Wan: [1, S, 1, D]
        cos = cos[0, :, 0]
    elif cos.dim() == 3:  # LTX: [B, S, C]
        cos = cos[0]
    if cos.dim() != 2 or cos.shape[0] != n_tokens or n_tokens < 2:
        return None

    def first_return(channels: torch.Tensor, step: int) -> int:
        rows = cos[step::step, channels]
        same = (rows == cos[0, channels]).all(-1)
        return int(same.to(torch.uint8).argmax()) * step + step if bool(same.any()) else n_tokens

    w_channels = cos[1] != cos[0]
    if not bool(w_channels.any()):
        return None
    W = first_return(w_channels, 1)
    HW = n_tokens
    if W < n_tokens:
        h_channels = (cos[W] != cos[0]) & ~w_channels
        if not bool(h_channels.any()):
            return None
        HW = first_return(h_channels, W)
    if HW % W or n_tokens % HW:
        return None
    return (n_tokens // HW, HW // W, W)
