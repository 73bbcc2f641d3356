"""Motion-energy front ends: trainable motion-energy sensing, flow from energy, and diffusion conditioning."""

from .clip import as_clip, to_grey
from .energy import MotionEnergy
from .flow import FlowIntegrator, MotionFlowNet, estimate_flow, load_flow_model

__all__ = ["FlowIntegrator", "MotionEnergy", "MotionFlowNet", "as_clip", "estimate_flow", "load_flow_model", "to_grey"]
