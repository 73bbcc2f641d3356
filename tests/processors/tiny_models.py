"""Tiny random-weight video transformers of every supported family, built offline from config dicts."""

import math

import torch

from vmoba import VMoBAConfig

GRID = (3, 4, 6)  # post-patch latent grid of every case below
SMALL_CHUNKS = dict(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 3))
ALL_BLOCKS = VMoBAConfig(select_mode="topk", topk=(99, 99, 99), **SMALL_CHUNKS)  # sparse path, every block
SPARSE = VMoBAConfig(threshold=0.2, **SMALL_CHUNKS)


def _wan():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=4,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 8, 12), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 7, 16))
    return model, inputs, 4


def _cogvideox():
    from diffusers import CogVideoXTransformer3DModel
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=8, text_embed_dim=16, num_layers=3, sample_width=12,
                                        sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                                        max_text_seq_length=6, use_rotary_positional_embeddings=True)
    rotary = get_3d_rotary_pos_embed(16, ((0, 0), (4, 6)), (4, 6), 3)
    inputs = dict(hidden_states=torch.randn(2, 3, 4, 8, 12), encoder_hidden_states=torch.randn(2, 6, 16),
                  timestep=torch.tensor([500, 500]), image_rotary_emb=rotary)
    return model, inputs, 3


def _hunyuan():
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                                           num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=1,
                                           patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
                                           pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])  # the first prompt is padded
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 4, 6), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(2, 5, 16), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8), guidance=torch.tensor([3000.0, 3000.0]))
    return model, inputs, 4


def _ltx():
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                       num_layers=3, caption_channels=16)
    inputs = dict(hidden_states=torch.randn(2, math.prod(GRID), 8), encoder_hidden_states=torch.randn(2, 5, 16),
                  timestep=torch.tensor([500, 500]), encoder_attention_mask=torch.ones(2, 5), num_frames=3, height=4,
                  width=6, rope_interpolation_scale=(0.32, 32, 32))
    return model, inputs, 3


FAMILIES = {"wan": _wan, "cogvideox": _cogvideox, "hunyuan": _hunyuan, "ltx": _ltx}


def build(family):
    torch.manual_seed(0)
    model, inputs, n_layers = FAMILIES[family]()
    model = model.double().eval()
    inputs = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inputs.items()}
    if "image_rotary_emb" in inputs:
        inputs["image_rotary_emb"] = tuple(t.double() for t in inputs["image_rotary_emb"])
    return model, inputs, n_layers


def run_model(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]
