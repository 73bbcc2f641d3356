"""What every ``vmoba`` subcommand shares: argument types built on `vmoba.checks`, output checks, and the one kind of error a command reports in a line. Light to import: ``vmoba --help`` loads only this
and the parser."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from .. import checks


class CliError(Exception):
    """A problem with the user's request, reported in one line with exit status 2."""


def _argument(parse: Callable[[str], Any], check: Callable[[Any], Any], what: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse`` the text, then ``check`` the value; either failure becomes argparse's
    one-line usage error (the option's name is added by argparse)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("value ", "", 1)) from None

    convert.__name__ = what  # argparse names the type in some messages
    return convert


positive_int = _argument(int, lambda v: checks.integer("value", v, min=1), "a positive integer")
natural_int = _argument(int, lambda v: checks.integer("value", v, min=0), "an integer >= 0")
fraction = _argument(float, lambda v: checks.real("value", v, min=0.0, max=1.0), "a number in [0, 1]")
finite = _argument(float, lambda v: checks.real("value", v), "a finite number")
positive_real = _argument(float, lambda v: checks.real("value", v, min=0.0, min_exclusive=True), "a number > 0")
nonnegative_real = _argument(float, lambda v: checks.real("value", v, min=0.0), "a number >= 0")
port = _argument(int, lambda v: checks.integer("value", v, min=1, max=65535), "a port number")


def grid(text: str) -> tuple[int, int, int]:
    """``8x30x34`` (or ``8,30,34``) as a latent grid."""
    try:
        value = tuple(int(x) for x in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must look like 8x30x34, got {text!r}") from None
    if len(value) != 3 or min(value) < 1:
        raise argparse.ArgumentTypeError(f"grid must be three positive integers like 8x30x34, got {text!r}")
    return value  # type: ignore[return-value]


def add_threads_option(parser: argparse.ArgumentParser, default_help: str) -> None:
    parser.add_argument("--threads", type=positive_int, help=f"CPU threads for PyTorch (default: {default_help})")


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """The demo's options, the same for ``vmoba demo`` and ``python -m vmoba.ui``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=port, default=None,
                        help="port (default: GRADIO_SERVER_PORT, else Gradio's default 7860)")
    parser.add_argument("--models-dir", default=None,
                        help="folder of diffusers pipeline folders to offer besides the embedded model")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="PyTorch CPU threads (default 1: the embedded models are tiny, and a second thread "
                             "only adds synchronisation)")


def output_file(path: str, force: bool, *, what: str = "--out", suffix: str | None = None) -> Path:
    """Check before any work that ``path`` can be written: right suffix, folder usable, not an existing file
    unless ``force``."""
    out = Path(path)
    if suffix is not None and out.suffix.lower() != suffix:
        raise CliError(f"{what} {out}: give a {suffix} path")
    try:
        checks.writable_destination(out, what)
    except (ValueError, PermissionError) as exc:
        raise CliError(str(exc)) from None
    if out.exists() and not force:
        raise CliError(f"{what} {out} exists; pass --force to replace it")
    return out
