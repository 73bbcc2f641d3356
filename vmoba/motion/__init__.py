"""Motion-energy front ends: trainable motion-energy sensing, flow from energy, and diffusion conditioning."""

from .clip import as_clip, to_grey
from .energy import MotionEnergy

__all__ = ["MotionEnergy", "as_clip", "to_grey"]
