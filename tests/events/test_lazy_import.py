"""The event readers do not load diffusers; the conditioner, which is a diffusers model, loads it when used."""

import subprocess
import sys

READ_ONLY = """
import sys
import vmoba.events
vmoba.events.read_events, vmoba.events.EventStream, vmoba.events.events_to_voxel_grid
print(sorted(name for name in ("diffusers", "vmoba.events.conditioner") if name in sys.modules))
"""

CONDITIONER = """
import sys
import vmoba.events
from diffusers import ModelMixin
from vmoba.events.conditioner import EventResidualConditioner
assert vmoba.events.EventResidualConditioner is EventResidualConditioner
assert issubclass(EventResidualConditioner, ModelMixin)
assert "EventResidualConditioner" in dir(vmoba.events) and "EventResidualConditioner" in vmoba.events.__all__
print("ok")
"""


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_readers_do_not_import_diffusers():
    assert _run(READ_ONLY) == "[]"


def test_conditioner_still_resolves_from_the_package():
    assert _run(CONDITIONER) == "ok"
