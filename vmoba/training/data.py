"""Training data: a folder of videos with captions, optional cached latents, and a resumable batch order.

Captions come from ``captions.jsonl`` (one ``{"file": ..., "caption": ...}`` object a line) or ``captions.csv``
(header ``file,caption``); file names are relative to the folder. Every video listed must exist, and every
video in the folder must be listed: a clip without a caption is a mistake to report, not to skip.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..video import read_video

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")


class DataError(ValueError):
    """Training data that cannot be used as it is; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Clip:
    path: Path
    caption: str
    # the whole caption, with the words `caption` lost: what the frozen teacher reads (motion_adapter.target:
    # caption) or what keep_words clips train on
    teacher_caption: str | None = None
    # the direction its whole caption names, where a synthetic motion reference may stand in for the clip's
    # own (motion_adapter.synthetic_references; vmoba.training.references)
    reference_direction: str | None = None

    def fields(self) -> dict[str, str]:
        """The item fields it adds to its video or latents: ``caption``, and ``teacher_caption`` and
        ``reference_direction`` when it has them."""
        out = {"caption": self.caption}
        if self.teacher_caption is not None:
            out["teacher_caption"] = self.teacher_caption
        if self.reference_direction is not None:
            out["reference_direction"] = self.reference_direction
        return out


def find_captions(root: Path, captions: str | None = None) -> Path:
    if captions is not None:
        path = Path(captions) if Path(captions).is_absolute() else root / captions
        if not path.is_file():
            raise DataError(f"data.captions: no captions file at {path}")
        return path
    for name in ("captions.jsonl", "captions.csv"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no captions.jsonl or captions.csv (one caption per video) in the data folder")


def read_clips(root: str | Path, captions: str | None = None, exclude=()) -> list[Clip]:
    """The (video, caption) pairs of a data folder, in the order of the captions file, checked. Folders in
    ``exclude`` (a run's output or cache inside the data folder) are not searched for unlisted videos."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root: no folder at {root}")
    index = find_captions(root, captions)
    rows: list[tuple[int, object, object]] = []
    if index.suffix == ".csv":
        with open(index, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise DataError(f"{index}: the header must name the columns file and caption, got {reader.fieldnames}")
            rows = [(reader.line_num, r["file"], r["caption"]) for r in reader]
    else:
        for number, line in enumerate(index.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{index} line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(item, dict):
                raise DataError(f"{index} line {number}: expected an object with file and caption")
            rows.append((number, item.get("file"), item.get("caption")))
    clips, seen = [], set()
    for number, name, caption in rows:
        where = f"{index} line {number}"
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: missing the video file name (field 'file')")
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: missing caption for {name}")
        path = (root / name).resolve()
        if not path.is_file():
            raise DataError(f"{where}: video {name} not found in {root}")
        if path in seen:
            raise DataError(f"{where}: video {name} is listed twice")
        seen.add(path)
        clips.append(Clip(path, caption.strip()))
    if not clips:
        raise DataError(f"{index}: lists no videos")
    skip = [Path(e).resolve() for e in exclude if e]
    unlisted = sorted(str(p.relative_to(root.resolve())) for p in root.resolve().rglob("*")
                      if p.suffix.lower() in VIDEO_SUFFIXES and p.resolve() not in seen
                      and not any(s == p or s in p.parents for s in skip))
    if unlisted:
        more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        raise DataError(f"{index}: {len(unlisted)} video(s) in {root} have no caption: "
                        f"{', '.join(unlisted[:5])}{more}; add captions or move the videos out")
    return clips


def read_frames(path: Path, attempts: int = 3) -> np.ndarray:
    """All frames of a video (uint8 ``(F, H, W, 3)``); a `DataError` naming the file when it cannot be read.

    imageio-ffmpeg sometimes misses the header of a tiny clip that ffmpeg decodes and closes very quickly
    ("Could not load meta information") on a busy machine; such a read is tried again. A broken file fails
    every attempt the same way.
    """

    for attempt in range(attempts):
        try:
            return read_video(path)
        except OSError as exc:
            if "Could not load meta information" in str(exc) and attempt + 1 < attempts:
                continue
            error = exc
        except Exception as exc:  # imageio/ffmpeg raise many types for broken files
            error = exc
        break
    first = str(error).splitlines()[0] if str(error) else ""
    raise DataError(f"{path}: cannot decode the video ({type(error).__name__}: {first})") from error


def load_frames(path: Path, num_frames: int, height: int, width: int, start: int | None = 0,
                rng: np.random.Generator | None = None) -> torch.Tensor:
    """``num_frames`` frames of a video as float ``(3, F, H, W)`` in [-1, 1], resized (shorter side) and
    centre-cropped to ``height x width``. ``start=None`` picks a random window with ``rng``."""
    video = read_frames(path)
    if video.ndim != 4 or video.shape[0] == 0:
        raise DataError(f"{path}: decoded to no frames")
    if video.shape[0] < num_frames:
        raise DataError(f"{path}: has {video.shape[0]} frames, fewer than data.num_frames={num_frames}")
    if start is None:
        start = int(rng.integers(0, video.shape[0] - num_frames + 1))
    x = torch.from_numpy(np.ascontiguousarray(video[start : start + num_frames])).permute(0, 3, 1, 2).float()
    x = resize_crop(x, height, width)
    return (x / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()


def resize_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(F, C, h, w)`` -> ``(F, C, height, width)``: scale so both sides cover the target, crop the centre."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    size = (max(height, math.ceil(h * scale)), max(width, math.ceil(w * scale)))
    x = F.interpolate(x, size=size, mode="area" if scale < 1 else "bilinear", align_corners=None if scale < 1 else False)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return x[..., top : top + height, left : left + width]


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Items ``{"video": (3, F, H, W) in [-1, 1], "caption": str}``. ``sample(i, rng)`` takes the random
    window of ``clip_start="random"`` from the caller's generator, so batches are reproducible."""

    def __init__(self, clips: list[Clip], num_frames: int, height: int, width: int, *, clip_start: str = "first",
                 preload: bool = False):
        self.clips, self.num_frames, self.height, self.width = clips, num_frames, height, width
        self.clip_start = clip_start
        self._frames: list[np.ndarray] | None = None
        if preload:  # uint8 keeps a whole small dataset in memory: decoding it every step costs more
            self._frames = [read_frames(clip.path) for clip in clips]

    def __len__(self) -> int:
        return len(self.clips)

    def sample(self, index: int, rng: np.random.Generator | None = None) -> dict:
        clip = self.clips[index]
        start = 0 if self.clip_start == "first" else None
        if self._frames is None:
            video = load_frames(clip.path, self.num_frames, self.height, self.width, start, rng)
        else:
            frames = self._frames[index]
            if frames.shape[0] < self.num_frames:
                raise DataError(f"{clip.path}: has {frames.shape[0]} frames, fewer than data.num_frames={self.num_frames}")
            if start is None:
                start = int(rng.integers(0, frames.shape[0] - self.num_frames + 1))
            x = torch.from_numpy(frames[start : start + self.num_frames]).permute(0, 3, 1, 2).float()
            video = (resize_crop(x, self.height, self.width) / 127.5 - 1.0).permute(1, 0, 2, 3).contiguous()
        return {"video": video, **clip.fields()}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, np.random.default_rng(index))


class CachedLatentDataset(torch.utils.data.Dataset):
    """Items ``{"latent_mean", "latent_logvar": (C, T, h, w), "caption", ["prompt_embeds", "teacher_embeds": (L, D)],
    ["motion_energy"], ["teacher_caption"]}`` from a cache folder that `prepare_cache` wrote."""

    def __init__(self, cache_dir: Path, clips: list[Clip], max_sequence_length: int | None = None):
        self.cache_dir, self.clips = Path(cache_dir), clips
        self.max_sequence_length = max_sequence_length
        self.items = []
        for i, clip in enumerate(clips):
            path = self.cache_dir / f"{i:06d}.safetensors"
            if not path.is_file():
                raise DataError(f"{self.cache_dir}: cached latents for {clip.path.name} missing ({path.name}); "
                                f"delete the cache folder to rebuild it")
            item = load_file(path)
            for key in ("prompt_embeds", "teacher_embeds"):  # stored trimmed; zero-padded as the pipeline pads
                if key in item:
                    item[key] = F.pad(item[key], (0, 0, 0, max_sequence_length - item[key].shape[0]))
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.clips)

    def sample(self, index: int, rng=None) -> dict:
        return {**self.items[index], **self.clips[index].fields()}

    def __getitem__(self, index: int) -> dict:
        return self.sample(index)


def drop_words(caption: str, words) -> str:
    """``caption`` without the given words (whole words, any case; the rest keeps its order and spacing is
    normalised): "a red circle moves left" without the direction words is "a red circle moves"."""
    dropped = {w.lower() for w in words}
    return " ".join(w for w in caption.split() if w.lower().strip(".,;:!?") not in dropped)


def collate(items: list[dict]) -> dict:
    """Tensors stacked, other fields as lists; a field some items lack (``reference_direction``) is None there."""
    out = {}
    for key in dict.fromkeys(key for item in items for key in item):
        values = [item.get(key) for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def cache_key(clips: list[Clip], vae, data_settings, text: dict | None, motion: dict | None = None) -> dict:
    """What a latent cache depends on: the clips and captions, the VAE's config and weights, the frame
    window, (when text embeddings are cached) the text encoder and sequence length, and (when motion energy is
    cached) the energy filters, their pooling and the transformer's patch."""
    h = hashlib.sha256()
    for clip in clips:
        stat = clip.path.stat()
        h.update(f"{clip.path}|{stat.st_size}|{stat.st_mtime_ns}|{clip.caption}".encode())
        if clip.teacher_caption is not None:
            h.update(f"|teacher|{clip.teacher_caption}".encode())

    def weights_hash(module) -> str:
        w = hashlib.sha256()
        for name, tensor in sorted(module.state_dict().items()):
            w.update(name.encode())
            w.update(tensor.detach().cpu().float().numpy().tobytes())
        return w.hexdigest()[:16]

    key = {"clips": h.hexdigest()[:16], "count": len(clips), "vae": weights_hash(vae),
           # the architecture, not diffusers' bookkeeping (_name_or_path is the folder it was loaded from)
           "vae_config": json.loads(json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")},
                                               default=str)),
           "frames": [data_settings.num_frames, data_settings.height, data_settings.width]}
    if text is not None:
        key["text_encoder"] = weights_hash(text["encoder"])
        key["max_sequence_length"] = text["max_sequence_length"]
    if motion is not None:
        adapter = motion["adapter"]
        key["motion_energy"] = {"filters": weights_hash(adapter.energy), "energy_config": adapter.energy.config,
                                "pooling": adapter.pooling, "inject": adapter.inject,
                                "patch_size": list(motion["patch_size"])}
    return key


class BatchOrder:
    """Which dataset items each process takes at each micro-step: a pure function of (seed, micro-step).

    Epoch ``e`` is a permutation seeded by ``(seed, e)``; it is cut into global batches of
    ``batch_size * world_size`` items (a final partial batch is dropped) and process ``r`` takes the ``r``-th
    slice of each. Resuming at micro-step ``n`` therefore yields exactly the batches an uninterrupted run
    would have seen, on every process.
    """

    def __init__(self, size: int, batch_size: int, world_size: int, seed: int):
        self.size, self.batch_size, self.world_size, self.seed = size, batch_size, world_size, seed
        self.batches_per_epoch = size // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise DataError(f"the dataset has {size} clips, fewer than one global batch "
                            f"(training.batch_size {batch_size} x {world_size} processes)")
        self._epoch, self._perm = -1, None

    def indices(self, micro_step: int, rank: int) -> list[int]:
        epoch, batch = divmod(micro_step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        start = (batch * self.world_size + rank) * self.batch_size
        return self._perm[start : start + self.batch_size].tolist()
