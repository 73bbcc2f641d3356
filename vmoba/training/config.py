"""The training configuration: a YAML file read into dataclasses, every field checked with an error that names it.

    task: text_to_video            # or autoencoder (trains the VAE alone)
    model: {pretrained: default}   # "default" (the embedded model) or a local diffusers Wan pipeline folder
    attention: {mode: vmoba, vmoba: {threshold: 0.25}}
    data: {root: data/shapes, num_frames: 17, height: 64, width: 64}
    training: {output_dir: runs/x, max_steps: 1000, batch_size: 8, learning_rate: 1e-4}

``docs/training.md`` lists every field with its default.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .. import checks
from ..config import VMoBAConfig
from ..parallel.training import LAYOUTS
from ..pipelines.default import base_vmoba_config

TASKS = ("text_to_video", "autoencoder")
TRAINABLE = ("transformer", "text_encoder", "motion_adapter")
DIRECTION_WORDS = ["left", "right", "up", "down"]


class ConfigError(ValueError):
    """A training configuration that cannot run; the message names the file and the field."""


@dataclass
class LoraSettings:
    rank: int = 8
    alpha: float | None = None  # None: equal to rank (scale 1)
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])


@dataclass
class ModelSettings:
    pretrained: str = "default"  # "default" or a local diffusers pipeline folder
    from_scratch: bool = False  # seeded random weights for the trained components (architecture kept)
    vae: str | None = None  # an AutoencoderKLWan folder replacing the pipeline's VAE
    train: list[str] = field(default_factory=lambda: ["transformer"])
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    max_sequence_length: int | None = None  # text tokens; None: the pipeline's own (512 for WanPipeline)


@dataclass
class AttentionSettings:
    mode: str = "vmoba"  # vmoba or dense
    vmoba: dict[str, Any] = field(default_factory=dict)  # VMoBAConfig fields over the model's default config


@dataclass
class DataSettings:
    root: str = ""
    captions: str | None = None  # a file in root (or a path); None: captions.jsonl, else captions.csv
    num_frames: int = 17
    height: int = 64
    width: int = 64
    clip_start: str = "first"  # first or random (a random window of num_frames frames)
    preload: bool = False  # decode every video once into memory
    cache_dir: str | None = None  # VAE latents (and frozen text embeddings) computed once, reused
    caption_dropout: float = 0.0  # fraction of captions replaced by "" (what classifier-free guidance needs)


# dataclass field metadata: the field came after runs that resume and export today; at its default it leaves a
# run's fingerprint as it was
ADDED = "added"


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class FlowSettings:
    shift: float = 3.0  # as the scheduler's: s = shift * u / (1 + (shift - 1) * u)
    timestep_sampling: str = "uniform"  # uniform or logit_normal (u = sigmoid(N(mean, std)))
    logit_mean: float = 0.0
    logit_std: float = 1.0
    posterior: str = "sample"  # latents x0: a posterior sample (as Wan trains) or its mean
    # > 0: latent positions that stand out from their frame's median latent (a small subject on a plain
    # background) weigh up to 1 + foreground_weight in the loss (objectives.foreground_weights)
    foreground_weight: float = 0.0
    # > 0: each clip's noisy latents are made from its latents blurred over height and width by a Gaussian of
    # u * input_blur * s latent pixels (u uniform in [0, 1), s the noise level), the target still leads to the
    # unblurred latents: the model learns to draw the outline the caption asks for into a vague blob, which is
    # what it meets when sampling (objectives.velocity_error)
    input_blur: float = 0.0


@dataclass
class AutoencoderSettings:
    reconstruction: str = "l1"  # l1 or mse, on pixels in [-1, 1]
    edge_weight: float = 0.0  # weight of the same error on neighbouring-pixel differences (sharper edges)
    kl_weight: float = 1e-6
    statistics_clips: int = 256  # clips over which latents_mean / latents_std of the saved VAE are measured
    sample_posterior: bool = True  # decode a posterior sample (a VAE); false: the posterior mean (an autoencoder)
    mid_attention: str = "train"  # train, or identity: the mid-block self-attention zeroed and frozen


@dataclass
class MotionAdapterSettings:
    """The `MotionEnergyAdapter` that ``model.train: [motion_adapter]`` attaches and trains; each clip's own
    motion energy is its reference."""

    pooling: str = "global"  # global (motion only) or tokens (motion where it happens)
    inject: str = "patch"  # patch (added to the patch embeddings) or text (to the text embeddings; global)
    normalize: bool = False  # standardise the log energy over channels before the encoder
    hidden: int = 128
    energy: str = "default"  # default: MotionEnergy()'s bank; flow: the filters of the shipped flow model
    # words taken out of the captions, so that the motion has to come from the reference
    drop_words: list[str] = field(default_factory=lambda: list(DIRECTION_WORDS))
    # data: the flow-matching target (noise - x0); caption: the frozen model's own prediction from the whole
    # caption, words kept, at the same noisy latents (the adapter learns to say what the dropped words said)
    target: str = "data"
    # the fraction of clips that keep their whole caption (the dropped words included) and get no motion token;
    # with the transformer trained alongside, it learns to act on the reference without forgetting the words
    keep_words: float = 0.0
    # new: a fresh adapter (its projection at zero); pretrained: the one saved beside model.pretrained
    # (motion_adapter.safetensors), trained on from there; its settings, energy filters included, must be these
    start: str = "new"
    # the fraction of clips whose caption names a direction that get, instead of their own motion, a synthetic
    # reference (a photo, random dots or a grating) moving that way (vmoba.training.references)
    synthetic_references: float = field(default=0.0, metadata={ADDED: True})
    # pixels per frame, low and high
    synthetic_speed: list[float] = field(default_factory=lambda: [0.5, 3.0], metadata={ADDED: True})
    # references rendered per direction when training starts
    synthetic_per_direction: int = field(default=64, metadata={ADDED: True})


@dataclass
class TrainingSettings:
    output_dir: str = ""
    max_steps: int = 0
    seed: int = 0
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"  # constant or cosine
    lr_warmup_steps: int = 0
    lr_schedule_steps: int | None = None  # the cosine's length; None: max_steps (a run may stop before its end)
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of learning_rate
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), no, bf16, fp16
    ema_decay: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int | None = None  # None keeps every checkpoint
    resume_from: str | None = None  # latest or a checkpoint folder
    log_every: int = 10
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time; resume later
    threads: int | None = None  # torch intra-op threads per process (applied by the vmoba train command)
    sequence_parallel: int = 1  # processes that split one clip's tokens (diffusers' context parallelism)
    sequence_parallel_layout: str = "ulysses"  # ulysses, ring or unified (rings of Ulysses pairs)


@dataclass
class ValidationSettings:
    every: int = 0  # steps between validation samples; 0: only at the end when prompts are given
    prompts: list[str] = field(default_factory=list)
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    fps: int = 8
    clips: int = 2  # autoencoder task: reconstructions of this many training clips


@dataclass
class TrainConfig:
    task: str = "text_to_video"
    model: ModelSettings = field(default_factory=ModelSettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    data: DataSettings = field(default_factory=DataSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)
    autoencoder: AutoencoderSettings = field(default_factory=AutoencoderSettings)
    motion_adapter: MotionAdapterSettings = field(default_factory=MotionAdapterSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    source: str = "<dict>"  # where the config came from, for error messages

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return data

    def record(self) -> dict[str, Any]:
        """The settings as a run's record (training.json): a config read from a file keeps its paths relative to
        that file, as it wrote them, so the record names no one's folders; ``config_file`` is the file's name."""
        record = copy.deepcopy(self)
        if Path(record.source).is_file():
            base = Path(record.source).resolve().parent
            for obj, name, value in _paths(record):
                if Path(value).is_absolute():
                    setattr(obj, name, os.path.relpath(value, base))
        return {"config_file": Path(self.source).name, **record.to_dict()}

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections: what a resumed run must share with the one it continues. Fields
        marked ``ADDED`` count only when set away from their default (the behaviour from before they existed),
        so a run started before a field existed still resumes and exports."""
        data = self.to_dict()
        for s in sections:
            section = getattr(self, s)
            if dataclasses.is_dataclass(section):
                for f in dataclasses.fields(section):
                    if f.metadata.get(ADDED) and getattr(section, f.name) == _default(f):
                        del data[s][f.name]
        blob = json.dumps({s: data[s] for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- reading and checking ---------------------------------------------------------------------------------


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a YAML training configuration."""

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no training configuration at {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the configuration must be a mapping of sections, got {type(data).__name__}")
    config = config_from_dict(data, source=str(path))
    base = path.resolve().parent
    # relative paths in the file are relative to the file, so a recipe runs from any working directory
    for obj, name, value in _paths(config):
        if not Path(value).is_absolute():
            setattr(obj, name, os.path.normpath(base / value))  # one spelling per folder: a resumed run compares them
    return config


def _paths(config: TrainConfig):
    """``(section, field, value)`` of every setting that holds a file system path (not "default" / "latest")."""
    for section, name in (("data", "root"), ("data", "cache_dir"), ("training", "output_dir"), ("model", "vae"),
                          ("model", "pretrained"), ("training", "resume_from")):
        obj = getattr(config, section)
        value = getattr(obj, name)
        if value and value not in ("default", "latest"):
            yield obj, name, value


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    config = _build(TrainConfig, {k: v for k, v in data.items()}, source, "")
    config.source = source
    _check(config)
    return config


def _build(cls, data: Any, source: str, prefix: str):
    where = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names)})"
        raise ConfigError(f"{source}: unknown field {prefix}{key}{hint}")
    values = {}
    for name in names:
        if name not in data:
            continue
        values[name] = _convert(hints[name], data[name], source, f"{prefix}{name}")
    return cls(**values)


def _convert(hint, value, source: str, name: str):
    origin, args = get_origin(hint), get_args(hint)
    if origin is not None and type(None) in args:  # X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _convert(inner, value, source, name)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, name + ".")
    try:  # the shared checks: numpy and 0-d torch scalars accepted, NaN and Inf refused
        if hint is bool:
            try:
                return checks.boolean(name, value)
            except TypeError:  # spelled as YAML spells it
                raise TypeError(f"{name} must be true or false, got {value!r}") from None
        if hint is int:
            return checks.integer(name, value)
        if hint is float:
            if isinstance(value, str):  # YAML reads 1e-4 as a string; accept the usual float spellings
                try:
                    value = float(value)
                except ValueError:
                    pass
            return checks.real(name, value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list, got {value!r}")
        return [_convert(args[0], v, source, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"unhandled configuration type {hint!r} for {name}")


def _check(c: TrainConfig) -> None:
    src = c.source

    def fail(name: str, message: str):
        raise ConfigError(f"{src}: {name} {message}")

    def choice(name: str, value, options):
        if value not in options:
            fail(name, f"must be one of {', '.join(map(str, options))}; got {value!r}")

    def positive(name: str, value, *, zero: bool = False):
        if value is not None and (value < 0 or (value == 0 and not zero)):
            fail(name, f"must be {'>= 0' if zero else '> 0'}, got {value!r}")

    choice("task", c.task, TASKS)
    m = c.model
    if not m.pretrained:
        fail("model.pretrained", "must be 'default' or a local diffusers pipeline folder")
    for item in m.train:
        choice("model.train", item, TRAINABLE)
    if c.task == "text_to_video" and not m.train:
        fail("model.train", f"must list at least one of {', '.join(TRAINABLE)}")
    if c.task == "autoencoder" and "motion_adapter" in m.train:
        fail("model.train", "lists motion_adapter, which conditions the transformer; the autoencoder task trains "
             "the VAE alone")
    if len(set(m.train)) != len(m.train):
        fail("model.train", f"lists a component twice: {m.train}")
    if m.lora is not None:
        positive("model.lora.rank", m.lora.rank)
        positive("model.lora.alpha", m.lora.alpha)
        if not 0 <= m.lora.dropout < 1:
            fail("model.lora.dropout", f"must be in [0, 1), got {m.lora.dropout}")
        if not m.lora.target_modules:
            fail("model.lora.target_modules", "must name at least one module")
        if [x for x in m.train if x != "motion_adapter"] != ["transformer"]:
            fail("model.train", f"must be [transformer] with model.lora (LoRA adapts the transformer), got {m.train}")
        if m.from_scratch:
            fail("model.lora", "adapts pretrained weights; it cannot be combined with model.from_scratch")
    positive("model.max_sequence_length", m.max_sequence_length)
    if c.task == "autoencoder" and m.lora is not None:
        fail("model.lora", "is for the transformer; the autoencoder task trains the whole VAE")

    choice("attention.mode", c.attention.mode, ("vmoba", "dense"))
    if c.attention.vmoba:
        try:
            VMoBAConfig.from_dict(c.attention.vmoba)
        except (TypeError, ValueError) as exc:
            fail("attention.vmoba", f"is not a valid VMoBAConfig: {exc}")
        if c.attention.vmoba.get("dense_steps"):
            fail("attention.vmoba.dense_steps", "counts denoising steps of a pipeline call; training has none: "
                 "leave it 0 (use it at inference)")

    d = c.data
    if not d.root:
        fail("data.root", "is required: a folder of videos with captions.jsonl or captions.csv")
    if d.num_frames < 1 or (d.num_frames - 1) % 4:
        fail("data.num_frames", f"must be 4k+1 (1, 5, 9, 13, 17, ...) for Wan-family VAEs, got {d.num_frames}")
    for name in ("height", "width"):
        value = getattr(d, name)
        if value < 16 or value % 16:
            fail(f"data.{name}", f"must be a positive multiple of 16, got {value}")
    choice("data.clip_start", d.clip_start, ("first", "random"))
    if not 0 <= d.caption_dropout < 1:
        fail("data.caption_dropout", f"must be in [0, 1), got {d.caption_dropout}")
    if d.cache_dir and c.task == "autoencoder":
        fail("data.cache_dir", "holds VAE latents; the autoencoder task trains the VAE itself: remove it")
    if d.cache_dir and d.clip_start == "random":
        fail("data.cache_dir", "stores one latent per clip; it cannot be combined with data.clip_start: random")

    f = c.flow
    positive("flow.shift", f.shift)
    choice("flow.timestep_sampling", f.timestep_sampling, ("uniform", "logit_normal"))
    positive("flow.logit_std", f.logit_std)
    choice("flow.posterior", f.posterior, ("sample", "mean"))
    positive("flow.foreground_weight", f.foreground_weight, zero=True)
    positive("flow.input_blur", f.input_blur, zero=True)
    a = c.autoencoder
    choice("autoencoder.reconstruction", a.reconstruction, ("l1", "mse"))
    choice("autoencoder.mid_attention", a.mid_attention, ("train", "identity"))
    positive("autoencoder.kl_weight", a.kl_weight, zero=True)
    positive("autoencoder.edge_weight", a.edge_weight, zero=True)
    positive("autoencoder.statistics_clips", a.statistics_clips)

    ma = c.motion_adapter
    choice("motion_adapter.pooling", ma.pooling, ("global", "tokens"))
    choice("motion_adapter.inject", ma.inject, ("patch", "text"))
    if ma.inject == "text" and ma.pooling != "global":
        fail("motion_adapter.inject", "text adds one vector per clip and needs motion_adapter.pooling: global")
    positive("motion_adapter.hidden", ma.hidden)
    choice("motion_adapter.energy", ma.energy, ("default", "flow"))
    for i, word in enumerate(ma.drop_words):
        if not word.strip() or len(word.split()) != 1:
            fail(f"motion_adapter.drop_words[{i}]", f"must be one word, got {word!r}")
    choice("motion_adapter.target", ma.target, ("data", "caption"))
    if ma.target == "caption" and "motion_adapter" in m.train:
        if m.train != ["motion_adapter"]:
            fail("motion_adapter.target", f"caption distils the frozen model: model.train must be [motion_adapter], "
                 f"got {m.train}")
        if not ma.drop_words:
            fail("motion_adapter.drop_words", "is empty: with target caption the teacher would read the same caption "
                 "as the adapter")
        if d.caption_dropout:
            fail("data.caption_dropout", f"must be 0 with motion_adapter.target: caption (a dropped caption leaves "
                 f"the teacher nothing the reference could say), got {d.caption_dropout}")
        if f.foreground_weight:
            fail("flow.foreground_weight", "weighs the error against the data; motion_adapter.target: caption "
                 "matches the frozen model's prediction instead: remove it")
        if f.input_blur:
            fail("flow.input_blur", "changes the flow-matching target; motion_adapter.target: caption matches the "
                 "frozen model's prediction instead: remove it")
    if not 0 <= ma.synthetic_references <= 1:
        fail("motion_adapter.synthetic_references", f"must be in [0, 1], got {ma.synthetic_references}")
    speed = ma.synthetic_speed
    if (not isinstance(speed, list) or len(speed) != 2 or not all(isinstance(v, (int, float)) for v in speed)
            or not 0 < speed[0] <= speed[1]):
        fail("motion_adapter.synthetic_speed", f"must be [low, high] pixels per frame with 0 < low <= high, got "
             f"{speed!r}")
    positive("motion_adapter.synthetic_per_direction", ma.synthetic_per_direction)
    if not 0 <= ma.keep_words < 1:
        fail("motion_adapter.keep_words", f"must be in [0, 1), got {ma.keep_words}")
    if ma.keep_words and "motion_adapter" in m.train:
        if "transformer" not in m.train:
            fail("motion_adapter.keep_words", f"trains the transformer on whole captions: model.train must list "
                 f"transformer too, got {m.train}")
        if not ma.drop_words:
            fail("motion_adapter.drop_words", "is empty: keep_words then keeps what every caption has anyway")
    choice("motion_adapter.start", ma.start, ("new", "pretrained"))
    if "motion_adapter" in m.train:
        if c.validation.every or c.validation.prompts:
            fail("validation", "samples prompts without a motion reference, which the motion adapter needs: leave "
                 "validation.every and validation.prompts empty and measure the export with "
                 "benchmarks/motion_reference_check.py")
        if c.training.sequence_parallel > 1:
            fail("training.sequence_parallel", "is not supported with model.train: [motion_adapter] yet: train the "
                 "adapter with data parallelism (sequence_parallel: 1)")

    t = c.training
    if not t.output_dir:
        fail("training.output_dir", "is required: the folder for checkpoints, samples and the trained model")
    positive("training.max_steps", t.max_steps)
    for name in ("batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
        positive(f"training.{name}", getattr(t, name))
    positive("training.learning_rate", t.learning_rate)
    choice("training.lr_schedule", t.lr_schedule, ("constant", "cosine"))
    positive("training.lr_warmup_steps", t.lr_warmup_steps, zero=True)
    positive("training.lr_schedule_steps", t.lr_schedule_steps)
    if t.lr_schedule_steps is not None and t.lr_schedule_steps < t.lr_warmup_steps:
        fail("training.lr_schedule_steps", f"must be at least lr_warmup_steps ({t.lr_warmup_steps}), got "
             f"{t.lr_schedule_steps}")
    if not 0 <= t.min_lr_ratio <= 1:
        fail("training.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    positive("training.weight_decay", t.weight_decay, zero=True)
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(t, name) < 1:
            fail(f"training.{name}", f"must be in [0, 1), got {getattr(t, name)}")
    positive("training.adam_epsilon", t.adam_epsilon)
    positive("training.max_grad_norm", t.max_grad_norm)
    choice("training.mixed_precision", t.mixed_precision, ("auto", "no", "bf16", "fp16"))
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        fail("training.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    positive("training.keep_checkpoints", t.keep_checkpoints)
    positive("training.max_minutes", t.max_minutes)
    positive("training.threads", t.threads)
    positive("training.sequence_parallel", t.sequence_parallel)
    choice("training.sequence_parallel_layout", t.sequence_parallel_layout, LAYOUTS)
    if t.sequence_parallel > 1 and c.task != "text_to_video":
        fail("training.sequence_parallel", f"splits the transformer's sequence; task {c.task!r} has none: remove it")
    if t.sequence_parallel_layout == "unified" and t.sequence_parallel % 2:
        fail("training.sequence_parallel", f"must be even with sequence_parallel_layout: unified (rings of Ulysses "
             f"pairs), got {t.sequence_parallel}")

    v = c.validation
    positive("validation.every", v.every, zero=True)
    for name in ("num_inference_steps", "fps", "clips"):
        positive(f"validation.{name}", getattr(v, name))
    if v.every and c.task == "text_to_video" and not v.prompts:
        fail("validation.prompts", "must list at least one prompt when validation.every is set")
    for i, prompt in enumerate(v.prompts):
        if not prompt.strip():
            fail(f"validation.prompts[{i}]", "is empty")


def vmoba_config(config: TrainConfig):
    """The VMoBAConfig for training: the model's own (`base_vmoba_config`), with the YAML's fields on top."""
    try:
        base = base_vmoba_config(config.model.pretrained)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: model.pretrained: {exc}") from None
    return base.replace(**config.attention.vmoba) if config.attention.vmoba else base
