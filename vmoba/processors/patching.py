"""`enable` / `disable`: put VMoBA into every transformer of a pipeline (or one model) and take it out again."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch

from ..config import VMoBAConfig, as_config
from .grid import grid_from_inputs, model_family, supported_models, timestep_of
from .base import CallContext
from .processor import VMoBAProcessor

_STATE = "_vmoba_state"

# Attention modules VMoBA takes over, per family: their qualified names inside the transformer.
_VIDEO_ATTENTION = {
    "wan": lambda name: name.endswith("attn1"),
    "cogvideox": lambda name: name.endswith("attn1"),
    "hunyuan": lambda name: name.startswith(("transformer_blocks.", "single_transformer_blocks.")) and name.endswith(".attn"),
    "ltx": lambda name: name.endswith("attn1"),
}

# Calls that would silently replace the VMoBA processors; they raise instead, with what to do.
_PIPELINE_GUARDS = ("enable_attention_slicing", "set_attention_slice", "enable_xformers_memory_efficient_attention",
                    "set_use_memory_efficient_attention_xformers")
_MODEL_GUARDS = ("set_attention_slice", "set_use_memory_efficient_attention_xformers", "set_default_attn_processor")


def _transformers(pipe_or_model) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(pipe_or_model, torch.nn.Module):
        if model_family(pipe_or_model) is None:
            raise ValueError(f"{type(pipe_or_model).__name__} is not a supported video transformer "
                             f"(supported: {supported_models()})")
        return [("transformer", pipe_or_model)]
    components = getattr(pipe_or_model, "components", None)
    if not isinstance(components, Mapping):
        raise TypeError(f"expected a diffusers pipeline or transformer model, got {type(pipe_or_model).__name__}")
    found = [(n, m) for n, m in components.items() if isinstance(m, torch.nn.Module) and model_family(m)]
    if not found:
        names = {n: type(m).__name__ for n, m in components.items() if isinstance(m, torch.nn.Module)}
        raise ValueError(f"no supported video transformer among the pipeline's components {names} "
                         f"(supported: {supported_models()})")
    return found


def _refuse(owner: str, method: str) -> Callable:
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{owner}.{method}() would replace the VMoBA attention processors and silently turn VMoBA off. "
            f"Call vmoba.disable(...) first if that is what you want. To use another attention backend "
            f"(flash, xformers, sage, ...) for the dense layers while keeping VMoBA, call "
            f"transformer.set_attention_backend(name) instead; attention slicing brings nothing on top of "
            f"VMoBA's block-sparse kernels.")

    return refuse


def enable(
    pipe_or_model,
    config: VMoBAConfig | Mapping[str, Any] | None = None,
    processor: Callable[..., VMoBAProcessor] = VMoBAProcessor,
) -> dict[str, VMoBAProcessor]:
    """Use VMoBA in the video self-attention of every supported transformer of a pipeline (or of one model).

    A forward pre-hook reads the latent grid from each call's inputs and counts denoising steps (for
    ``config.dense_steps``; the two classifier-free-guidance calls of a step count once). Cross-attention and
    text-only attention keep their processors. Calling it again replaces the earlier configuration.

    Args:
        pipe_or_model: a diffusers pipeline (every transformer among ``pipe.components`` is patched, e.g.
            ``transformer`` and ``transformer_2`` of Wan 2.2) or a transformer model.
        config: a `VMoBAConfig` or a dict of its fields.
        processor: the processor class (or factory called as ``processor(config, family=...)``).

    Returns:
        The processor of each patched component, by component name; ``last_stats`` of each holds the
        per-layer statistics of the last call.
    """
    config = as_config(config)
    models = _transformers(pipe_or_model)
    disable(pipe_or_model)
    context = CallContext()  # one per pipeline: Wan 2.2's two experts share the step count
    processors = {}
    for name, model in models:
        family = model_family(model)
        proc = processor(config, family=family)
        proc.context = context
        originals = {}
        for module_name, module in model.named_modules():
            if hasattr(module, "set_processor") and _VIDEO_ATTENTION[family](module_name):
                originals[module_name] = module.processor
                module.set_processor(proc)
        if not originals:
            raise ValueError(f"found no video self-attention layers in {type(model).__name__}")

        def pre_hook(model, args, kwargs, family=family, proc=proc):
            context.grid = grid_from_inputs(model, family, args, kwargs)
            context.observe_timestep(timestep_of(model, args, kwargs))
            if any(m.processor is not proc for n, m in model.named_modules() if n in originals):
                warnings.warn(f"vmoba.enable() is active on {type(model).__name__} but some of its VMoBA processors "
                              f"were replaced since; call vmoba.disable() before setting other processors",
                              stacklevel=2)

        hook = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        guards = [m for m in _MODEL_GUARDS if hasattr(model, m)]
        for method in guards:
            setattr(model, method, _refuse(type(model).__name__, method))
        setattr(model, _STATE, dict(originals=originals, hook=hook, guards=guards))
        processors[name] = proc
    if not isinstance(pipe_or_model, torch.nn.Module):
        guards = [m for m in _PIPELINE_GUARDS if hasattr(pipe_or_model, m)]
        for method in guards:
            object.__setattr__(pipe_or_model, method, _refuse("pipe", method))
        object.__setattr__(pipe_or_model, _STATE, dict(guards=guards))
    return processors


def disable(pipe_or_model) -> None:
    """Undo `enable`: original processors back, hooks and guards removed. A no-op where VMoBA is not on."""
    for _, model in _transformers(pipe_or_model):
        state = getattr(model, _STATE, None)
        if state is None:
            continue
        modules = dict(model.named_modules())
        for module_name, original in state["originals"].items():
            modules[module_name].set_processor(original)
        state["hook"].remove()
        for method in state["guards"]:
            delattr(model, method)
        delattr(model, _STATE)
    if not isinstance(pipe_or_model, torch.nn.Module):
        state = pipe_or_model.__dict__.get(_STATE)
        if state is not None:
            for method in state["guards"]:
                object.__delattr__(pipe_or_model, method)
            object.__delattr__(pipe_or_model, _STATE)

