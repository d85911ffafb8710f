"""End-to-end speed of calibrated configs: one model forward on a calibration window (LM: [1, window] token
ids; ViT: one pixel batch), exact attention vs each config, p50 milliseconds (CUDA events on the GPU).

Issue 6's report shows each chosen point's measured speedup where a GPU is present; on the CPU the patched
model runs DistrAttention's PyTorch reference, so those times say nothing about the kernel and are only
taken when asked for (``speedup="on"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DistrConfig
from ..eval.timing import measure as time_call
from ..patching import patched
from .objectives import Objective

SPEEDUP_MODES = ("auto", "on", "off")


@dataclass
class Speed:
    """p50 ms of one forward with exact attention and with a config, on ``device``."""
    exact_ms: float
    ms: float
    device: str

    @property
    def speedup(self) -> float:
        return self.exact_ms / self.ms

    def to_dict(self) -> dict:
        return {"exact_ms": self.exact_ms, "ms": self.ms, "speedup": self.speedup, "device": self.device}


def wants_speed(mode: str, model) -> bool:
    """'auto': time only on a GPU; 'on': always (on the CPU: the reference path); 'off': never."""
    if mode not in SPEEDUP_MODES:
        raise ValueError(f"speedup must be one of {', '.join(SPEEDUP_MODES)}, got {mode!r}")
    return mode == "on" or (mode == "auto" and _device(model).type == "cuda")


def forward_ms(model, objective: Objective, x: torch.Tensor, config: DistrConfig | None, *, warmup: int = 2,
               repeats: int = 5) -> float:
    """p50 ms of ``objective.output(model, x)`` (no grad), patched with ``config`` (None: exact)."""
    device = _device(model)

    def run():
        with torch.no_grad():
            objective.output(model, x)

    if config is None:
        return time_call(run, device, warmup=warmup, repeats=repeats)["p50_ms"]
    with patched(model, config):
        return time_call(run, device, warmup=warmup, repeats=repeats)["p50_ms"]


def _device(model) -> torch.device:
    return next(model.parameters()).device
