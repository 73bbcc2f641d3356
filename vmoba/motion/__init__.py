"""Motion-energy front ends: trainable motion-energy sensing, flow from energy, and diffusion conditioning.

``MotionEnergy`` (energy maps), ``estimate_flow`` (flow at the middle frame, shipped weights, offline),
``MotionEnergyAdapter`` (conditioning for Wan-family diffusers transformers) and renderers for both.
"""

from .adapter import MotionEnergyAdapter
from .clip import as_clip, to_grey
from .energy import MotionEnergy
from .flow import FlowIntegrator, MotionFlowNet, estimate_flow, load_flow_model
from .render import energy_grid, energy_to_rgb, flow_to_rgb, to_pil

__all__ = [
    "FlowIntegrator",
    "MotionEnergy",
    "MotionEnergyAdapter",
    "MotionFlowNet",
    "as_clip",
    "energy_grid",
    "energy_to_rgb",
    "estimate_flow",
    "flow_to_rgb",
    "load_flow_model",
    "to_grey",
    "to_pil",
]
