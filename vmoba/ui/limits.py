"""What one request of the demo may ask for, so that one user cannot exhaust a shared CPU machine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds on every input of the demo. The defaults suit a 2-core CPU and the embedded models."""

    max_prompt_chars: int = 200
    max_frames: int = 33  # generated frames (4k + 1 for Wan-family VAEs)
    min_side: int = 32  # generated height and width, multiples of 16
    max_side: int = 128
    max_steps: int = 50  # denoising steps per generation
    max_guidance: float = 20.0
    max_upload_mb: float = 20.0  # any uploaded file
    max_video_seconds: float = 20.0  # duration of an uploaded clip
    max_clip_frames: int = 16  # frames of an uploaded clip that are analysed
    max_events: int = 2_000_000  # events read from an uploaded event file
    event_max_side: int = 128  # event reconstruction works at most at this size (larger inputs are binned)
    event_max_frames: int = 16
    event_max_steps: int = 50
    motion_max_side: int = 192
    speed_max_tokens: int = 16_384
    speed_max_heads: int = 8
    speed_max_head_dim: int = 128
    queue_size: int = 16  # requests waiting at once, over all tabs

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


DEFAULT_LIMITS = Limits()


def whole(value):
    """Number fields and sliders of a web page send floats: 17.0 is the integer 17, while 17.5 stays a float
    (and `vmoba.checks.integer` refuses it, naming the field)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
