"""Fine-tuning diffusers video DiTs with VMoBA attention (``accelerate launch -m vmoba.train --config FILE``)."""

from .config import ConfigError, TrainConfig, config_from_dict, load_config
from .data import BatchOrder, DataError, read_clips

__all__ = ["BatchOrder", "ConfigError", "DataError", "TrainConfig", "config_from_dict", "load_config", "read_clips",
           "train"]


def train(config: "TrainConfig | str"):
    """Run the training a config (or the path of a YAML file) describes; see `vmoba.training.trainer.run`."""
    from .trainer import run

    return run(load_config(config) if not isinstance(config, TrainConfig) else config)
