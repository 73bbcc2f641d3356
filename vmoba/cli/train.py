"""``vmoba train video|events|motion``: the training programs.

The training itself lives in the library (`vmoba.training`, `vmoba.pipelines.event_training`,
`vmoba.motion.train_flow`); this module turns options into settings and checks where the results go.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ..motion.train_flow import FlowTrainingSettings, train_flow_model
from ..pipelines.event_training import EventTrainingSettings, train_event_pipeline
from ..training import ConfigError, DataError, load_config
from ..training.trainer import export_checkpoint
from ..training.trainer import run as run_training
from .arguments import CliError, output_file
from .runtime import set_threads


def settings_from_options(settings_class, args: argparse.Namespace):
    """A settings dataclass from the options given; an option not given keeps the class's default."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)
             if getattr(args, f.name, None) not in (None, False)}
    if isinstance(given.get("frames"), list):
        given["frames"] = tuple(given["frames"])
    try:
        return settings_class(**given)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None


def run_train_video(args: argparse.Namespace) -> int:
    """Fine-tune in this process; ``accelerate launch -m vmoba.train`` runs the same on several."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        set_threads(config.training.threads)  # process-wide, so the command's to make, not the library's
        if args.export is not None:
            export_checkpoint(config, args.export, args.checkpoint)
        else:
            if args.checkpoint != "latest":
                raise CliError("--checkpoint chooses what --export writes; to resume from a checkpoint set "
                               "training.resume_from in the config")
            run_training(config)
    except (ConfigError, DataError, FileExistsError) as exc:
        raise CliError(str(exc)) from None
    return 0


def pipeline_folder(path: str, force: bool) -> Path:
    """``--out`` of ``train events``: a new or empty folder, or (with --force) one that holds a pipeline, which
    the command then replaces; never a folder of other files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "model_index.json").is_file():
            raise CliError(f"--out {out} holds other files and no pipeline; give a new or empty folder")
        if not force:
            raise CliError(f"--out {out} already holds a pipeline; pass --force to replace it")
    output_file(str(out / "model_index.json"), True)  # the folder can be made and written
    return out


def run_train_events(args: argparse.Namespace) -> int:
    settings = settings_from_options(EventTrainingSettings, args)
    out = pipeline_folder(args.out, args.force)
    set_threads(args.threads, 1)
    saved = train_event_pipeline(out, settings, on_log=lambda entry: print(json.dumps(entry), flush=True))
    print(f"saved {saved}", flush=True)
    return 0


def run_train_motion(args: argparse.Namespace) -> int:
    settings = settings_from_options(FlowTrainingSettings, args)
    out = output_file(args.out, args.force, suffix=".safetensors")
    set_threads(args.threads, 1)
    metadata = train_flow_model(out, settings, on_log=lambda line: print(line, flush=True))
    print(json.dumps(metadata, indent=1))
    print(f"saved {out}")
    return 0
