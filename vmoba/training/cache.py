"""Cached latents: every clip's VAE posterior (mean, log-variance), when the text encoder is frozen its
prompt embedding (and its teacher caption's, when it has one), and when a motion adapter is trained the clip's
motion-energy features on the transformer's token grid, computed once into ``data.cache_dir`` and reused by every
later run.

The cache records what it was computed from (clips, VAE weights, frame window, text encoder): a cache that
does not match the current run is reported, never silently reused or overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..checks import atomic_output
from .data import Clip, DataError, cache_key, load_frames
from .objectives import encode_tokens, tokenize

META = "cache.json"
BUILDING = "cache.building.json"


def prepare_cache(accelerator, cache_dir: Path, clips: list[Clip], vae, data_settings, text: dict | None,
                  batch_size: int, motion: dict | None = None) -> Path:
    """Make sure ``cache_dir`` holds the latents of ``clips`` for this VAE; build them (split across
    processes) when it does not. ``text``: ``{"encoder", "tokenizer", "max_sequence_length"}`` to cache prompt
    embeddings as well, or None. ``motion``: ``{"adapter", "patch_size"}`` to cache each clip's reference
    energy (`MotionEnergyAdapter.reference_energy` on the token grid), or None."""
    cache_dir = Path(cache_dir)
    key = cache_key(clips, vae, data_settings, text, motion)
    meta, building = cache_dir / META, cache_dir / BUILDING
    if meta.is_file():
        found = json.loads(meta.read_text())
        if found != key:
            changed = sorted(k for k in set(found) | set(key) if found.get(k) != key.get(k))
            raise DataError(f"data.cache_dir {cache_dir} was built from other inputs ({', '.join(changed)} differ); "
                            f"delete it or set another data.cache_dir")
        return cache_dir
    if cache_dir.is_dir() and any(cache_dir.iterdir()):
        same_build = building.is_file() and json.loads(building.read_text()) == key
        if not same_build:
            raise DataError(f"data.cache_dir {cache_dir} is not empty and holds no latent cache; choose an empty or "
                            f"new folder")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(building) as partial:
            partial.write_text(json.dumps(key))
    accelerator.wait_for_everyone()
    mine = list(range(accelerator.process_index, len(clips), accelerator.num_processes))
    _encode(mine, cache_dir, clips, vae, data_settings, text, motion, batch_size, accelerator.device,
            progress=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_output(meta) as partial:
            partial.write_text(json.dumps(key, indent=1))
        building.unlink()
    accelerator.wait_for_everyone()
    return cache_dir


@torch.no_grad()
def _encode(indices, cache_dir, clips, vae, d, text, motion, batch_size, device, progress):
    bar = tqdm(total=len(indices), desc="caching latents", unit="clip", disable=not progress)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        videos = torch.stack([load_frames(clips[i].path, d.num_frames, d.height, d.width) for i in chunk])
        posterior = vae.encode(videos.to(device, vae.dtype)).latent_dist
        texts = {}
        if text is not None:
            texts["prompt_embeds"] = _trimmed_embeddings(text, [clips[i].caption for i in chunk], device)
            if clips[chunk[0]].teacher_caption is not None:  # all clips have one (target: caption, keep_words) or none
                texts["teacher_embeds"] = _trimmed_embeddings(text, [clips[i].teacher_caption for i in chunk], device)
        energy = None
        if motion is not None:
            grid = [n // p for n, p in zip(posterior.mean.shape[2:], motion["patch_size"])]
            frames = (videos.permute(0, 2, 1, 3, 4).float() + 1) / 2  # (B, T, 3, H, W) in [0, 1]
            energy = motion["adapter"].reference_energy(frames.to(device), grid)
        for j, i in enumerate(chunk):
            item = {"latent_mean": posterior.mean[j].float().cpu().contiguous(),
                    "latent_logvar": posterior.logvar[j].float().cpu().contiguous()}
            item.update({key: embeds[j] for key, embeds in texts.items()})
            if energy is not None:
                item["motion_energy"] = energy[j].float().cpu().contiguous()
            with atomic_output(cache_dir / f"{i:06d}.safetensors") as partial:
                save_file(item, str(partial))
        bar.update(len(chunk))
    bar.close()


def _trimmed_embeddings(text: dict, captions: list[str], device) -> list[torch.Tensor]:
    """Each caption's embedding as the pipeline makes it, trimmed to the prompt's length (how the cache stores
    them; `CachedLatentDataset` pads them again)."""
    ids, mask = tokenize(text["tokenizer"], captions, text["max_sequence_length"])
    embeds = encode_tokens(text["encoder"], ids.to(device), mask.to(device))
    return [e[:n].float().cpu().contiguous() for e, n in zip(embeds, mask.sum(1).tolist())]


def empty_prompt_embeds(text: dict, device) -> torch.Tensor:
    """The embedding of "" (dropped captions), padded as the pipeline pads."""
    ids, mask = tokenize(text["tokenizer"], [""], text["max_sequence_length"])
    with torch.no_grad():
        return encode_tokens(text["encoder"], ids.to(device), mask.to(device))[0]
