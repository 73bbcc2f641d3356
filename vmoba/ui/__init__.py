"""The vmoba demo: a Gradio app (``vmoba demo``, ``python -m vmoba.ui``). Needs ``pip install 'vmoba[demo]'``.

`build_app` returns the app without starting it (tests launch it on a free port); `main` parses the command
line and serves it until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys

from ..cli.arguments import add_demo_options


def build_app(models_dir=None, **kwargs):
    """The demo as a ``gradio.Blocks``; see `vmoba.ui.app.build_app`."""
    from .app import build_app as build

    return build(models_dir, **kwargs)


def build_parser(prog: str = "vmoba demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Start the vmoba Gradio demo (text to video with "
                                     "dense / VMoBA / criss-cross attention, events to video, motion energy, "
                                     "attention speed).")
    add_demo_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``--host``, ``--port``, ``--models-dir``, ``--threads``), build the app and serve it until
    interrupted."""
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("vmoba demo: error: the demo needs Gradio: pip install 'vmoba[demo]'", file=sys.stderr)
        return 2
    import torch

    from .app import close_app, launch

    torch.set_num_threads(args.threads)
    try:
        demo = build_app(args.models_dir)
    except ValueError as exc:
        print(f"vmoba demo: error: {exc}", file=sys.stderr)
        return 2
    # a service manager's SIGTERM stops the demo as Ctrl+C does, so close_app still removes its temporary files
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        _, url, _ = launch(demo, host=args.host, port=args.port, prevent_thread_lock=True, quiet=True)
        print(f"vmoba demo: serving on {url} (Ctrl+C stops it)", flush=True)
        demo.block_thread()  # returns on Ctrl+C
    except KeyboardInterrupt:
        pass
    finally:
        close_app(demo)
    return 0


__all__ = ["build_app", "build_parser", "main"]
