"""Per-family adapters: each reproduces its family's default diffusers processor for video self-attention
step by step (projections, norms, rotary embedding, text handling, output projections, return type) and
hands the attention itself to ``attend(q, k, v, text_len=, text_first=, text_mask=)`` with ``(B, S, H, D)``
tensors. Everything else (cross-attention, text-only attention, masked attention) goes to the family's
own default processor, unchanged.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

Attend = Callable[..., torch.Tensor]


class Family:
    name = ""
    rotary_kwarg = "image_rotary_emb"

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary) -> str | None:
        """None when this call is video self-attention VMoBA can run; else why it runs the default."""
        raise NotImplementedError

    def video_tokens(self, hidden_states, encoder_hidden_states) -> int:
        return hidden_states.shape[1]

    def default_processor(self, attn, encoder_hidden_states, rotary):
        """The processor diffusers would use for this call."""
        return attn._default_processor_cls()

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        if rotary is not None:
            kwargs = {**kwargs, self.rotary_kwarg: rotary}
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend: Attend):
        raise NotImplementedError


def _module_helper(attn, name: str, fallback_module: str):
    """A helper function of the module that defines ``attn``'s class (Wan and SkyReels-V2 each have one)."""
    module = sys.modules.get(type(attn).__module__)
    if module is not None and hasattr(module, name):
        return getattr(module, name)
    return getattr(__import__(fallback_module, fromlist=[name]), name)


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
    rotary_kwarg = "rotary_emb"

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if getattr(attn, "is_cross_attention", False) or encoder_hidden_states is not None:
            return "cross-attention"
        if attention_mask is not None:
            return "attention mask (block-causal attention of SkyReels-V2 diffusion forcing)"
        return None

    def call_default(self, processor, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, kwargs):
        return processor(attn, hidden_states, encoder_hidden_states, attention_mask, rotary, **kwargs)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        qkv = _module_helper(attn, "_get_qkv_projections", "diffusers.models.transformers.transformer_wan")
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


class CogVideoX(Family):
    """CogVideoX 1.0 / 1.5: joint attention over ``[text; video]``, rotary on video only, returns a tuple."""

    name = "cogvideox"

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if encoder_hidden_states is None:
            return "no text stream (not a CogVideoX joint attention)"
        if attention_mask is not None:
            return "attention mask"
        return None

    def default_processor(self, attn, encoder_hidden_states, rotary):
        from diffusers.models.attention_processor import AttnProcessor2_0, CogVideoXAttnProcessor2_0

        return AttnProcessor2_0() if encoder_hidden_states is None else CogVideoXAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        from diffusers.models.embeddings import apply_rotary_emb

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
    """HunyuanVideo: joint attention over ``[video; text]`` with a text padding mask; the token refiner (text
    only, no rotary) keeps its own processor."""

    name = "hunyuan"

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if rotary is None:
            return "no rotary embedding (text-only attention of the token refiner)"
        if attention_mask is not None and (attention_mask.dim() != 4 or attention_mask.shape[1:3] != (1, 1)
                                           or attention_mask.dtype != torch.bool):
            return "attention mask that is not a key padding mask"
        return None

    def default_processor(self, attn, encoder_hidden_states, rotary):
        from diffusers.models.attention_processor import AttnProcessor2_0
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        return AttnProcessor2_0() if rotary is None else HunyuanVideoAttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        from diffusers.models.embeddings import apply_rotary_emb

        n_video = hidden_states.shape[1]
        text_len = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
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

    def sparse_capable(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary):
        if encoder_hidden_states is not None:
            return "cross-attention"
        if attention_mask is not None:
            return "attention mask"
        return None

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, attend):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        value = attn.to_v(hidden_states)
        if rotary is not None:
            query = apply_rotary_emb(query, rotary)
            key = apply_rotary_emb(key, rotary)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        hidden_states = attend(query, key, value).flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


FAMILY_ADAPTERS: dict[str, Family] = {f.name: f for f in (Wan(), CogVideoX(), HunyuanVideo(), LTXVideo())}


def family_of_attention(attn) -> str | None:
    """Guess the family from an attention module alone (used without `vmoba.enable`)."""
    name = type(attn).__name__
    if name in ("WanAttention", "SkyReelsV2Attention"):
        return "wan"
    if name == "LTXAttention":
        return "ltx"
    if name == "Attention":
        # HunyuanVideo's dual-stream attention has separate text projections, its single-stream one has no
        # output projection; CogVideoX's has neither trait.
        if getattr(attn, "add_q_proj", None) is not None or getattr(attn, "to_out", None) is None:
            return "hunyuan"
        return "cogvideox"
    return None
