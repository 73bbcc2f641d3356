"""The vmoba demo: a Gradio app (``vmoba demo``, ``python -m vmoba.ui``). Needs ``pip install 'vmoba[demo]'``.

`build_app` returns the app without starting it (tests launch it on a free port); `main` parses the command
line and serves it until interrupted."""

from __future__ import annotations

import argparse
import sys


def build_app(models_dir=None, **kwargs):
    """The demo as a ``gradio.Blocks``; see `vmoba.ui.app.build_app`."""
    from .app import build_app as build

    return build(models_dir, **kwargs)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1-65535, got {port}")
    return port


def build_parser(prog: str = "vmoba demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Start the vmoba Gradio demo (text to video with "
                                     "dense / VMoBA / criss-cross attention, events to video, motion energy, "
                                     "attention speed).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)")
    parser.add_argument("--port", type=_port, default=None,
                        help="port (default: GRADIO_SERVER_PORT, else Gradio's default 7860)")
    parser.add_argument("--models-dir", default=None,
                        help="folder of diffusers pipeline folders to offer besides the embedded model")
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads (default 1: the embedded models are tiny, and a second thread "
                             "only adds synchronisation)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (``--host``, ``--port``, ``--models-dir``), build the app and serve it until interrupted."""
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("vmoba demo: error: the demo needs Gradio: pip install 'vmoba[demo]'", file=sys.stderr)
        return 2
    import torch

    from .app import close_app, launch

    if args.threads < 1:
        print(f"vmoba demo: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        demo = build_app(args.models_dir)
    except ValueError as exc:
        print(f"vmoba demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        launch(demo, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    finally:
        close_app(demo)
    return 0


__all__ = ["build_app", "build_parser", "main"]
