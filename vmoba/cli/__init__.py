"""The ``vmoba`` command line: ``vmoba COMMAND ...`` (``vmoba --help`` lists the commands).

`parser` holds every option; each command runs in its own module (``bench``, ``generate``, ``train``,
``evaluate``, ``demo``, ``env``), imported only when that command runs.
"""

from __future__ import annotations

import importlib
import sys

from .arguments import CliError
from .parser import build_parser

__all__ = ["CliError", "build_parser", "main"]


def _expand_shorthand(argv: list[str]) -> list[str]:
    """``vmoba train --config FILE`` is ``vmoba train video --config FILE`` (the form the docs have always used)."""
    if len(argv) >= 2 and argv[0] == "train" and argv[1].startswith("-") and argv[1] not in ("-h", "--help"):
        return ["train", "video", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_expand_shorthand(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    module, function = args.run.split(":")
    command = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    try:
        return command(args)
    except CliError as exc:
        name = " ".join(filter(None, (args.command, getattr(args, "program", None))))
        print(f"vmoba {name}: error: {exc}", file=sys.stderr)
        return 2
