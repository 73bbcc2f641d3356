"""`MotionEnergyAdapter`: condition a Wan-family diffusers transformer on the motion energy of a reference clip.

The adapter adds ``proj(encode(energy))`` to the output of the transformer's ``patch_embedding`` (the video
tokens before the first block). ``proj`` starts at exactly zero, so attaching an untrained adapter leaves
every output bit-identical; training moves it away from zero only as far as the loss asks.

It is a plain ``nn.Module`` that hooks into the transformer rather than wrapping it, so pipelines, attention
processors and checkpoint loading of the transformer are untouched::

    adapter = MotionEnergyAdapter.for_transformer(pipe.transformer)
    adapter.attach(pipe.transformer)          # or: with adapter.attached(pipe.transformer): ...
    adapter.set_reference(reference_frames)   # (T, 3, H, W) or (B, T, 3, H, W) in [0, 1]
    video = pipe(prompt, ...).frames
    adapter.detach()

A trained adapter generates through `conditioning`, which conditions the prompt and leaves classifier-free
guidance's negative branch alone::

    with adapter.conditioning(pipe, reference_frames):
        video = pipe(prompt, ...).frames

Fine-tuning: optimise ``adapter.trainable_parameters()`` (the transformer can stay frozen), call
``set_reference`` with each batch's reference clips before the transformer's forward (or, with frozen
filters, ``set_reference_energy`` with features that `reference_energy` computed once and a cache kept), and
save with ``save_pretrained``. The energy filters are frozen unless ``train_energy=True``.

``pooling="global"`` averages the reference's energy over the whole frame in each time bin before the
encoder: the conditioning then carries how the reference moves (direction and speed, over time) and nothing
of where its objects are or what outline they have, so a reference of one shape can steer a clip of another.
``pooling="tokens"`` (the default) keeps the energy of each token's patch.

``inject="text"`` writes the conditioning into the text embeddings the transformer's cross-attention reads
(the input of ``condition_embedder.text_embedder``) instead of the patch embeddings: one vector per clip, from
the energy averaged over the whole reference in space and time, placed in the prompt's first padding position
(the all-zero rows WanPipeline pads prompts with), which thereby becomes a motion token. A model that learned
directions from words reads them through cross-attention, so a frozen transformer can be steered that way.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import checks
from .clip import as_clip
from .energy import MotionEnergy

POOLING = ("tokens", "global")
INJECT = ("patch", "text")


class MotionEnergyAdapter(nn.Module):
    """Motion-energy conditioning added to a video transformer's patch embeddings.

    Args:
        inner_dim: width of the transformer's patch embeddings (``num_attention_heads * attention_head_dim``).
        energy: the `MotionEnergy` front end; ``None`` builds the default bank. Pass
            ``vmoba.motion.load_flow_model().energy`` to use the filters trained for flow.
        hidden: channels of the small encoder between energy and projection.
        train_energy: also train the energy filters (otherwise they are frozen and their output is cached
            per reference clip and token grid).
        scale: multiplies the conditioning (0 turns it off without detaching).
        pooling: ``"tokens"`` (energy of each token's patch) or ``"global"`` (the whole frame's energy, the
            same for every token of a latent frame: motion without position or shape).
        inject: ``"patch"`` (added to the patch embeddings; ``inner_dim`` is their width) or ``"text"``
            (written into the text embeddings' first padding position; ``inner_dim`` is the transformer's
            ``text_dim``; always global).
        normalize: standardise each clip's log energy over the channels (per time bin and token) before the
            encoder, so that what differs between references, the pattern over directions and speeds, is not
            drowned by what all of them share.
    """

    def __init__(self, inner_dim: int, energy: MotionEnergy | None = None, hidden: int = 128,
                 train_energy: bool = False, scale: float = 1.0, pooling: str = "tokens",
                 inject: str = "patch", normalize: bool = False) -> None:
        super().__init__()
        inner_dim = checks.integer("inner_dim", inner_dim, min=1)
        hidden = checks.integer("hidden", hidden, min=1)
        train_energy = checks.boolean("train_energy", train_energy)
        scale = checks.real("scale", scale)
        self.pooling = checks.choice("pooling", pooling, POOLING)
        self.inject = checks.choice("inject", inject, INJECT)
        self.normalize = checks.boolean("normalize", normalize)
        if self.inject == "text" and self.pooling != "global":
            raise ValueError("inject='text' adds one vector per clip: it needs pooling='global'")
        if energy is not None and not isinstance(energy, MotionEnergy):
            raise TypeError(f"energy must be a MotionEnergy or None, got {type(energy).__name__}")
        self.energy = energy if energy is not None else MotionEnergy()
        self.energy.requires_grad_(train_energy)
        self.train_energy = train_energy
        self.inner_dim = inner_dim
        self.hidden = hidden
        self.scale = float(scale)
        c = self.energy.num_channels
        self.encoder = nn.Sequential(
            nn.Conv3d(c, hidden, 1), nn.SiLU(),
            nn.Conv3d(hidden, hidden, (1, 3, 3), padding=(0, 1, 1)), nn.SiLU(),
        )
        self.proj = nn.Conv3d(hidden, inner_dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self._reference: torch.Tensor | None = None
        self._reference_energy: torch.Tensor | None = None
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._handle: Any = None
        self._bypassed: bool | torch.Tensor = False  # or a (B,) mask: the samples passed unchanged

    @classmethod
    def for_transformer(cls, transformer: nn.Module, **kwargs: Any) -> "MotionEnergyAdapter":
        """An adapter sized for ``transformer`` (the width of its ``patch_embedding``, or of the text embeddings
        with ``inject="text"``)."""
        if kwargs.get("inject", "patch") == "text":
            return cls(_text_embedder(transformer).linear_1.in_features, **kwargs)
        return cls(_patch_embedding(transformer).out_channels, **kwargs)

    def feature_grid(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """The grid of the energy features this adapter reads for the token grid ``(T', H', W')``."""
        if self.inject == "text":
            return (1, 1, 1)
        return (grid[0], 1, 1) if self.pooling == "global" else tuple(grid)

    # ---- reference clip -----------------------------------------------------------------------------------

    def set_reference(self, frames: Any) -> None:
        """The clip whose motion conditions the following forward passes (layouts of `vmoba.motion.clip`)."""
        clip, _ = as_clip(frames, min_frames=self.energy.min_frames, min_size=self.energy.min_size,
                          name="reference frames")
        self._reference = clip
        self._reference_energy = None
        self._cache.clear()

    def set_reference_energy(self, energy: torch.Tensor) -> None:
        """Features that `reference_energy` computed earlier (``(B, C, T', H', W')``, with ``H' = W' = 1`` under
        global pooling), used in place of a reference clip: a training loop with frozen filters computes them
        once per clip instead of once per step."""
        if self.train_energy:
            raise RuntimeError("set_reference_energy skips the energy filters, which this adapter trains "
                               "(train_energy=True): pass the clips to set_reference")
        expected = self.energy.num_channels
        if not isinstance(energy, torch.Tensor) or energy.dim() != 5 or energy.shape[1] != expected:
            shape = tuple(energy.shape) if isinstance(energy, torch.Tensor) else type(energy).__name__
            raise ValueError(f"reference energy must be (B, {expected}, T', H', W'), got {shape}")
        if self.inject == "text" and energy.shape[2:] != (1, 1, 1):
            raise ValueError(f"a text-injecting adapter takes energy of shape (B, {expected}, 1, 1, 1), got "
                             f"{tuple(energy.shape)}")
        if self.pooling == "global" and energy.shape[3:] != (1, 1):
            raise ValueError(f"a globally pooled adapter takes energy of shape (B, {expected}, T', 1, 1), got "
                             f"{tuple(energy.shape)}")
        self._reference, self._reference_energy = None, energy
        self._cache.clear()

    def clear_reference(self) -> None:
        self._reference = None
        self._reference_energy = None
        self._cache.clear()

    def reference_energy(self, frames: Any, grid: tuple[int, int, int]) -> torch.Tensor:
        """The features a reference clip gives on the token grid ``(T', H', W')`` (what `set_reference_energy`
        takes), without keeping the clip."""
        clip, _ = as_clip(frames, min_frames=self.energy.min_frames, min_size=self.energy.min_size,
                          name="reference frames")
        return self._features(clip, self.feature_grid(tuple(int(g) for g in grid)))

    def energy_features(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Normalised energy of the reference on the token grid ``(T', H', W')``: ``(B, C, T', H', W')``.

        Time is split into ``T'`` equal bins (one per latent frame); space is averaged over each token's patch,
        or over the whole frame (``pooling="global"``, broadcast to every token).
        """
        grid = tuple(grid)
        if self._reference_energy is not None:
            e = self._reference_energy
            if self.inject == "text":
                return e
            if e.shape[2] != grid[0] or (self.pooling == "tokens" and tuple(e.shape[3:]) != tuple(grid[1:])):
                raise ValueError(f"the reference energy was computed for the token grid {tuple(e.shape[2:])}, the "
                                 f"transformer's is {tuple(grid)}")
            return e.expand(-1, -1, *grid) if self.pooling == "global" else e
        if self._reference is None:
            raise RuntimeError("MotionEnergyAdapter has no reference clip: call set_reference(frames) first")
        if grid in self._cache:
            return self._cache[grid]
        e = self._features(self._reference, self.feature_grid(grid))
        if self.pooling == "global" and self.inject == "patch":
            e = e.expand(-1, -1, *grid)
        if not self.train_energy:
            self._cache[grid] = e
        return e

    def _features(self, clip: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        clip = clip.to(self.energy.raw_orientation.device)
        with torch.set_grad_enabled(self.train_energy and torch.is_grad_enabled()):
            e = self.energy(clip[:, :, None].expand(-1, -1, 1, -1, -1), temporal_bins=grid[0])
            return F.adaptive_avg_pool3d(e, grid)

    def condition(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """What is added to the patch embeddings: ``(B, inner_dim, T', H', W')`` (``(B, inner_dim, 1, 1, 1)``,
        added to every text embedding, with ``inject="text"``)."""
        e = self.energy_features(grid)
        feats = torch.log(e * e.shape[1] + 1e-2)
        if self.normalize:
            feats = (feats - feats.mean(1, keepdim=True)) / (feats.std(1, keepdim=True) + 1e-5)
        return self.scale * self.proj(self.encoder(feats))

    def forward(self, patch_embeddings: torch.Tensor) -> torch.Tensor:
        """``patch_embeddings + condition``, with the reference batch matched to the embeddings' batch (with
        ``inject="text"``: text embeddings ``(B, L, inner_dim)`` with the clip's vector in their first padding row).
        Inside `bypassed` the embeddings pass unchanged."""
        if self._bypassed is True:
            return patch_embeddings
        if self.inject == "text":
            if patch_embeddings.dim() != 3 or patch_embeddings.shape[2] != self.inner_dim:
                raise ValueError(f"expected text embeddings (B, L, {self.inner_dim}), got "
                                 f"{tuple(patch_embeddings.shape)}")
            cond = self._batched(self.condition((1, 1, 1)).flatten(1)[:, None], patch_embeddings.shape[0])
            # the first padding position (all-zero rows, as WanPipeline pads prompts) becomes the motion token, where
            # a next word would go: a vector added to every position would shift every key alike, which
            # cross-attention's softmax ignores, and one written into all padding rows would weigh as many words
            padding = (patch_embeddings == 0).all(dim=-1, keepdim=True)
            if not padding.any(dim=1).all():
                raise ValueError(f"inject='text' writes the motion into the text embeddings' first padding position, "
                                 f"and a prompt fills all {patch_embeddings.shape[1]} positions (has no padding "
                                 f"position): use a shorter prompt or a longer max_sequence_length")
            first = padding & (padding.cumsum(dim=1) == 1)
            cond = self._unless_bypassed(cond)
            return patch_embeddings + first * cond.to(device=patch_embeddings.device, dtype=patch_embeddings.dtype)
        if patch_embeddings.dim() != 5 or patch_embeddings.shape[1] != self.inner_dim:
            raise ValueError(
                f"expected patch embeddings (B, {self.inner_dim}, T', H', W'), got {tuple(patch_embeddings.shape)}"
            )
        cond = self._batched(self.condition(tuple(patch_embeddings.shape[2:])), patch_embeddings.shape[0])
        cond = self._unless_bypassed(cond)
        return patch_embeddings + cond.to(device=patch_embeddings.device, dtype=patch_embeddings.dtype)

    def _unless_bypassed(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond`` zeroed for the samples `bypassed` names."""
        if self._bypassed is False:
            return cond
        if self._bypassed.shape[0] != cond.shape[0]:
            raise ValueError(f"bypassed(samples) names {self._bypassed.shape[0]} samples for a batch of "
                             f"{cond.shape[0]}")
        keep = (~self._bypassed).to(cond.device, cond.dtype)
        return cond * keep.view(-1, *([1] * (cond.dim() - 1)))

    @staticmethod
    def _batched(cond: torch.Tensor, b: int) -> torch.Tensor:
        """``cond`` for a batch of ``b``: one reference serves every sample, or one per sample, repeated for
        classifier-free guidance batches (``[uncond..., cond...]``)."""
        if cond.shape[0] == b:
            return cond
        if b % cond.shape[0]:
            raise ValueError(f"reference batch {cond.shape[0]} does not divide the transformer batch {b}; pass one "
                             f"reference clip or one per sample")
        return cond.repeat(b // cond.shape[0], *([1] * (cond.dim() - 1)))

    # ---- attaching ----------------------------------------------------------------------------------------

    def attach(self, transformer: nn.Module) -> "MotionEnergyAdapter":
        """Hook into ``transformer.patch_embedding`` (its output then goes through `forward`), or with
        ``inject="text"`` into the input of ``transformer.condition_embedder.text_embedder``."""
        if self._handle is not None:
            raise RuntimeError("MotionEnergyAdapter is already attached; call detach() first")
        if self.inject == "text":
            embedder = _text_embedder(transformer)
            if embedder.linear_1.in_features != self.inner_dim:
                raise ValueError(f"adapter inner_dim {self.inner_dim} does not match the transformer's text width "
                                 f"{embedder.linear_1.in_features}")
            self._handle = embedder.register_forward_pre_hook(lambda module, args: (self(args[0]), *args[1:]))
            return self
        embedding = _patch_embedding(transformer)
        if embedding.out_channels != self.inner_dim:
            raise ValueError(
                f"adapter inner_dim {self.inner_dim} does not match the transformer's patch embedding width "
                f"{embedding.out_channels}"
            )
        self._handle = embedding.register_forward_hook(lambda module, args, output: self(output))
        return self

    def detach(self) -> None:
        """Remove the hook; the transformer is exactly as before `attach`."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None

    @property
    def is_attached(self) -> bool:
        return self._handle is not None

    @contextlib.contextmanager
    def attached(self, transformer: nn.Module, reference: Any = None) -> Iterator["MotionEnergyAdapter"]:
        self.attach(transformer)
        try:
            if reference is not None:
                self.set_reference(reference)
            yield self
        finally:
            self.detach()

    @contextlib.contextmanager
    def bypassed(self, samples: torch.Tensor | None = None) -> Iterator["MotionEnergyAdapter"]:
        """Attached but passing the embeddings through unchanged: the model as it was without the adapter (a
        distillation teacher), without removing and re-adding the hook. ``samples``: a ``(B,)`` bool mask of
        the batch's samples to pass unchanged (the others are conditioned); None: all of them."""
        if samples is not None and (not isinstance(samples, torch.Tensor) or samples.dtype != torch.bool
                                    or samples.dim() != 1):
            raise ValueError(f"samples must be a (batch,) bool tensor or None, got "
                             f"{getattr(samples, 'dtype', type(samples).__name__)} "
                             f"{tuple(getattr(samples, 'shape', ()))}")
        previous, self._bypassed = self._bypassed, True if samples is None else samples
        try:
            yield self
        finally:
            self._bypassed = previous

    @contextlib.contextmanager
    def conditioning(self, pipe: Any, reference: Any = None) -> Iterator["MotionEnergyAdapter"]:
        """Pipeline calls inside follow the reference's motion: how to use a trained adapter for generation.

        With ``inject="text"`` the motion token joins the embeddings of the prompt and not those of the negative
        prompt (``pipe.encode_prompt`` is wrapped for the duration), so classifier-free guidance pushes toward the
        reference's motion as it pushes toward the prompt's words; hooked into the transformer instead
        (`attached`), the token would reach both branches and the guidance would cancel it. With
        ``inject="patch"`` the adapter is `attached` to ``pipe.transformer`` (every call)."""
        transformer = getattr(pipe, "transformer", None)
        if transformer is None or not callable(getattr(pipe, "encode_prompt", None)):
            raise TypeError(f"{type(pipe).__name__} is not a Wan-family pipeline (needs .transformer and "
                            f".encode_prompt)")
        if self.inject == "patch":
            with self.attached(transformer, reference):
                yield self
            return
        width = _text_embedder(transformer).linear_1.in_features
        if width != self.inner_dim:
            raise ValueError(f"adapter inner_dim {self.inner_dim} does not match the transformer's text width {width}")
        if "encode_prompt" in vars(pipe):
            raise RuntimeError("this pipeline's encode_prompt is already wrapped (a conditioning context is open)")
        encode_prompt = pipe.encode_prompt

        def with_motion(*args: Any, **kwargs: Any):
            prompt_embeds, negative_prompt_embeds = encode_prompt(*args, **kwargs)
            return self(prompt_embeds), negative_prompt_embeds

        if reference is not None:
            self.set_reference(reference)
        pipe.encode_prompt = with_motion
        try:
            yield self
        finally:
            del pipe.encode_prompt

    # ---- training and saving ------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def config(self) -> dict[str, Any]:
        return {"inner_dim": self.inner_dim, "hidden": self.hidden, "train_energy": self.train_energy,
                "scale": self.scale, "pooling": self.pooling, "inject": self.inject, "normalize": self.normalize,
                "energy": self.energy.config}

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with checks.atomic_output(path) as partial:
            save_file(tensors, str(partial), metadata={"config": json.dumps(self.config())})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MotionEnergyAdapter":
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not Path(path).is_file():
            raise FileNotFoundError(f"no motion adapter at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "config" not in meta:
            raise ValueError(f"{path} was not written by MotionEnergyAdapter.save_pretrained (no 'config')")
        config = json.loads(meta["config"])
        adapter = cls(config["inner_dim"], energy=MotionEnergy(**config["energy"]), hidden=config["hidden"],
                      train_energy=config["train_energy"], scale=config["scale"],
                      pooling=config.get("pooling", "tokens"), inject=config.get("inject", "patch"),
                      normalize=config.get("normalize", False))
        adapter.load_state_dict(load_file(str(path)))
        return adapter


def _patch_embedding(transformer: nn.Module) -> nn.Conv3d:
    embedding = getattr(transformer, "patch_embedding", None)
    if not isinstance(embedding, nn.Conv3d):
        raise TypeError(
            f"{type(transformer).__name__} has no Conv3d `patch_embedding`; MotionEnergyAdapter conditions "
            "Wan-family transformers (diffusers.WanTransformer3DModel and relatives)"
        )
    return embedding


def _text_embedder(transformer: nn.Module) -> nn.Module:
    embedder = getattr(getattr(transformer, "condition_embedder", None), "text_embedder", None)
    if embedder is None or not isinstance(getattr(embedder, "linear_1", None), nn.Linear):
        raise TypeError(
            f"{type(transformer).__name__} has no `condition_embedder.text_embedder`; inject='text' conditions "
            "Wan-family transformers (diffusers.WanTransformer3DModel and relatives)"
        )
    return embedder
