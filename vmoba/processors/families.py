"""One class per video DiT family, holding everything vmoba knows about it: its transformer and attention
classes, which attention modules are video self-attention, how to read the latent grid off the
transformer's inputs and the channel layout of its 3D rotary table, its default processor, and the adapter
that reproduces that processor for video self-attention step by step (project, normalise, rotate, attend,
merge), handing the attention itself to ``attend(q, k, v, text_len=, text_first=, text_mask=)`` with
``(B, S, H, D)`` tensors. Everything else (cross-attention, text-only attention, masked attention) goes to
the family's own default processor, unchanged.

Adding a family is writing one `Family` subclass and listing it in `FAMILIES`.
"""

from __future__ import annotations

import inspect
import math
import sys
from typing import Any, Callable

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, CogVideoXAttnProcessor2_0
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers import transformer_ltx, transformer_wan
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

Attend = Callable[..., torch.Tensor]
Grid = tuple[int, int, int]


class Family:
    """What one model family looks like to vmoba. Subclasses fill in the class attributes and the methods
    that raise `NotImplementedError`."""

    name = ""
    transformer_classes: tuple[str, ...] = ()
    attention_classes: tuple[str, ...] = ()  # attention module classes only this family uses
    rotary_kwarg = "image_rotary_emb"  # the keyword the transformer passes its rotary table under

    # -- which modules -----------------------------------------------------------------------------------

    def owns_model(self, model: torch.nn.Module) -> bool:
        return type(model).__name__ in self.transformer_classes

    def owns_attention(self, attn, encoder_hidden_states, rotary) -> bool:
        """Whether this call's attention module belongs to this family (used without `vmoba.enable`)."""
        return type(attn).__name__ in self.attention_classes

    def is_video_attention(self, name: str, module: torch.nn.Module) -> bool:
        """Whether the attention module at ``name`` inside the transformer attends over video tokens."""
        return name.endswith("attn1")

    # -- the latent grid ---------------------------------------------------------------------------------

    def grid_from_inputs(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Grid:
        """The post-patch latent grid ``(T, H, W)`` of a transformer call, from its bound arguments."""
        raise NotImplementedError

    def rotary_axes(self, channels: int) -> torch.Tensor | None:
        """Axis (0 t, 1 h, 2 w, -1 none) of each channel of the rotary table; None when the table is laid out
        ``[t | h | w]`` in contiguous blocks of sizes this family does not fix."""
        return None

    # -- running an attention call -------------------------------------------------------------------------

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary) -> str | None:
        """None when this call is video self-attention vmoba can run; else why it runs the default."""
        raise NotImplementedError

    def video_tokens(self, hidden_states, encoder_hidden_states) -> int:
        return hidden_states.shape[1]

    def text_tokens(self, encoder_hidden_states) -> int:
        return 0

    def default_processor(self, attn, encoder_hidden_states, rotary):
        """The processor diffusers would use for this call."""
        return attn._default_processor_cls()

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        if rotary is not None:
            kwargs = {**kwargs, self.rotary_kwarg: rotary}
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend: Attend):
        """The family's default processor with ``attend`` in place of its attention call."""
        raise NotImplementedError


def _latents(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    x = inputs.get("hidden_states")
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise RuntimeError(f"{type(model).__name__} was called without 5-D latents; vmoba cannot find the grid")
    return x


def _module_helper(attn, name: str, fallback_module):
    """A helper function of the module that defines ``attn``'s class (Wan and SkyReels-V2 each have one)."""
    module = sys.modules.get(type(attn).__module__)
    return getattr(module, name) if module is not None and hasattr(module, name) else getattr(fallback_module, name)


def _project(attn, x, to_q, to_k, to_v, norm_q, norm_k):
    """Query, key and value (B, S, H, D) of one stream, with the optional per-head query/key norms."""
    query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (to_q, to_k, to_v))
    if norm_q is not None:
        query = norm_q(query)
    if norm_k is not None:
        key = norm_k(key)
    return query, key, value


def _rotate_interleaved(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on (B, S, H, D): channel pairs (2i, 2i+1) rotate by the angle of channel 2i."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out.type_as(x)


class Wan(Family):
    """Wan 2.1 / 2.2 / VACE / SkyReels-V2: ``attn1`` is self-attention over video tokens with ``rotary_emb``."""

    name = "wan"
    transformer_classes = ("WanTransformer3DModel", "WanVACETransformer3DModel", "SkyReelsV2Transformer3DModel")
    attention_classes = ("WanAttention", "SkyReelsV2Attention")
    rotary_kwarg = "rotary_emb"

    def grid_from_inputs(self, model, inputs):
        pt, ph, pw = model.config.patch_size
        _, _, frames, height, width = _latents(model, inputs).shape
        return (frames // pt, height // ph, width // pw)

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if getattr(attn, "is_cross_attention", False) or encoder_hidden_states is not None:
            return "cross-attention"
        if attention_mask is not None:
            return "attention mask (block-causal attention of SkyReels-V2 diffusion forcing)"
        return None

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, **kwargs)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        qkv = _module_helper(attn, "_get_qkv_projections", transformer_wan)
        query, key, value = qkv(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary is not None:
            query = _rotate_interleaved(query, *rotary)
            key = _rotate_interleaved(key, *rotary)
        hidden_states = attend(query, key, value).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


def _is_plain_attention(attn) -> bool:
    """diffusers' generic ``Attention`` class, which several families share (told apart by their layers)."""
    return type(attn).__name__ == "Attention"


class CogVideoX(Family):
    """CogVideoX 1.0 / 1.5: joint attention over ``[text; video]``, rotary on video only, returns a tuple."""

    name = "cogvideox"
    transformer_classes = ("CogVideoXTransformer3DModel",)

    def owns_attention(self, attn, encoder_hidden_states, rotary):
        # CogVideoX's joint self-attention: LayerNorm query/key norms, one set of projections for both streams
        return (_is_plain_attention(attn) and isinstance(attn.norm_q, torch.nn.LayerNorm)
                and attn.add_q_proj is None and attn.to_out is not None and not attn.is_cross_attention)

    def grid_from_inputs(self, model, inputs):
        _, frames, _, height, width = _latents(model, inputs).shape
        cfg = model.config
        return (math.ceil(frames / (cfg.patch_size_t or 1)), height // cfg.patch_size, width // cfg.patch_size)

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if encoder_hidden_states is None:
            return "no text stream (not a CogVideoX joint attention)"
        if attention_mask is not None:
            return "attention mask"
        return None

    def text_tokens(self, encoder_hidden_states):
        return encoder_hidden_states.shape[1]

    def default_processor(self, attn, encoder_hidden_states, rotary):
        return AttnProcessor2_0() if encoder_hidden_states is None else CogVideoXAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        text_len = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if rotary is not None:
            query[:, :, text_len:] = apply_rotary_emb(query[:, :, text_len:], rotary)
            if not attn.is_cross_attention:
                key[:, :, text_len:] = apply_rotary_emb(key[:, :, text_len:], rotary)
        out = attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), text_len=text_len,
                     text_first=True)
        hidden_states = out.reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_len, hidden_states.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states


class HunyuanVideo(Family):
    """HunyuanVideo: joint attention over ``[video; text]`` with a text padding mask, in dual-stream blocks
    (separate text projections) and single-stream blocks (no output projection); the token refiner (text
    only, no rotary) keeps its own processor."""

    name = "hunyuan"
    transformer_classes = ("HunyuanVideoTransformer3DModel",)

    def owns_attention(self, attn, encoder_hidden_states, rotary):
        if not _is_plain_attention(attn):
            return False
        if isinstance(attn.norm_q, RMSNorm):
            dual = attn.add_q_proj is not None and isinstance(attn.norm_added_q, RMSNorm)
            return dual or attn.to_out is None  # single-stream blocks are pre_only: no output projection
        # the token refiner: plain biased projections, called on text tokens alone without rotary
        return (attn.norm_q is None and attn.add_q_proj is None and attn.to_q.bias is not None
                and encoder_hidden_states is None and rotary is None)

    def is_video_attention(self, name, module):
        return name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and name.endswith(".attn")

    def grid_from_inputs(self, model, inputs):
        _, _, frames, height, width = _latents(model, inputs).shape
        cfg = model.config
        return (frames // cfg.patch_size_t, height // cfg.patch_size, width // cfg.patch_size)

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if rotary is None:
            return "no rotary embedding (text-only attention of the token refiner)"
        if attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1:3] != (1, 1)
                                           or attention_mask.dtype != torch.bool):
            return "attention mask that is not a key padding mask"
        return None

    def text_tokens(self, encoder_hidden_states):
        return 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]

    def default_processor(self, attn, encoder_hidden_states, rotary):
        return AttnProcessor2_0() if rotary is None else HunyuanVideoAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        n_video = hidden_states.shape[1]
        text_len = self.text_tokens(encoder_hidden_states)
        joint = attn.add_q_proj is None and encoder_hidden_states is not None
        if joint:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        query, key, value = _project(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if joint:
            query = torch.cat([apply_rotary_emb(query[:, :n_video], rotary, sequence_dim=1), query[:, n_video:]], 1)
            key = torch.cat([apply_rotary_emb(key[:, :n_video], rotary, sequence_dim=1), key[:, n_video:]], 1)
        else:
            query = apply_rotary_emb(query, rotary, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            encoder_query, encoder_key, encoder_value = _project(
                attn, encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                attn.norm_added_q, attn.norm_added_k)
            query = torch.cat([query, encoder_query], dim=1)
            key = torch.cat([key, encoder_key], dim=1)
            value = torch.cat([value, encoder_value], dim=1)
        text_mask = None
        if attention_mask is not None and text_len:
            text_mask = attention_mask[:, 0, 0, n_video:].expand(query.shape[0], text_len)
        hidden_states = attend(query, key, value, text_len=text_len, text_first=False, text_mask=text_mask)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :n_video], hidden_states[:, n_video:]
            if getattr(attn, "to_out", None) is not None:
                hidden_states = attn.to_out[0](hidden_states)
                hidden_states = attn.to_out[1](hidden_states)
            if getattr(attn, "to_add_out", None) is not None:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states


class LTXVideo(Family):
    """LTX-Video: ``attn1`` is self-attention with the rotary embedding applied before the head split."""

    name = "ltx"
    transformer_classes = ("LTXVideoTransformer3DModel",)
    attention_classes = ("LTXAttention",)

    def grid_from_inputs(self, model, inputs):
        frames, height, width = inputs.get("num_frames"), inputs.get("height"), inputs.get("width")
        if None in (frames, height, width):
            raise RuntimeError("LTX-Video transformer was called without num_frames/height/width: vmoba needs them "
                               "to know the latent grid")
        cfg = model.config
        return (int(frames) // cfg.patch_size_t, int(height) // cfg.patch_size, int(width) // cfg.patch_size)

    def rotary_axes(self, channels):
        # LTXVideoRotaryPosEmbed: constant padding channels first, then channel pairs cycling through (t, h, w)
        pad = channels % 6
        axes = (torch.arange(channels - pad) // 2) % 3
        return torch.cat([torch.full((pad,), -1), axes])

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if encoder_hidden_states is not None:
            return "cross-attention"
        if attention_mask is not None:
            return "attention mask"
        return None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if rotary is not None:
            query = transformer_ltx.apply_rotary_emb(query, rotary)
            key = transformer_ltx.apply_rotary_emb(key, rotary)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        hidden_states = attend(query, key, value).flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


FAMILIES: tuple[Family, ...] = (Wan(), CogVideoX(), HunyuanVideo(), LTXVideo())
FAMILY_NAMES = tuple(f.name for f in FAMILIES)


def family_named(name: str) -> Family:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"family must be one of {FAMILY_NAMES}, got {name!r}")


def family_of_model(model: Any) -> Family | None:
    return next((f for f in FAMILIES if f.owns_model(model)), None)


def model_family(model: Any) -> str | None:
    """The name of the model's family, or None."""
    family = family_of_model(model)
    return None if family is None else family.name


def family_of_attention(attn, encoder_hidden_states=None, rotary=None) -> Family | None:
    """The family whose transformers build this attention module (for processors installed without
    `vmoba.enable`), or None when it is no supported family's."""
    return next((f for f in FAMILIES if f.owns_attention(attn, encoder_hidden_states, rotary)), None)


def supported_models() -> str:
    return ", ".join(c for f in FAMILIES for c in f.transformer_classes)


def bound_arguments(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A transformer call's arguments by name (what a forward pre-hook sees)."""
    try:
        return inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
    except TypeError:
        return dict(kwargs)
