"""The training loop: accelerate for processes and precision, checkpoints that resume exactly, logs, samples.

Layout of ``training.output_dir``::

    checkpoints/step-0000500/   accelerate state (trained weights, optimizer, EMA, step) of step 500
    samples/step-0000500/       validation videos
    log.jsonl                   one JSON object per logged step (appended across resumed runs)
    config.json                 the configuration of the run
    .vmoba-training-run.json    marks the folder as a training run's: the files above are replaced or appended to
                                only beside it, never in a folder holding someone else's config.json or log
    final/                      the trained model (pipeline folder, LoRA weights or VAE folder)

A step is a pure function of (seed, step, process): the batch indices come from `BatchOrder`, every random
draw from a generator seeded by the triple. So a run resumed from ``step-N`` trains on the same batches in
the same order, with the same noise, as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from tqdm.auto import tqdm

from ..checks import atomic_directory, atomic_output
from ..parallel.training import data_parallel_rank, enable_sequence_parallel, loss_scale
from ..pipelines.default import MOTION_ADAPTER_FILE
from ..pipelines.loading import motion_adapter_file
from ..video import to_uint8, write_video
from .cache import empty_prompt_embeds, prepare_cache
from .config import ConfigError, TrainConfig
from .data import BatchOrder, CachedLatentDataset, DataError, VideoCaptionDataset, collate, drop_words, read_clips
from .models import (build_motion_adapter, export_pipeline, load_pipeline, load_vae, max_sequence_length,
                     measure_latent_statistics, prepare_transformer, save_pretrained)
from .objectives import AutoencoderLoss, FlowMatchingLoss
from .references import SyntheticReferences, caption_direction
from .shapes import DIRECTIONS
from .state import (CHECKPOINT, EMA, RUN_MARKER, TrainingState, checkpoint_name, foreign_run_files, list_checkpoints,
                    mark_run, save_checkpoint, saved_identity)

logger = logging.getLogger("vmoba")


def step_seed(seed: int, micro_step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, micro_step, rank]).generate_state(1, np.uint64)[0] >> 1)


def learning_rate(t, step: int) -> float:
    if step < t.lr_warmup_steps:
        return t.learning_rate * (step + 1) / t.lr_warmup_steps
    if t.lr_schedule == "constant":
        return t.learning_rate
    horizon = t.lr_schedule_steps or t.max_steps
    progress = (step - t.lr_warmup_steps) / max(1, horizon - t.lr_warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return t.learning_rate * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cosine)


def _resume_target(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses anything that would overwrite."""
    t = config.training
    foreign = foreign_run_files(out)
    if foreign:
        raise ConfigError(f"{config.source}: training.output_dir {out} holds {', '.join(foreign)} that vmoba training did "
                          f"not write (no {RUN_MARKER}); training would overwrite or append to them: choose another "
                          f"output_dir")
    checkpoints = list_checkpoints(out / "checkpoints")
    if (out / "final").exists():
        raise ConfigError(f"{config.source}: training.output_dir {out} holds a finished run (final/); choose another "
                          f"output_dir")
    if t.resume_from is None:
        if checkpoints:
            raise ConfigError(f"{config.source}: training.output_dir {out} already holds checkpoints (latest "
                              f"{checkpoints[-1][1].name}); set training.resume_from: latest to continue that run, "
                              f"or choose another output_dir")
        return None
    if t.resume_from == "latest":
        if not checkpoints:
            logger.warning("training.resume_from: latest, but %s has no checkpoint yet: starting from step 0", out)
            return None
        return checkpoints[-1][1]
    path = Path(t.resume_from)
    match = CHECKPOINT.match(path.name)
    if not path.is_dir() or match is None:
        raise ConfigError(f"{config.source}: training.resume_from {path} is not a checkpoint folder (step-N)")
    later = [p.name for s, p in checkpoints if s > int(match.group(1))]
    if later and path.resolve().parent == (out / "checkpoints").resolve():
        raise ConfigError(f"{config.source}: training.resume_from {path.name} is older than {', '.join(later)} in "
                          f"the same run; resuming would overwrite them: move them away first or resume from latest")
    return path


def _identity(config: TrainConfig, world_size: int, dataset_size: int) -> dict:
    t = config.training
    return {"task": config.task, "world_size": world_size, "sequence_parallel": t.sequence_parallel,
            "sequence_parallel_layout": t.sequence_parallel_layout, "batch_size": t.batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps, "seed": t.seed,
            "dataset_size": dataset_size, "data": config.fingerprint("data"),
            "model": config.fingerprint("model", "attention",
                                        *(["motion_adapter"] if "motion_adapter" in config.model.train else []))}


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run(config: TrainConfig) -> Path | None:
    """Train as ``config`` says. Returns the folder of the trained model, or None when the run stopped at
    ``training.max_minutes`` with a checkpoint to resume from."""
    t = config.training
    out = Path(t.output_dir)
    precision = t.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    # training.threads is applied by the command (vmoba train): a thread count is the whole process's setting
    accelerator = Accelerator(mixed_precision=precision)
    main = accelerator.is_main_process
    if t.sequence_parallel not in (1, accelerator.num_processes):
        raise ConfigError(f"{config.source}: training.sequence_parallel {t.sequence_parallel} must be 1 or the number "
                          f"of processes ({accelerator.num_processes}): every process joins the one group that splits "
                          f"each clip")
    # the processes of a sequence-parallel group train on the same clips with the same noise
    data_rank, data_world = data_parallel_rank(accelerator.process_index, accelerator.num_processes,
                                               t.sequence_parallel)
    resume = _resume_target(config, out)
    clips = _training_clips(config)

    setup = _prepare(config, accelerator, clips, precision)
    task, dataset, trainable, ema = setup["task"], setup["dataset"], setup["trainable"], setup["ema"]
    model, optimizer, state = setup["model"], setup["optimizer"], setup["state"]
    if resume is not None:
        _load_checkpoint(config, accelerator, state, resume, "resume")
        if main:
            print(f"resumed from {resume} at step {state.step}", flush=True)

    order = BatchOrder(len(dataset), t.batch_size, data_world, t.seed)
    scale = loss_scale(t.sequence_parallel)  # the group's partial gradients add up; data parallelism averages
    accum = t.gradient_accumulation_steps
    processors = task["processors"]
    log_path = out / "log.jsonl"
    if main:
        mark_run(out, state.identity)
        with atomic_output(out / "config.json") as partial:
            partial.write_text(json.dumps(config.to_dict(), indent=1))
    start_time = time.time()
    window: list[torch.Tensor] = []
    window_start = time.time()
    stopped_early = False
    last_saved = state.step
    bar = tqdm(total=t.max_steps, initial=state.step, desc=config.task, unit="step", disable=not main,
               dynamic_ncols=True)
    while state.step < t.max_steps:
        step = state.step
        lr = learning_rate(t, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            micro_step = step * accum + micro
            seed = step_seed(t.seed, micro_step, data_rank)
            generator = torch.Generator().manual_seed(seed)
            rng = np.random.default_rng(seed)
            items = [dataset.sample(i, rng) for i in order.indices(micro_step, data_rank)]
            batch = _to_device(collate(items), accelerator.device)
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                loss = model(batch, generator)
                accelerator.backward(loss * scale / accum)
            window.append(loss.detach().float())
        if t.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(trainable)
        state.step += 1
        bar.update(1)

        if state.step % t.log_every == 0 or state.step == t.max_steps:
            mean_loss = accelerator.reduce(torch.stack(window).mean().to(accelerator.device), "mean").item()
            densities = [d for p in processors.values() for d in p.densities]
            for p in processors.values():
                p.reset_stats()
            entry = {"step": state.step, "loss": round(mean_loss, 6), "lr": lr,
                     "steps_per_s": round(len(window) / accum / max(time.time() - window_start, 1e-9), 4),
                     "minutes": round((time.time() - start_time) / 60, 3)}
            if densities:
                entry["vmoba_density"] = round(sum(densities) / len(densities), 4)
            window, window_start = [], time.time()
            if main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(entry) + "\n")
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.write(json.dumps(entry))
        if state.step % t.checkpoint_every == 0 and state.step < t.max_steps:
            save_checkpoint(accelerator, out / "checkpoints", state.step, t.keep_checkpoints)
            last_saved = state.step
        if config.validation.every and state.step % config.validation.every == 0:
            _validate(config, task, accelerator, ema, trainable, out / "samples" / checkpoint_name(state.step))
        if t.max_minutes is not None and state.step < t.max_steps:
            over = torch.tensor(float(time.time() - start_time > 60 * t.max_minutes), device=accelerator.device)
            if accelerator.reduce(over, "max").item() > 0:  # every process stops at the same step
                stopped_early = True
                break
    bar.close()

    if stopped_early:
        if last_saved != state.step:
            save_checkpoint(accelerator, out / "checkpoints", state.step, t.keep_checkpoints)
        if main:
            print(f"stopped after {t.max_minutes} minutes at step {state.step} of {t.max_steps}; run again with "
                  f"training.resume_from: latest to continue", flush=True)
        accelerator.end_training()
        return None

    accelerator.wait_for_everyone()
    if ema is not None:
        ema.copy_to(trainable)
    digests = _check_replicas(accelerator, trainable)
    final = out / "final"
    if config.validation.prompts or config.task == "autoencoder":
        _validate(config, task, accelerator, None, trainable, out / "samples" / "final")
    if main:
        _write_model(config, task, final, {"steps": state.step, "processes": accelerator.num_processes,
                                           "weights_sha256_per_process": digests,
                                           "minutes_this_run": round((time.time() - start_time) / 60, 2)})
        print(f"saved {final} after {state.step} steps", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _check_replicas(accelerator, trainable) -> list[str]:
    """SHA-256 of the trained weights on every process; they must agree (data parallelism keeps replicas equal)."""
    h = hashlib.sha256()
    for name, p in trainable:
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather_object([h.hexdigest()])
    if len(set(digests)) != 1:
        raise RuntimeError(f"the processes ended with different weights: {digests}")
    return digests


def _training_clips(config: TrainConfig):
    """The data's clips, never counting the run's own outputs or its latent cache as data."""
    return read_clips(config.data.root, config.data.captions,
                      exclude=(config.training.output_dir, config.data.cache_dir))


def _prepare(config: TrainConfig, accelerator, clips, precision: str, preload: bool = True) -> dict:
    """The task's model and data, the optimizer, the EMA and the step counter, prepared by accelerate and
    registered for checkpointing in the order every checkpoint of a run holds them. ``preload=False``: the
    videos stay on disk whatever ``data.preload`` says (an export reads none of them)."""
    t = config.training
    weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    task = _build_task(config, accelerator, clips, weight_dtype, preload)
    module, dataset = task["module"], task["dataset"]
    module.train()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(f"{config.source}: nothing to train (model.train lists no component with parameters)")
    optimizer = torch.optim.AdamW([p for _, p in trainable], lr=t.learning_rate, betas=(t.adam_beta1, t.adam_beta2),
                                  eps=t.adam_epsilon, weight_decay=t.weight_decay)
    ema = EMA(trainable, t.ema_decay) if t.ema_decay else None
    model, optimizer = accelerator.prepare(module, optimizer)
    state = TrainingState(_identity(config, accelerator.num_processes, len(dataset)))
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    return {"task": task, "dataset": dataset, "trainable": trainable, "ema": ema, "model": model,
            "optimizer": optimizer, "state": state}


def _load_checkpoint(config: TrainConfig, accelerator, state: TrainingState, checkpoint: Path, purpose: str) -> None:
    """Load ``checkpoint`` into the prepared objects; refuses one written under other settings: for resuming,
    any that changes what the next steps compute; for exporting, the task and the model."""
    try:
        saved = saved_identity(checkpoint)
    except ValueError as exc:
        raise ConfigError(f"{config.source}: cannot {purpose} from {checkpoint}: {exc}") from None
    keys = state.identity if purpose == "resume" else ("task", "model")
    differs = sorted(k for k in keys if saved.get(k) != state.identity[k])
    if differs:
        raise ConfigError(f"{config.source}: cannot {purpose} exactly from {checkpoint}: {', '.join(differs)} changed "
                          f"since that run ({ {k: saved.get(k) for k in differs} } -> "
                          f"{ {k: state.identity[k] for k in differs} }); use the same settings"
                          + (" or a new output_dir" if purpose == "resume" else ""))
    accelerator.load_state(str(checkpoint))


def _write_model(config: TrainConfig, task: dict, folder: Path, report: dict) -> None:
    """The trained model (pipeline, LoRA or VAE folder) and its training.json, written whole or not at all."""
    # the attention config the processors used, so sampling and later fine-tunes need not re-derive it
    used = {"vmoba_config": task["vmoba_config"].to_dict()} if task.get("vmoba_config") is not None else {}
    with atomic_directory(folder) as partial:
        task["export"](partial)
        (partial / "training.json").write_text(json.dumps({"config": config.record(), **report, **used}, indent=1))


def export_checkpoint(config: TrainConfig, out: str | Path, checkpoint: str | Path = "latest") -> Path:
    """Write the model of a run's checkpoint to ``out`` as the run's end would (its EMA weights when it keeps
    an EMA), without training: to sample from, measure, or start another stage from a run that stopped at
    ``training.max_minutes`` or is still going. ``checkpoint``: ``"latest"`` (the newest complete one in
    ``training.output_dir``) or a ``step-N`` folder. ``out`` must not exist. Returns ``out``."""
    out = Path(out)
    run_dir = Path(config.training.output_dir)
    if checkpoint == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        if not found:
            raise ConfigError(f"{config.source}: training.output_dir {run_dir} has no checkpoint to export")
        checkpoint = found[-1][1]
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir() or not CHECKPOINT.match(checkpoint.name):
        raise ConfigError(f"checkpoint {checkpoint} is not a checkpoint folder (step-N)")
    if out.exists():
        raise FileExistsError(f"export folder {out} exists; give a new folder")
    accelerator = Accelerator(mixed_precision="no")
    clips = _training_clips(config)
    setup = _prepare(config, accelerator, clips, "no", preload=False)
    _load_checkpoint(config, accelerator, setup["state"], checkpoint, "export")
    if setup["ema"] is not None:
        setup["ema"].copy_to(setup["trainable"])
    if accelerator.is_main_process:
        _write_model(config, setup["task"], out, {"steps": setup["state"].step, "checkpoint": str(checkpoint)})
        print(f"saved {out} from {checkpoint} (step {setup['state'].step})", flush=True)
    accelerator.wait_for_everyone()
    return out


def _build_task(config: TrainConfig, accelerator, clips, weight_dtype, preload: bool = True) -> dict:
    """Model, loss module, dataset and exporter of the configured task."""
    d, t = config.data, config.training
    preload = preload and d.preload
    device = accelerator.device
    if config.task == "autoencoder":
        vae = load_vae(config).to(device)
        vae.requires_grad_(True)
        if config.autoencoder.mid_attention == "identity":
            _attention_as_identity(vae.encoder.mid_block, vae.decoder.mid_block)
        dataset = VideoCaptionDataset(clips, d.num_frames, d.height, d.width, clip_start=d.clip_start, preload=preload)
        module = AutoencoderLoss(vae, reconstruction=config.autoencoder.reconstruction,
                                 kl_weight=config.autoencoder.kl_weight,
                                 sample_posterior=config.autoencoder.sample_posterior,
                                 edge_weight=config.autoencoder.edge_weight)

        def export(path: Path):
            stats_set = VideoCaptionDataset(clips, d.num_frames, d.height, d.width)
            mean, std = measure_latent_statistics(vae, stats_set, config.autoencoder.statistics_clips, t.batch_size,
                                                  device)
            vae.register_to_config(latents_mean=mean, latents_std=std)
            save_pretrained(vae, path)

        return {"module": module, "dataset": dataset, "export": export, "processors": {}, "vae": vae}

    pipe = load_pipeline(config)
    msl = max_sequence_length(config, pipe)
    adapter = None
    # motion_adapter.target: caption -- the frozen model reading the whole caption is the adapter's teacher;
    # motion_adapter.keep_words -- some clips train on the whole caption
    distill = "motion_adapter" in config.model.train and config.motion_adapter.target == "caption"
    keep_words = config.motion_adapter.keep_words if "motion_adapter" in config.model.train else 0.0
    references = None
    if "motion_adapter" in config.model.train:
        ma = config.motion_adapter
        adapter = build_motion_adapter(config, pipe.transformer).to(device)
        synthetic = ma.synthetic_references > 0
        clips = [dataclasses.replace(c, caption=drop_words(c.caption, ma.drop_words),
                                     teacher_caption=c.caption if distill or keep_words else None,
                                     reference_direction=caption_direction(c.caption) if synthetic else None)
                 for c in clips]
        if synthetic:
            if not any(c.reference_direction for c in clips):
                raise DataError(f"{d.root}: motion_adapter.synthetic_references needs captions that name a "
                                f"direction ({', '.join(DIRECTIONS)}); none does")
            latent = ((d.num_frames - 1) // pipe.vae_scale_factor_temporal + 1,
                      d.height // pipe.vae_scale_factor_spatial, d.width // pipe.vae_scale_factor_spatial)
            grid = tuple(n // p for n, p in zip(latent, pipe.transformer.config.patch_size))
            references = SyntheticReferences.build(
                adapter, grid, share=ma.synthetic_references, frames=d.num_frames, height=d.height, width=d.width,
                speed=tuple(ma.synthetic_speed), per_direction=ma.synthetic_per_direction, seed=t.seed)
    _warn_unknown_words(pipe.tokenizer, clips)
    processors = prepare_transformer(config, pipe)
    train_te = "text_encoder" in config.model.train
    pipe.transformer.to(device)
    if t.sequence_parallel > 1:  # after the attention processors are installed, before accelerator.prepare
        enable_sequence_parallel(pipe.transformer, t.sequence_parallel, t.sequence_parallel_layout)
    # frozen parts run in the mixed-precision dtype; .to(dtype) only when it changes (diffusers warns otherwise)
    for module, dtype in ((pipe.text_encoder, torch.float32 if train_te else weight_dtype), (pipe.vae, weight_dtype)):
        module.to(device) if dtype == module.dtype else module.to(device, dtype)
    empty = None
    if d.cache_dir:
        text = None if train_te else {"encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
                                      "max_sequence_length": msl}
        motion = None if adapter is None else {"adapter": adapter, "patch_size": pipe.transformer.config.patch_size}
        cache = prepare_cache(accelerator, Path(d.cache_dir), clips, pipe.vae, d, text, t.batch_size, motion)
        dataset = CachedLatentDataset(cache, clips, msl)
        if text is not None:
            empty = empty_prompt_embeds(text, device)
    else:
        dataset = VideoCaptionDataset(clips, d.num_frames, d.height, d.width, clip_start=d.clip_start, preload=preload)
    module = FlowMatchingLoss(pipe.transformer, pipe.text_encoder, pipe.vae, pipe.tokenizer, train_text_encoder=train_te,
                              max_sequence_length=msl, caption_dropout=d.caption_dropout, flow=config.flow,
                              empty_embeds=empty, motion_adapter=adapter,
                              distill=distill, keep_words=keep_words, references=references)
    used = next(iter(processors.values())).config if processors else None

    kept_adapter = None if adapter is not None else _untrained_motion_adapter(config)

    def export(path: Path):
        export_pipeline(config, pipe, path, msl)
        if adapter is not None:
            adapter.save_pretrained(path / MOTION_ADAPTER_FILE)
        elif kept_adapter is not None:  # kept as it came, like every other component the run does not train
            shutil.copyfile(kept_adapter, path / MOTION_ADAPTER_FILE)

    return {"module": module, "dataset": dataset, "pipe": pipe, "processors": processors, "msl": msl,
            "vmoba_config": used, "export": export}


def _untrained_motion_adapter(config: TrainConfig) -> Path | None:
    """The motion adapter file of ``model.pretrained`` that a full fine-tune without ``motion_adapter`` in
    ``model.train`` passes on to its output, or None: there is none, the output is LoRA weights, or the
    transformer starts from scratch (the adapter was trained for weights the run does not have)."""
    m = config.model
    if m.lora is not None or (m.from_scratch and "transformer" in m.train):
        return None
    file = motion_adapter_file(None if m.pretrained == "default" else m.pretrained)
    return file if file.is_file() else None


def _attention_as_identity(*blocks) -> None:
    """Zero and freeze the output projection of every attention layer in ``blocks``: each becomes the identity
    (``x + proj(...) = x``) while the saved weights stay a standard AutoencoderKLWan. At the default model's
    width (8 base channels) the randomly initialised single-head mid-block attention averages the image into
    the background colour, and the autoencoder learns nothing about the objects for hundreds of steps; without it
    the same run reconstructs them."""
    for block in blocks:
        for attention in getattr(block, "attentions", []):
            torch.nn.init.zeros_(attention.proj.weight)
            torch.nn.init.zeros_(attention.proj.bias)
            attention.requires_grad_(False)


def _warn_unknown_words(tokenizer, clips) -> None:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    if vocab is None or len(vocab) > 5000:  # only word-level vocabularies can be checked word by word
        return
    unknown = sorted({w for c in clips for w in prompt_clean(c.caption).lower().split() if w not in vocab})
    if unknown:
        logger.warning("caption words outside the tokenizer's vocabulary become <unk>: %s", ", ".join(unknown[:20]))


@torch.no_grad()
def _validate(config: TrainConfig, task: dict, accelerator, ema, trainable, folder: Path) -> None:
    """Validation videos from the main process (EMA weights when EMA is on); the others wait, except under
    sequence parallelism, where every process runs its share of the transformer and the main one writes."""
    v = config.validation
    main = accelerator.is_main_process
    if main or (config.training.sequence_parallel > 1 and config.task != "autoencoder"):
        context = ema.applied(trainable) if ema is not None else contextlib.nullcontext()
        task["module"].eval()
        if "pipe" in task:
            task["pipe"].set_progress_bar_config(disable=True)
        with context, accelerator.autocast():
            if main:
                folder.mkdir(parents=True, exist_ok=True)
            if config.task == "autoencoder":
                vae, dataset = task["vae"], task["dataset"]
                for i in range(min(v.clips, len(dataset))):
                    x = dataset[i]["video"][None].to(accelerator.device, vae.dtype)
                    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
                    pair = torch.cat([x, recon], dim=-1)[0].permute(1, 2, 3, 0).float()
                    with atomic_output(folder / f"reconstruction-{i:02d}.mp4") as partial:
                        write_video(partial, to_uint8((pair + 1) / 2), fps=v.fps, overwrite=True)
            else:
                pipe, d = task["pipe"], config.data
                for i, prompt in enumerate(v.prompts):
                    generator = torch.Generator().manual_seed(v.seed + i)
                    frames = pipe(prompt, height=d.height, width=d.width, num_frames=d.num_frames,
                                  num_inference_steps=v.num_inference_steps, guidance_scale=v.guidance_scale,
                                  generator=generator, max_sequence_length=task["msl"], output_type="np").frames[0]
                    if not main:
                        continue
                    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60]
                    with atomic_output(folder / f"{i:02d}-{slug}.mp4") as partial:
                        write_video(partial, frames, fps=v.fps, overwrite=True)
        task["module"].train()
        for processor in task["processors"].values():  # densities of sampling are not training statistics
            processor.reset_stats()
    accelerator.wait_for_everyone()
