"""What the tabs share: turning bad input into messages, the VMoBA knobs, results kept for follow-up views."""

from __future__ import annotations

import functools
import threading
import uuid
from collections import OrderedDict
from typing import Any, Callable

import gradio as gr

from ...config import GRANULARITIES, VMoBAConfig
from ..generation import LAYER_SCHEDULES, vmoba_config

# One generation at a time on a CPU machine, whichever tab it comes from.
COMPUTE = dict(concurrency_limit=1, concurrency_id="compute")
# Cheap views of results already computed.
VIEW = dict(concurrency_limit=4, concurrency_id="view")


def user_errors(fn: Callable) -> Callable:
    """Bad input (``ValueError``/``TypeError`` from the checks) reaches the page as a message, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise gr.Error(str(exc), title="Cannot run this", print_exception=False) from None

    return wrapper


def progress_callback(progress: gr.Progress, what: str) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        progress((done, total), desc=f"{what} {done}/{total}", unit="steps")

    return report


class RecentResults:
    """The last few results, by key, for views that come after a run (the attention view of a clip). The
    page holds only the key; an old key gives a clear message instead of a stale or foreign result."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, value: Any) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str | None, what: str) -> Any:
        with self._lock:
            if key is None or key not in self._items:
                raise gr.Error(f"no {what} to show: run a generation first (results are kept for the last "
                               f"{self.capacity} runs on this server)", title="Nothing to show", print_exception=False)
            self._items.move_to_end(key)
            return self._items[key]


class VMoBAKnobs:
    """The VMoBA settings as page components, and the `VMoBAConfig` they describe."""

    def __init__(self, base: VMoBAConfig):
        with gr.Row():
            self.threshold = gr.Slider(0.0, 1.0, value=base.threshold, step=0.01, label="threshold",
                                       info="score mass to keep; 1 keeps every block (dense)")
            self.select_mode = gr.Radio(["threshold", "topk"], value=base.select_mode, label="selection mode")
        with gr.Row():
            self.threshold_type = gr.Dropdown(["query_head", "head_global", "block", "overall"],
                                              value=base.threshold_type, label="selection group",
                                              info="query_head: per query and head (the paper's default)")
            self.granularity = gr.Radio(list(GRANULARITIES), value=base.granularity, label="granularity",
                                        info="auto: tile on GPUs, token on CPUs")
            self.layer_schedule = gr.Dropdown(list(LAYER_SCHEDULES), value=",".join(base.layer_schedule),
                                              allow_custom_value=True, label="layer schedule",
                                              info="scheme of layer i is entry i mod length")
        with gr.Row():
            self.topk = [gr.Number(value=k, precision=0, label=f"top-k {s}")
                         for k, s in zip(base.topk, ("1d", "2d", "3d"))]
        with gr.Row():
            self.temporal_chunk = gr.Number(value=base.temporal_chunk, precision=0,
                                            label="1d chunk (latent frames)")
            self.spatial_chunk = [gr.Number(value=v, precision=0, label=f"2d chunk {a}")
                                  for v, a in zip(base.spatial_chunk, ("h", "w"))]
            self.st_chunk = [gr.Number(value=v, precision=0, label=f"3d chunk {a}")
                             for v, a in zip(base.st_chunk, ("t", "h", "w"))]

    @property
    def components(self) -> list:
        return [self.threshold, self.select_mode, self.threshold_type, self.granularity, self.layer_schedule,
                *self.topk, self.temporal_chunk, *self.spatial_chunk, *self.st_chunk]

    @staticmethod
    def config(base: VMoBAConfig, values: list) -> VMoBAConfig:
        """The config of the values of `components`, in that order."""
        threshold, select_mode, threshold_type, granularity, schedule, k1, k2, k3, tc, sh, sw, ct, ch, cw = values
        return vmoba_config(base, threshold=threshold, select_mode=select_mode, threshold_type=threshold_type,
                            topk=(k1, k2, k3), granularity=granularity, layer_schedule=schedule, temporal_chunk=tc,
                            spatial_chunk=(sh, sw), st_chunk=(ct, ch, cw))

    def values_for(self, config: VMoBAConfig) -> list:
        """Component values showing ``config`` (used when another model brings other block sizes)."""
        return [config.threshold, config.select_mode, config.threshold_type, config.granularity,
                ",".join(config.layer_schedule), *config.topk, config.temporal_chunk, *config.spatial_chunk,
                *config.st_chunk]
