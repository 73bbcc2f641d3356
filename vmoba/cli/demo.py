"""``vmoba demo``: the Gradio app of `vmoba.ui`, with the same options as ``python -m vmoba.ui``."""

from __future__ import annotations

import argparse

from .. import ui
from .arguments import CliError


def run_demo(args: argparse.Namespace) -> int:
    app_main = getattr(ui, "main", None)
    if app_main is None:
        raise CliError("the demo app is not part of this installation of vmoba (vmoba.ui has no main); "
                       "install a release that has it, with the demo extra: pip install 'vmoba[demo]'")
    argv = []  # the options add_demo_options gave both parsers, handed on as given
    for option, value in (("--host", args.host), ("--port", args.port), ("--models-dir", args.models_dir),
                          ("--threads", args.threads)):
        if value is not None:
            argv += [option, str(value)]
    return app_main(argv)
