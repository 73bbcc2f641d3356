"""The demo's own temporary files: one folder per app, pruned as new files come, removed at exit."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import weakref
from pathlib import Path


class OutputFolder:
    """Generated videos and files live here until the browser has fetched them.

    Gradio copies every returned file into its own cache (which ``delete_cache`` empties), so a file here is
    only needed for a short while: each new file prunes those older than ``max_age_s`` and all but the newest
    ``max_files``. The folder is removed when the app is closed or the process exits.
    """

    def __init__(self, max_age_s: float = 600.0, max_files: int = 64):
        self.path = Path(tempfile.mkdtemp(prefix="vmoba-demo-"))
        self.max_age_s = max_age_s
        self.max_files = max_files
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def new_file(self, suffix: str) -> Path:
        self.prune()
        return self.path / f"{uuid.uuid4().hex}{suffix}"

    def prune(self) -> None:
        if not self.path.is_dir():
            self.path.mkdir(parents=True, exist_ok=True)
        entries = []
        for entry in self.path.iterdir():
            try:
                entries.append((entry.stat().st_mtime, entry))
            except FileNotFoundError:  # removed by a concurrent prune
                continue
        entries.sort(reverse=True)
        now = time.time()
        for index, (mtime, entry) in enumerate(entries):
            if index >= self.max_files or now - mtime > self.max_age_s:
                try:
                    os.unlink(entry)
                except (FileNotFoundError, IsADirectoryError):
                    pass

    def files(self) -> list[Path]:
        return sorted(self.path.iterdir()) if self.path.is_dir() else []

    def cleanup(self) -> None:
        self._finalizer()
