"""The text-to-video models the demo offers: the embedded default, and pipeline folders under ``--models-dir``.

Users pick a model by name from a list; a path typed by a user never reaches the file system."""

from __future__ import annotations

import threading
from pathlib import Path

from ..config import VMoBAConfig
from ..pipelines import DEFAULT_VMOBA_CONFIG, load_pipeline

DEFAULT_MODEL = "embedded default (64x64 moving shapes)"


class ModelRegistry:
    """Names of the available pipelines and the loaded pipelines themselves (the default and at most one
    other stay in memory)."""

    def __init__(self, models_dir: str | Path | None = None, *, max_depth: int = 2):
        self.models_dir = None
        if models_dir is not None:
            path = Path(models_dir).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"--models-dir {models_dir}: not a folder")
            self.models_dir = path
        self.max_depth = max_depth
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def folders(self) -> dict[str, Path]:
        """Pipeline folders (holding a model_index.json) under the models folder, by relative name."""
        if self.models_dir is None:
            return {}
        found = {}
        for index in sorted(self.models_dir.glob("model_index.json")) + [
                p for depth in range(1, self.max_depth + 1)
                for p in sorted(self.models_dir.glob("/".join(["*"] * depth) + "/model_index.json"))]:
            folder = index.parent
            name = folder.relative_to(self.models_dir).as_posix()
            found[name if name != "." else folder.name] = folder
        return found

    def names(self) -> list[str]:
        return [DEFAULT_MODEL, *self.folders()]

    def is_embedded(self, name: str) -> bool:
        return name == DEFAULT_MODEL

    def base_config(self, name: str) -> VMoBAConfig:
        """Block sizes that suit the model's latent grid: the embedded model's are small."""
        return DEFAULT_VMOBA_CONFIG if self.is_embedded(name) else VMoBAConfig()

    def load(self, name: str):
        """The pipeline named ``name`` (one of `names`), loaded once and kept."""
        if not isinstance(name, str) or name not in self.names():
            raise ValueError(f"model must be one of {self.names()}, got {name!r}")
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            if self.is_embedded(name):
                pipe = load_pipeline(None)
            else:
                for other in [k for k in self._loaded if not self.is_embedded(k)]:
                    del self._loaded[other]  # one large model at a time
                folder = self.folders()[name]
                try:
                    pipe = load_pipeline(folder)
                except (FileNotFoundError, ValueError) as exc:
                    # users know the model by its name; the server's folders stay out of the message
                    reason = str(exc).replace(str(folder), repr(name))
                    raise ValueError(f"model {name!r} could not be loaded: {reason}") from None
            self._loaded[name] = pipe
            return pipe

