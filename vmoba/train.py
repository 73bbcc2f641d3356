"""Fine-tune a diffusers video DiT with VMoBA attention:

    accelerate launch -m vmoba.train --config train.yaml          # any number of processes
    vmoba train --config train.yaml                                # the same, in this process

The YAML fields are listed in docs/training.md.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmoba.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training configuration (YAML)")
    args = parser.parse_args(argv)
    return run_config(args.config, prog="vmoba.train")


def run_config(path: str, prog: str) -> int:
    import logging

    from .training import ConfigError, DataError, load_config
    from .training.trainer import run

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(load_config(path))
    except (ConfigError, DataError, FileExistsError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
