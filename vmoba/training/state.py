"""What a checkpoint holds besides the model and optimizer: the step (hence the data position) and the EMA
weights; and the checkpoint folders themselves, written so that a crash never leaves a half one behind."""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from pathlib import Path

import torch

from ..checks import atomic_output

CHECKPOINT = re.compile(r"^step-(\d+)$")
# Written first into every output_dir the trainer uses: the files named in RUN_FILES are the trainer's own only
# beside it, so a folder holding someone else's config.json or log.jsonl is never overwritten or appended to.
RUN_MARKER = ".vmoba-training-run.json"
RUN_FILES = ("config.json", "log.jsonl", "samples", "checkpoints", "final")


class TrainingState:
    """Step counter plus what a resumed run must share with the run it continues (registered with
    ``accelerator.register_for_checkpointing``, so ``save_state`` / ``load_state`` carry it)."""

    def __init__(self, identity: dict):
        self.step = 0
        self.identity = dict(identity)

    def state_dict(self) -> dict:
        return {"step": self.step, "identity": self.identity}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])  # the identity was compared before loading (saved_identity)


def saved_identity(checkpoint: Path) -> dict:
    """The `TrainingState` identity stored in ``checkpoint``, read without loading anything else, so a
    checkpoint of other settings is refused by name before its weights meet a model they do not fit.
    accelerate names registered objects by registration order; the trainer registers the state first."""
    path = Path(checkpoint) / "custom_checkpoint_0.pkl"
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=False)["identity"])
    except (OSError, KeyError, TypeError, pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"{checkpoint} holds no readable training state ({path.name}: {exc})") from None


class EMA:
    """Exponential moving average of the trained parameters, in float32. The decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the initial weights."""

    def __init__(self, named_parameters, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in named_parameters}

    @torch.no_grad()
    def update(self, named_parameters) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in named_parameters:
            self.shadow[name].lerp_(p.detach().float(), 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, named_parameters):
        """Parameters hold the averages inside the block, their own values again after it."""
        named_parameters = list(named_parameters)
        saved = {name: p.detach().clone() for name, p in named_parameters}
        self.copy_to(named_parameters)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in named_parameters:
                    p.copy_(saved[name])

    @torch.no_grad()
    def copy_to(self, named_parameters) -> None:
        for name, p in named_parameters:
            p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"the checkpoint's EMA weights do not match the trained parameters: {sorted(missing)[:5]}")
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


def foreign_run_files(out: Path) -> list[str]:
    """The trainer's file names present in ``out`` when the trainer did not write them (no run marker)."""
    if not out.is_dir() or (out / RUN_MARKER).is_file():
        return []
    return [name for name in RUN_FILES if (out / name).exists()]


def mark_run(out: Path, identity: dict) -> None:
    """Claim ``out`` for this trainer (kept if present: a resumed run continues the same claim)."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_MARKER).is_file():
        with atomic_output(out / RUN_MARKER) as partial:
            partial.write_text(json.dumps({"written_by": "vmoba.training", "identity": identity}, indent=1))


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``step-N`` in ``folder``, oldest first (``.partial`` folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(accelerator, folder: Path, step: int, keep: int | None) -> Path:
    """``accelerator.save_state`` into ``step-N.partial``, renamed to ``step-N`` once every process has
    written its part: an interrupted save leaves only a ``.partial`` folder, which resuming ignores."""
    final = folder / checkpoint_name(step)
    partial = folder / (final.name + ".partial")
    if accelerator.is_main_process:
        if final.exists():
            raise FileExistsError(f"checkpoint {final} exists already; not overwriting it")
        if partial.exists():
            shutil.rmtree(partial)  # left by a save that was interrupted: never a complete checkpoint
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        partial.rename(final)
        if keep is not None:
            for _, old in list_checkpoints(folder)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
