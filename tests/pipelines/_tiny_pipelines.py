"""Tiny pipelines for the loading and generation tests, built offline from config dicts."""

import json

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
from transformers import T5Config, T5EncoderModel

from vmoba.pipelines import build_default_pipeline
from vmoba.pipelines.default import build_tokenizer
from vmoba.training import config_from_dict


def tiny_ltx_pipeline():
    """LTX-Video with the real model's compression (32 px, 8 frames per latent) at a tiny width."""
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=1, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=4,
        patch_size_t=1, encoder_causal=True, decoder_causal=False)
    text_encoder = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    return LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=build_tokenizer(), transformer=transformer)


def export_folder(tmp_path, attention, *, threads=1, pretrained="runs/base/final"):
    """A folder laid out as `vmoba train` exports one: the pipeline plus training.json with the run's settings
    exactly as the trainer records them (`TrainConfig.record`)."""
    folder = tmp_path / "run" / "final"
    build_default_pipeline().save_pretrained(folder)
    config = config_from_dict({"model": {"pretrained": pretrained}, "attention": attention,
                               "data": {"root": "data", "height": 32, "width": 32, "num_frames": 5},
                               "training": {"output_dir": "run", "threads": threads, "max_steps": 3}})
    (folder / "training.json").write_text(json.dumps({"config": config.record(), "steps": 3}))
    return folder
