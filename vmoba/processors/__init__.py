"""Drop-in diffusers attention processors (`VMoBAProcessor`, `CrissCrossAttnProcessor`), and `enable` /
`disable` for whole pipelines."""

from .patching import disable, enable
from .base import SelectionRecord
from .processor import CrissCrossAttnProcessor, VMoBAProcessor

__all__ = ["CrissCrossAttnProcessor", "SelectionRecord", "VMoBAProcessor", "disable", "enable"]
