"""`enable` / `disable`: put VMoBA into every transformer of a pipeline (or one model) and take it out again."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from diffusers.utils import is_xformers_available

from ..config import VMoBAConfig, as_config
from .base import CallContext
from .families import Family, bound_arguments, family_of_model, supported_models
from .processor import VMoBAProcessor

_STATE = "_vmoba_state"

# Calls that would silently replace the VMoBA processors; they raise instead, with what to do.
_PIPELINE_GUARDS = ("enable_attention_slicing", "set_attention_slice")
_MODEL_GUARDS = ("set_attention_slice", "set_default_attn_processor")

TimestepSource = Callable[[], Any]


def _transformers(pipe_or_model) -> list[tuple[str, torch.nn.Module, Family]]:
    if isinstance(pipe_or_model, torch.nn.Module):
        family = family_of_model(pipe_or_model)
        if family is None:
            raise ValueError(f"{type(pipe_or_model).__name__} is not a supported video transformer "
                             f"(supported: {supported_models()})")
        return [("transformer", pipe_or_model, family)]
    components = getattr(pipe_or_model, "components", None)
    if not isinstance(components, Mapping):
        raise TypeError(f"expected a diffusers pipeline or transformer model, got {type(pipe_or_model).__name__}")
    found = [(n, m, family_of_model(m)) for n, m in components.items() if isinstance(m, torch.nn.Module)]
    found = [(n, m, f) for n, m, f in found if f is not None]
    if not found:
        names = {n: type(m).__name__ for n, m in components.items() if isinstance(m, torch.nn.Module)}
        raise ValueError(f"no supported video transformer among the pipeline's components {names} "
                         f"(supported: {supported_models()})")
    return found


def _timestep_of(inputs: dict[str, Any]) -> float | None:
    """The denoising timestep of a transformer call from its ``timestep`` input: the largest entry, since
    conditioning frames held clean (Wan 2.2 image-to-video with ``expand_timesteps``) carry timestep 0."""
    t = inputs.get("timestep")
    if t is None:
        return None
    return float(t.max()) if isinstance(t, torch.Tensor) else float(t)


def _pipeline_timestep(pipe) -> TimestepSource | None:
    """The pipeline's own current timestep (set by its denoising loop), as diffusers' hooks follow it."""
    if isinstance(pipe, torch.nn.Module) or not hasattr(type(pipe), "current_timestep"):
        return None

    def current() -> Any:
        try:
            return pipe.current_timestep
        except AttributeError:  # set by the first pipeline call; the transformer may be called directly before
            return None

    return current


def _require_xformers() -> None:
    if not is_xformers_available():
        raise ModuleNotFoundError(
            "enable_xformers_memory_efficient_attention() needs the xformers package (pip install xformers); "
            "nothing was changed: VMoBA stays on, and the dense layers keep their attention backend")


def _xformers_router(owner, models: list[torch.nn.Module]) -> dict[str, Callable]:
    """Replacements for ``owner``'s xformers switches: the transformers' dense paths go through diffusers'
    xformers attention backend (the VMoBA processors pass their backend on to them) while VMoBA keeps the
    sparse ones; any other component (a VAE) gets diffusers' own xformers processors."""
    is_pipeline = not isinstance(owner, torch.nn.Module)
    others = []
    if is_pipeline:
        others = [m for m in owner.components.values()
                  if isinstance(m, torch.nn.Module) and not any(m is x for x in models)]

    previous = []  # diffusers makes the backend it last set active for the whole process: put it back after

    def set_xformers(valid: bool, attention_op: Callable | None = None) -> None:
        if valid:
            _require_xformers()
            if attention_op is not None:
                raise ValueError("attention_op cannot be used while VMoBA is enabled: the dense layers use "
                                 "diffusers' xformers attention backend, which chooses its own operator")
            if not previous:
                previous.append(_AttentionBackendRegistry.get_active_backend()[0])
        elif previous:
            _AttentionBackendRegistry.set_active_backend(previous.pop())
        for model in models:
            if valid:
                model.set_attention_backend("xformers")
            else:
                model.reset_attention_backend()
        for component in others:
            for module in component.modules():
                if hasattr(module, "set_use_memory_efficient_attention_xformers"):
                    module.set_use_memory_efficient_attention_xformers(valid, attention_op)

    methods = {"set_use_memory_efficient_attention_xformers": set_xformers}
    if is_pipeline:
        methods["enable_xformers_memory_efficient_attention"] = lambda attention_op=None: set_xformers(True, attention_op)
        methods["disable_xformers_memory_efficient_attention"] = lambda: set_xformers(False)
    return methods


def _refuse(owner: str, method: str) -> Callable:
    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{owner}.{method}() would replace the VMoBA attention processors and silently turn VMoBA off. "
            f"Call vmoba.disable(...) first if that is what you want. To use another attention backend "
            f"(flash, xformers, sage, ...) for the dense layers while keeping VMoBA, call "
            f"pipe.enable_xformers_memory_efficient_attention() or transformer.set_attention_backend(name) "
            f"instead; attention slicing brings nothing on top of VMoBA's block-sparse kernels.")

    return refuse


def enable(
    pipe_or_model,
    config: VMoBAConfig | Mapping[str, Any] | None = None,
    processor: Callable[..., VMoBAProcessor] = VMoBAProcessor,
    *,
    timestep_source: TimestepSource | None = None,
) -> dict[str, VMoBAProcessor]:
    """Use VMoBA in the video self-attention of every supported transformer of a pipeline (or of one model).

    A forward pre-hook reads the latent grid from each call's inputs and follows the denoising step (for
    ``config.dense_steps`` and captured selections; the two classifier-free-guidance calls of a step count
    once). Cross-attention and text-only attention keep their processors. Calling it again replaces the
    earlier configuration. ``pipe.enable_xformers_memory_efficient_attention()`` afterwards runs the dense
    paths on xformers and keeps VMoBA on the sparse ones.

    Args:
        pipe_or_model: a diffusers pipeline (every transformer among ``pipe.components`` is patched, e.g.
            ``transformer`` and ``transformer_2`` of Wan 2.2) or a transformer model.
        config: a `VMoBAConfig` or a dict of its fields.
        processor: the processor class (or factory called as ``processor(config, family=...)``).
        timestep_source: returns the current denoising timestep (as diffusers' hooks take
            ``lambda: pipe.current_timestep``). Default: the pipeline's ``current_timestep`` during its
            denoising loop, else the largest entry of the transformer's ``timestep`` input.

    Returns:
        The processor of each patched component, by component name; ``last_stats`` of each holds the
        per-layer statistics of the last call.
    """
    config = as_config(config)
    if timestep_source is not None and not callable(timestep_source):
        raise TypeError(f"timestep_source must be a callable returning the current timestep, got {timestep_source!r}")
    models = _transformers(pipe_or_model)
    disable(pipe_or_model)
    context = CallContext()  # one per pipeline: Wan 2.2's two experts share the step count
    source = timestep_source or _pipeline_timestep(pipe_or_model)
    processors = {}
    for name, model, family in models:
        proc = processor(config, family=family.name)
        proc.context = context
        originals, patched = {}, []
        for module_name, module in model.named_modules():
            if hasattr(module, "set_processor") and family.is_video_attention(module_name, module):
                originals[module_name] = module.processor
                module.set_processor(proc)
                patched.append(module)
        if not originals:
            raise ValueError(f"found no video self-attention layers in {type(model).__name__}")

        def pre_hook(model, args, kwargs, family=family, proc=proc, patched=patched):
            inputs = bound_arguments(model, args, kwargs)
            context.grid = family.grid_from_inputs(model, inputs)
            t = source() if source is not None else None
            context.observe_timestep(float(t) if t is not None else _timestep_of(inputs))
            if any(m.processor is not proc for m in patched):  # the patched modules only: no walk per call
                warnings.warn(f"vmoba.enable() is active on {type(model).__name__} but some of its VMoBA processors "
                              f"were replaced since; call vmoba.disable() before setting other processors",
                              stacklevel=2)

        hook = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        replaced = {m: _refuse(type(model).__name__, m) for m in _MODEL_GUARDS if hasattr(model, m)}
        replaced.update(_xformers_router(model, [model]))
        for method, fn in replaced.items():
            setattr(model, method, fn)
        setattr(model, _STATE, dict(originals=originals, hook=hook, guards=list(replaced)))
        processors[name] = proc
    if not isinstance(pipe_or_model, torch.nn.Module):
        replaced = {m: _refuse("pipe", m) for m in _PIPELINE_GUARDS if hasattr(pipe_or_model, m)}
        replaced.update(_xformers_router(pipe_or_model, [m for _, m, _ in models]))
        for method, fn in replaced.items():
            object.__setattr__(pipe_or_model, method, fn)
        object.__setattr__(pipe_or_model, _STATE, dict(guards=list(replaced)))
    return processors


def disable(pipe_or_model) -> None:
    """Undo `enable`: original processors back, hooks and guards removed. A no-op where VMoBA is not on."""
    for _, model, _ in _transformers(pipe_or_model):
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
