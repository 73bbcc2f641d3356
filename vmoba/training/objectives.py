"""Training objectives as modules whose ``forward(batch, generator)`` returns the loss of one micro-batch.

One module per objective, holding exactly the trained components as submodules: DistributedDataParallel wraps
it and sees one forward per step, and ``accelerator.save_state`` saves only what is trained (frozen components
sit in a plain dict, outside the module tree). Every random draw comes from the generator passed in, so a
step is a pure function of its batch and seed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from torch import nn


def tokenize(tokenizer, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask exactly as `diffusers.WanPipeline` makes them (same text cleaning)."""

    tokens = tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=max_sequence_length,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def encode_tokens(text_encoder, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Text embeddings as WanPipeline feeds them to the transformer: encoder states, zero past each prompt's
    end (the pipeline trims to the prompt length and pads with zeros; with a prefix mask that is this product)."""
    states = text_encoder(input_ids, mask).last_hidden_state
    return states * mask[..., None].to(states.dtype)


def sample_sigmas(n: int, generator: torch.Generator, *, shift: float, sampling: str = "uniform",
                  logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """Noise levels ``s`` in (0, 1): ``u`` uniform (or logit-normal), then the scheduler's shift
    ``s = shift * u / (1 + (shift - 1) * u)``, which spends more steps at high noise for ``shift > 1``."""
    if sampling == "logit_normal":
        u = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    else:
        u = torch.rand(n, generator=generator)
    return shift * u / (1 + (shift - 1) * u)


def posterior_latents(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator, *,
                      sample: bool) -> torch.Tensor:
    """The posterior mean, or a sample ``mean + exp(logvar / 2) * noise`` with noise drawn from ``generator``."""
    if not sample:
        return mean
    noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
    return mean + torch.exp(0.5 * logvar) * noise


def predict_velocity(transformer, noisy: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The transformer's velocity prediction for latents noised to the per-clip levels ``sigmas`` (timestep
    ``1000 s``), as float32."""
    dtype = transformer.dtype
    prediction = transformer(hidden_states=noisy.to(dtype), timestep=sigmas * 1000,
                             encoder_hidden_states=context.to(dtype), return_dict=False)[0]
    return prediction.float()


def noised(x0: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``x_s = (1 - s) x0 + s noise`` at the per-clip noise levels ``sigmas``."""
    s = sigmas.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def foreground_weights(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights ``1 + strength * m``, shaped ``(B, 1, T, H, W)``, for latents ``x0``
    ``(B, C, T, H, W)``. ``m`` in [0, 1] is how far a position's latent vector lies from its frame's
    per-channel median (the plain background's latent where the subject is small), over the frame's farthest:
    1 on the subject, 0 on the background, between at the edges."""
    flat = x0.float().flatten(3)  # (B, C, T, H*W)
    background = flat.median(dim=-1, keepdim=True).values
    distance = (flat - background).norm(dim=1)  # (B, T, H*W)
    m = distance / distance.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return (1 + strength * m).view(x0.shape[0], 1, *x0.shape[2:])


def blur_matrices(size: int, stds: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur along one axis of ``size`` positions, as matrices ``(B, size, size)``: row ``i``
    holds ``exp(-(i - j)^2 / (2 std^2))`` normalised to sum to 1 over the positions inside the axis, so a constant
    stays constant up to the border. A std of 0 gives the identity."""
    position = torch.arange(size, dtype=torch.float32, device=stds.device)
    distance = (position[:, None] - position[None, :]).pow(2)  # (size, size)
    variance = 2 * stds.float().view(-1, 1, 1).pow(2)
    logits = torch.where(variance > 0, -distance / variance.clamp_min(1e-12),
                         torch.where(distance == 0, 0.0, -torch.inf))
    return torch.softmax(logits, dim=-1)


def blurred_latents(x0: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """``x0`` ``(B, C, T, H, W)`` blurred over H and W, each frame and channel alike, by a Gaussian of the
    per-clip std ``stds`` (latent pixels)."""
    rows, columns = blur_matrices(x0.shape[-2], stds), blur_matrices(x0.shape[-1], stds)
    return torch.einsum("bij,bctjw,bkw->bctik", rows, x0.float(), columns)


def input_blur_stds(sigmas: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """``flow.input_blur``'s per-clip blur: ``u * strength * s`` latent pixels, ``u`` uniform in [0, 1), at the
    clip's noise level ``s``: none near the data, up to ``strength`` at pure noise."""
    return torch.rand(sigmas.shape[0], generator=generator).to(sigmas.device) * strength * sigmas


def velocity_error(transformer, x0: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
                   noise: torch.Tensor, foreground_weight: float = 0.0, source: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Mean squared error of the transformer's velocity prediction: ``x0`` noised to ``x_s = (1 - s) x0 + s noise``
    at the per-clip noise levels ``sigmas`` (timestep ``1000 s``), target ``noise - x0``. With
    ``foreground_weight`` > 0, a weighted mean with `foreground_weights` (normalised by the weights' mean, so
    the loss keeps its scale).

    ``source``: noise these latents instead of ``x0`` (``flow.input_blur``: ``x0`` blurred) and keep ``x0`` as
    what the prediction leads to, ``x_s - s v = x0``: the target is ``(x_s - x0) / s = noise - x0 +
    (1 - s) / s (source - x0)``."""
    noisy = noised(x0 if source is None else source, sigmas, noise)
    prediction = predict_velocity(transformer, noisy, context, sigmas)
    target = (noise - x0).float()
    if source is not None:
        s = sigmas.view(-1, *([1] * (x0.dim() - 1))).float()
        target = target + (1 - s) / s * (source.float() - x0.float())
    if not foreground_weight:
        return F.mse_loss(prediction, target)
    weights = foreground_weights(x0, foreground_weight)
    error = (prediction - target).pow(2)
    return (error * weights).mean() / weights.mean()


def latent_statistics(vae) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(mean, std)`` of the VAE config, shaped to broadcast over ``(B, C, T, H, W)``."""
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
    return mean, std


class FlowMatchingLoss(nn.Module):
    """Rectified-flow loss as Wan trains: ``x_s = (1 - s) x0 + s * noise``, the transformer predicts
    ``noise - x0`` at timestep ``1000 s``; ``x0`` are VAE latents normalised by the VAE's latents_mean / std.

    ``motion_adapter``: a `MotionEnergyAdapter` attached to the transformer; each clip is its own reference
    (``batch["motion_energy"]`` from the latent cache, else the energy of ``batch["video"]``).

    ``distill``: the target is not ``noise - x0`` but the frozen transformer's own prediction, without the
    adapter, from each clip's whole caption (``batch["teacher_embeds"]`` or ``batch["teacher_caption"]``) at the
    same noisy latents: the adapter, reading the caption with its motion words dropped, learns to put back what
    those words did. A deterministic target, where the flow-matching target is one noise draw's.

    ``keep_words``: the fraction of clips (drawn per clip) that train on their whole caption
    (``batch["teacher_embeds"]`` or ``batch["teacher_caption"]``) without the motion token; the others read
    the caption with the words dropped and the reference's token. With a motion adapter, clips whose caption
    is dropped (``caption_dropout``) get no token either: the unconditional branch of classifier-free guidance
    has none (`MotionEnergyAdapter.conditioning`).

    ``references``: a `vmoba.training.references.SyntheticReferences`; clips with a ``reference_direction``
    may get a synthetic reference's energy in place of their own (`SyntheticReferences.mix`).
    """

    def __init__(self, transformer, text_encoder, vae, tokenizer, *, train_text_encoder: bool, max_sequence_length: int,
                 caption_dropout: float, flow, empty_embeds: torch.Tensor | None = None, motion_adapter=None,
                 distill: bool = False, keep_words: float = 0.0, references=None):
        super().__init__()
        if references is not None and motion_adapter is None:
            raise ValueError("references stand in for the clips' own motion: they need motion_adapter")
        self.references = references
        if distill and (motion_adapter is None or train_text_encoder or caption_dropout):
            raise ValueError("distill trains a motion adapter against the frozen model: it needs motion_adapter, a "
                             "frozen text encoder and no caption dropout")
        if keep_words and (motion_adapter is None or distill or not 0 < keep_words < 1):
            raise ValueError(f"keep_words mixes whole captions with motion references: it needs motion_adapter, "
                             f"no distill and a fraction in (0, 1), got {keep_words}")
        self.distill = distill
        self.keep_words = keep_words
        self.transformer = transformer
        self.motion_adapter = motion_adapter
        if train_text_encoder:
            self.text_encoder = text_encoder
        self.frozen = {"vae": vae, "tokenizer": tokenizer}
        if not train_text_encoder:
            self.frozen["text_encoder"] = text_encoder
        self.train_text_encoder = train_text_encoder
        self.max_sequence_length = max_sequence_length
        self.caption_dropout = caption_dropout
        self.flow = flow
        self.empty_embeds = empty_embeds  # cached embedding of "" when prompt embeddings are cached
        mean, std = latent_statistics(vae)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        if "latent_mean" in batch:
            mean, logvar = batch["latent_mean"], batch["latent_logvar"]
        else:
            vae = self.frozen["vae"]
            with torch.no_grad():
                posterior = vae.encode(batch["video"].to(vae.dtype)).latent_dist
            mean, logvar = posterior.mean, posterior.logvar
        z = posterior_latents(mean, logvar, generator, sample=self.flow.posterior == "sample")
        return ((z.float() - self.latents_mean) / self.latents_std)

    def encode(self, captions: list[str]) -> torch.Tensor:
        ids, mask = tokenize(self.frozen["tokenizer"], captions, self.max_sequence_length)
        device = self.latents_mean.device
        if self.train_text_encoder:
            return encode_tokens(self.text_encoder, ids.to(device), mask.to(device))
        with torch.no_grad():
            return encode_tokens(self.frozen["text_encoder"], ids.to(device), mask.to(device))

    def text(self, batch: dict, generator: torch.Generator, whole: list[bool]) -> tuple[torch.Tensor, list[bool]]:
        """The captions' embeddings, each replaced by the empty caption's with probability ``caption_dropout``,
        and which ones were. ``whole``: per clip, the whole caption (``teacher_*``) instead of ``caption``."""
        captions = list(batch["caption"])
        drop = (torch.rand(len(captions), generator=generator) < self.caption_dropout).tolist()
        if "prompt_embeds" in batch:
            embeds = batch["prompt_embeds"]
            if any(whole):
                embeds = torch.stack([t if w else e for e, t, w in zip(embeds, batch["teacher_embeds"], whole)])
            if any(drop):
                empty = self.empty_embeds.to(embeds.device, embeds.dtype)
                embeds = torch.stack([empty if d else e for e, d in zip(embeds, drop)])
            return embeds, drop
        if any(whole):
            captions = [t if w else c for c, t, w in zip(captions, batch["teacher_caption"], whole)]
        return self.encode(["" if d else c for c, d in zip(captions, drop)]), drop

    def set_references(self, batch: dict, x0: torch.Tensor, generator: torch.Generator) -> None:
        """Each clip's motion reference for the adapter: its own motion (cached energy, else its video's),
        with `references` mixed in when set."""
        adapter = self.motion_adapter
        energy = batch.get("motion_energy")
        if energy is None:
            frames = (batch["video"].permute(0, 2, 1, 3, 4).float() + 1) / 2  # (B, T, 3, H, W) in [0, 1]
            if self.references is None:
                adapter.set_reference(frames)
                return
            grid = [n // p for n, p in zip(x0.shape[2:], self.transformer.config.patch_size)]
            energy = adapter.reference_energy(frames, grid)
        if self.references is not None:
            directions = batch.get("reference_direction") or [None] * x0.shape[0]
            energy = self.references.mix(energy, directions, generator)
        adapter.set_reference_energy(energy)

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x0 = self.latents(batch, generator)
        whole = [False] * x0.shape[0]
        if self.keep_words:
            whole = (torch.rand(x0.shape[0], generator=generator) < self.keep_words).tolist()
        context, dropped = self.text(batch, generator, whole)
        f = self.flow
        s = sample_sigmas(x0.shape[0], generator, shift=f.shift, sampling=f.timestep_sampling,
                          logit_mean=f.logit_mean, logit_std=f.logit_std).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        if self.motion_adapter is not None:
            self.set_references(batch, x0, generator)
        if not self.distill:
            untoken = [w or d for w, d in zip(whole, dropped)]  # the samples without a motion token
            tokens = contextlib.nullcontext()
            if self.motion_adapter is not None and any(untoken):
                tokens = self.motion_adapter.bypassed(torch.tensor(untoken))
            source = None
            if f.input_blur:
                source = blurred_latents(x0, input_blur_stds(s, f.input_blur, generator))
            with tokens:
                return velocity_error(self.transformer, x0, context, s, noise, f.foreground_weight, source)
        noisy = noised(x0, s, noise)
        teacher_context = batch["teacher_embeds"] if "teacher_embeds" in batch else self.encode(batch["teacher_caption"])
        with torch.no_grad(), self.motion_adapter.bypassed():
            target = predict_velocity(self.transformer, noisy, teacher_context, s)
        return F.mse_loss(predict_velocity(self.transformer, noisy, context, s), target)


class AutoencoderLoss(nn.Module):
    """VAE training: reconstruction (L1 or MSE on pixels in [-1, 1]) of a posterior sample, plus
    ``kl_weight`` times the KL divergence to N(0, I), both as means over elements.

    With ``sample_posterior=False`` the decoder sees the posterior mean (a plain autoencoder with a KL penalty
    on the means). A freshly initialised Wan VAE has posterior std near 1, which drowns the small means: on
    clips that are mostly plain background the decoder then learns the background and ignores the latents for
    a long time. The mean path learns objects within a few hundred steps; train the diffusion model on the
    posterior mean too (``flow.posterior: mean``).

    ``edge_weight`` adds that weight times the same error on the images' horizontal and vertical differences
    of neighbouring pixels (a gradient-difference loss): a blurred edge has smaller differences than a sharp
    one, while a pixel loss over frames that are mostly background barely notices rounded corners."""

    def __init__(self, vae, *, reconstruction: str = "l1", kl_weight: float = 1e-6, sample_posterior: bool = True,
                 edge_weight: float = 0.0):
        super().__init__()
        self.vae = vae
        self.reconstruction, self.kl_weight = reconstruction, kl_weight
        self.sample_posterior = sample_posterior
        self.edge_weight = edge_weight

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        x = batch["video"].to(self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = posterior_latents(posterior.mean, posterior.logvar, generator, sample=self.sample_posterior)
        recon = self.vae.decode(z).sample
        error = F.l1_loss if self.reconstruction == "l1" else F.mse_loss
        loss = error(recon.float(), x.float())
        if self.edge_weight:
            loss = loss + self.edge_weight * sum(error(torch.diff(recon.float(), dim=d), torch.diff(x.float(), dim=d))
                                                 for d in (-1, -2))
        if self.kl_weight:
            mean, logvar = posterior.mean.float(), posterior.logvar.float()
            loss = loss + self.kl_weight * 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return loss
