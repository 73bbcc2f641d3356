"""Drop-in diffusers attention processors: `VMoBAProcessor`, and `enable` / `disable` for whole pipelines."""

from .patching import disable, enable
from .processor import VMoBAProcessor

__all__ = ["VMoBAProcessor", "disable", "enable"]
