"""The training programs as a module, for launchers that take one (``vmoba train ...`` is the same)::

    accelerate launch -m vmoba.train --config train.yaml          # fine-tune a video DiT, any number of processes
    accelerate launch -m vmoba.train events --out runs/events     # the event-to-video pipeline

Every option is described by ``vmoba train --help``; the YAML fields in docs/training.md.
"""

from __future__ import annotations

import sys

from .cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
