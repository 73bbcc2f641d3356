"""Loading the pipeline to fine-tune, preparing its trained parts (VMoBA, LoRA, checkpointing), and
writing the result: a diffusers pipeline folder, LoRA weights, or a VAE folder with its latent statistics."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.video_processor import VideoProcessor

import vmoba

from ..motion import MotionEnergy, MotionEnergyAdapter, load_flow_model
from ..pipelines.default import (_VAE, WEIGHTS_DIR, build_default_pipeline,
                                 load_default_pipeline)
from ..pipelines.loading import load_motion_adapter, load_pipeline as load_pipeline_folder
from ..processors.families import model_family
from .config import ConfigError, TrainConfig, vmoba_config

logger = logging.getLogger("vmoba")


def _reinitialise(module, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(module).from_config(module.config) if hasattr(module, "from_config") else type(module)(module.config)


def load_vae(config: TrainConfig):
    """The VAE the autoencoder task trains (without loading a whole pipeline)."""

    m = config.model
    if m.vae:
        source = Path(m.vae)
        kwargs = {}
    elif m.pretrained == "default":
        source, kwargs = WEIGHTS_DIR, {"subfolder": "vae"}
        if m.from_scratch or not (WEIGHTS_DIR / "vae").is_dir():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.training.seed)
                return AutoencoderKLWan(**_VAE)
    else:
        source, kwargs = Path(m.pretrained), {"subfolder": "vae"}
    try:
        vae = AutoencoderKLWan.from_pretrained(str(source), local_files_only=True, **kwargs)
    except Exception as exc:
        raise ConfigError(f"{config.source}: model.vae / model.pretrained: cannot load an AutoencoderKLWan from "
                          f"{source}: {exc}") from exc
    return _reinitialise(vae, config.training.seed) if m.from_scratch else vae


def load_pipeline(config: TrainConfig):
    """The pipeline whose transformer (and text encoder) the text-to-video task trains."""
    m = config.model
    seed = config.training.seed
    if m.pretrained == "default":
        if m.from_scratch:
            pipe = build_default_pipeline(seed)
        else:
            pipe = load_default_pipeline(quiet=True)
            if not pipe.vmoba_trained:
                logger.warning("the embedded default model has no trained weights installed: training from its "
                               "seeded random weights")
    else:
        try:
            pipe = load_pipeline_folder(m.pretrained)
        except FileNotFoundError as exc:
            raise ConfigError(f"{config.source}: model.pretrained: {exc}; give 'default' or a local Wan pipeline "
                              f"folder") from None
        except ValueError as exc:
            raise ConfigError(f"{config.source}: model.pretrained: {exc}") from exc
        if m.from_scratch:  # the pipeline's own components; a motion adapter is not one of them
            for name in (n for n in m.train if n != "motion_adapter"):
                pipe.register_modules(**{name: _reinitialise(getattr(pipe, name), seed)})
    if m.vae:
        try:
            pipe.register_modules(vae=AutoencoderKLWan.from_pretrained(m.vae, local_files_only=True))
        except Exception as exc:
            raise ConfigError(f"{config.source}: model.vae: cannot load an AutoencoderKLWan from {m.vae}: {exc}") from exc
        pipe.vae_scale_factor_temporal = pipe.vae.config.scale_factor_temporal
        pipe.vae_scale_factor_spatial = pipe.vae.config.scale_factor_spatial

        pipe.video_processor = VideoProcessor(vae_scale_factor=pipe.vae_scale_factor_spatial)
    transformer = getattr(pipe, "transformer", None)
    if transformer is None or model_family(transformer) != "wan":
        name = type(transformer).__name__ if transformer is not None else "none"
        raise ConfigError(f"{config.source}: model.pretrained: fine-tuning supports Wan-architecture pipelines "
                          f"(WanTransformer3DModel); this one's transformer is {name}")
    if getattr(pipe, "transformer_2", None) is not None:
        raise ConfigError(f"{config.source}: model.pretrained: two-expert Wan 2.2 pipelines (transformer_2) are not "
                          f"supported for fine-tuning yet; use a single-transformer Wan pipeline")
    return pipe


def max_sequence_length(config: TrainConfig, pipe) -> int:
    if config.model.max_sequence_length is not None:
        return config.model.max_sequence_length
    return int(pipe.config.get("max_sequence_length", 512) or 512)


def prepare_transformer(config: TrainConfig, pipe):
    """Freeze what is not trained, add LoRA, switch on gradient checkpointing and VMoBA. Returns the VMoBA
    processors (empty with dense attention)."""

    m = config.model
    transformer = pipe.transformer
    for name in ("transformer", "text_encoder", "vae"):
        module = getattr(pipe, name)
        module.requires_grad_(name in m.train and m.lora is None)
    if m.lora is not None:
        try:
            from peft import LoraConfig
        except ImportError:
            raise ConfigError(f"{config.source}: model.lora needs peft: pip install 'vmoba[lora]'") from None
        lora = LoraConfig(r=m.lora.rank, lora_alpha=m.lora.alpha or m.lora.rank, lora_dropout=m.lora.dropout,
                          target_modules=list(m.lora.target_modules), init_lora_weights="gaussian")
        try:
            transformer.add_adapter(lora)
        except ValueError as exc:
            raise ConfigError(f"{config.source}: model.lora.target_modules {m.lora.target_modules}: {exc}") from exc
    if m.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
        if "text_encoder" in m.train and hasattr(pipe.text_encoder, "gradient_checkpointing_enable"):
            pipe.text_encoder.gradient_checkpointing_enable()
    if config.attention.mode == "vmoba":
        return vmoba.enable(transformer, vmoba_config(config))
    return {}


def build_motion_adapter(config: TrainConfig, transformer) -> MotionEnergyAdapter:
    """The adapter ``model.train: [motion_adapter]`` trains, attached to ``transformer``: seeded weights (its
    projection starts at zero, so the model begins exactly as pretrained) and frozen energy filters, the
    default bank or the shipped flow model's (``motion_adapter.energy``); with ``motion_adapter.start:
    pretrained`` the adapter saved beside ``model.pretrained``, whose settings must be the config's."""
    ma = config.motion_adapter
    if ma.start == "pretrained":
        pretrained = config.model.pretrained
        try:
            adapter = load_motion_adapter(None if pretrained == "default" else pretrained)
        except FileNotFoundError as exc:
            raise ConfigError(f"{config.source}: motion_adapter.start: pretrained: {exc}") from exc
        saved = {"pooling": adapter.pooling, "inject": adapter.inject, "normalize": adapter.normalize,
                 "hidden": adapter.hidden, "energy": _energy_bank(adapter.energy)}
        for name, value in saved.items():
            if getattr(ma, name) != value:
                raise ConfigError(f"{config.source}: motion_adapter.{name} is {getattr(ma, name)!r} but the "
                                  f"pretrained adapter (motion_adapter.start: pretrained) has {value!r}")
        return adapter.attach(transformer)
    energy = _energy_bank_named(ma.energy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.training.seed)
        adapter = MotionEnergyAdapter.for_transformer(transformer, energy=energy, hidden=ma.hidden,
                                                      pooling=ma.pooling, inject=ma.inject, normalize=ma.normalize)
    return adapter.attach(transformer)


def _energy_bank_named(name: str) -> MotionEnergy:
    """``motion_adapter.energy``'s filters: the default bank, or the shipped flow model's (a copy)."""
    return MotionEnergy() if name == "default" else copy.deepcopy(load_flow_model().energy)


def _energy_bank(energy: MotionEnergy) -> str:
    """Which ``motion_adapter.energy`` a saved adapter's filters are (the trainer keeps them frozen), or a
    description of them when they are neither."""
    for name in ("default", "flow"):
        bank = _energy_bank_named(name)
        if bank.config == energy.config and all(
                torch.equal(a, b) for a, b in zip(bank.state_dict().values(), energy.state_dict().values())):
            return name
    return "other filters (neither the default bank nor the flow model's)"


def export_pipeline(config: TrainConfig, pipe, out: Path, msl: int) -> None:
    """Write the fine-tuned model: a pipeline folder, or LoRA weights that ``pipe.load_lora_weights`` takes."""

    vmoba.disable(pipe.transformer)
    if config.model.lora is not None:
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(pipe.transformer)
        type(pipe).save_lora_weights(str(out), transformer_lora_layers=layers)
        return
    if "max_sequence_length" in pipe.config:
        pipe.register_to_config(max_sequence_length=msl)
    elif msl != 512:
        logger.warning("trained with max_sequence_length=%d: pass max_sequence_length=%d to the pipeline call",
                       msl, msl)
    save_pretrained(pipe, out)


def save_pretrained(obj, out: Path) -> None:
    """``obj.save_pretrained(out)`` without diffusers' ``_name_or_path`` entries: they record the folder the
    model was loaded from on this machine, which means nothing to whoever loads the saved copy."""
    obj.save_pretrained(str(out))
    for path in [Path(out) / "model_index.json", Path(out) / "config.json", *Path(out).glob("*/config.json")]:
        if path.is_file():
            data = json.loads(path.read_text())
            if data.pop("_name_or_path", None) is not None:
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def measure_latent_statistics(vae, dataset, count: int, batch_size: int, device) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means over the first ``count`` clips."""
    total = sq = n = 0
    for start in range(0, min(count, len(dataset)), batch_size):
        items = [dataset[i]["video"] for i in range(start, min(start + batch_size, count, len(dataset)))]
        z = vae.encode(torch.stack(items).to(device, vae.dtype)).latent_dist.mean.double()
        total = total + z.sum(dim=(0, 2, 3, 4))
        sq = sq + z.pow(2).sum(dim=(0, 2, 3, 4))
        n += z.numel() // z.shape[1]
    mean = total / n
    std = (sq / n - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
