"""The embedded default text-to-video pipeline: a tiny Wan-architecture model built fully offline.

Components come from config dicts (no hub access): a Wan transformer, a Wan VAE, a UMT5 text encoder and
a word-level tokenizer whose vocabulary covers plain descriptions of moving shapes. The trained weights ship
inside the package (`vmoba/weights/default/`, recipes/default/ made them); `build_default_pipeline` gives the
same architecture with seeded random weights, and `load_default_pipeline` falls back to it, with a warning,
when the package ships no weights. ``pipe.vmoba_trained`` says which one you got.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers import models as token_models
from tokenizers import processors as token_processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..checks import integer, real
from ..config import VMoBAConfig

logger = logging.getLogger("vmoba")

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"

# Words of the captions the default model is meant for ("a red circle moves right") and a few more.
VOCABULARY = (
    "a an the red green blue yellow white black orange purple circle square triangle ball box shape "
    "moves moving goes slides left right up down on over across dark light background plain small big "
    "slowly quickly and to of in"
).split()

# Latent grids of the default resolution are small; so are the blocks that suit them.
DEFAULT_VMOBA_CONFIG = VMoBAConfig(temporal_chunk=1, spatial_chunk=(2, 2), st_chunk=(2, 2, 2), threshold=0.25)
DEFAULT_SIZE = dict(height=64, width=64, num_frames=17)
# Classifier-free guidance of the embedded model when a call gives none. At diffusers' 5 the difference between
# the prompt's and the empty prompt's prediction squashes every shape along its motion; at 2 colour and
# direction still hold in every clip and the size holds in 95% of them instead of 73% (docs/training.md).
DEFAULT_GUIDANCE_SCALE = 2.0

# Sizes chosen for CPU training and sampling: the VAE compresses 4x in time and in space (17 frames of 64x64
# -> 5 x 16 x 16 latents), the transformer sees 5 x 8 x 8 = 320 tokens.
_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16,
                    out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=6, cross_attn_norm=True,
                    qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# is_residual: the Wan 2.2 VAE's parameter-free shortcuts around every resampling (average-pool down, repeat
# up). At this width they are what lets the autoencoder learn the shapes at all in a few hundred steps; at 8
# base channels it gave back the shape of 38% of rendered clips, at 16 of 97% (docs/training.md).
_VAE = dict(base_dim=16, z_dim=16, dim_mult=[1, 2, 2], num_res_blocks=1, temperal_downsample=[True, True],
            is_residual=True, scale_factor_temporal=4, scale_factor_spatial=4)
_TEXT_ENCODER = dict(vocab_size=len(VOCABULARY) + 3, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
# A pipeline folder's motion adapter (`vmoba.motion.MotionEnergyAdapter`), beside model_index.json
MOTION_ADAPTER_FILE = "motion_adapter.safetensors"
# Captions are a few words; padding every prompt to WanPipeline's 512 tokens would only cost time.
DEFAULT_MAX_SEQUENCE_LENGTH = 16

# which of WanPipeline's arguments a call gave, positionally or by name
_WAN_CALL = inspect.signature(WanPipeline.__call__)


class VMoBAWanPipeline(WanPipeline):
    """`diffusers.WanPipeline` that also takes ``set_attn_processor`` for all its transformers at once, keeps the
    text length its model was trained with (``max_sequence_length``, saved in model_index.json: the zero-padded
    text tokens take part in cross-attention, so another length changes the output), and samples at its own
    size when none is given (``default_height``, ``default_width``, ``default_num_frames``), not at the 480x832
    of Wan 2.1, which a small model cannot make; likewise its own classifier-free guidance
    (``default_guidance_scale``; diffusers' 5 unless the folder says otherwise)."""

    def __init__(self, tokenizer, text_encoder, vae, scheduler, transformer=None, transformer_2=None,
                 boundary_ratio=None, expand_timesteps=False, max_sequence_length: int = 512,
                 default_height: int = DEFAULT_SIZE["height"], default_width: int = DEFAULT_SIZE["width"],
                 default_num_frames: int = DEFAULT_SIZE["num_frames"], default_guidance_scale: float = 5.0):
        super().__init__(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                         transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
                         expand_timesteps=expand_timesteps)
        self.register_to_config(max_sequence_length=max_sequence_length, default_height=default_height,
                                default_width=default_width, default_num_frames=default_num_frames,
                                default_guidance_scale=default_guidance_scale)

    def __call__(self, *args, **kwargs):
        given = _WAN_CALL.bind_partial(self, *args, **kwargs).arguments
        # diffusers takes these unchecked and fails deep inside (or loops zero times and decodes noise)
        integer("num_inference_steps", given.get("num_inference_steps", 50), min=1)
        guidance = given.get("guidance_scale")
        if guidance is None:
            guidance = kwargs["guidance_scale"] = self.config.default_guidance_scale
        real("guidance_scale", guidance)
        for name in ("height", "width", "num_frames"):
            if given.get(name) is not None:
                integer(name, given[name], min=1)
        for name in ("height", "width", "num_frames"):
            if given.get(name) is None:
                kwargs[name] = self.config[f"default_{name}"]
        if given.get("max_sequence_length") is None:
            kwargs["max_sequence_length"] = self.config.max_sequence_length
        return super().__call__(*args, **kwargs)

    def set_attn_processor(self, processor) -> None:
        """Give every transformer its own copy of ``processor`` (each counts its own layers)."""
        for name in ("transformer", "transformer_2"):
            model = getattr(self, name, None)
            if model is not None:
                model.set_attn_processor(processor.clone() if hasattr(processor, "clone") else copy.copy(processor))


def build_tokenizer():
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(VOCABULARY)})
    tok = Tokenizer(token_models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = token_processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_default_pipeline(seed: int = 0):
    """The default architecture with seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**_TRANSFORMER)
        vae = AutoencoderKLWan(**_VAE)
        text_encoder = UMT5EncoderModel(UMT5Config(**_TEXT_ENCODER))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = VMoBAWanPipeline(tokenizer=build_tokenizer(), text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                             transformer=transformer, max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH,
                             default_guidance_scale=DEFAULT_GUIDANCE_SCALE)
    pipe.vmoba_trained = False
    return pipe


def load_default_pipeline(path: str | Path | None = None, *, quiet: bool = False) -> VMoBAWanPipeline:
    """The embedded default pipeline: the weights shipped in the package, or those of ``path`` (a folder saved
    by ``save_pretrained`` or exported by ``vmoba train``).

    A ``path`` that holds no pipeline raises FileNotFoundError. Only when the package itself ships no trained
    weights does it fall back to seeded random weights, with a warning unless ``quiet``;
    ``pipe.vmoba_trained`` tells which you got.
    """
    if path is not None:
        folder = Path(path)
        if not (folder / "model_index.json").is_file():
            what = "no such folder" if not folder.exists() else "no model_index.json there"
            raise FileNotFoundError(f"no default-model pipeline at {folder} ({what})")
    else:
        folder = WEIGHTS_DIR
    if (folder / "model_index.json").is_file():
        pipe = VMoBAWanPipeline.from_pretrained(str(folder), local_files_only=True)
        pipe.vmoba_trained = True
        return pipe
    if not quiet:
        logger.warning("the embedded default model has random weights (no trained weights in %s): it runs end to end "
                       "but its videos are noise", folder)
    return build_default_pipeline()


def _folder_json(path: Path) -> dict:
    """A JSON object file of a pretrained folder, or {} when it is missing or not one (the pipeline loader
    reports malformed folders; here they only mean no recorded attention config)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def base_vmoba_config(pretrained: str):
    """The `VMoBAConfig` a model is sampled and fine-tuned with before the YAML's fields: the one a ``vmoba
    train`` export records (its training.json), else `DEFAULT_VMOBA_CONFIG` for the default model's
    architecture (``"default"`` or a `VMoBAWanPipeline` folder: its small grids need small blocks), else
    `VMoBAConfig()` (Wan 480p blocks)."""
    if pretrained == "default":
        return DEFAULT_VMOBA_CONFIG
    folder = Path(pretrained)
    recorded = _folder_json(folder / "training.json").get("vmoba_config")
    if isinstance(recorded, dict):
        try:
            return VMoBAConfig.from_dict(recorded)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{folder / 'training.json'}: the recorded vmoba_config is not a valid VMoBAConfig: "
                             f"{exc}") from None
    if _folder_json(folder / "model_index.json").get("_class_name") == VMoBAWanPipeline.__name__:
        return DEFAULT_VMOBA_CONFIG
    return VMoBAConfig()
