"""Wall-clock timing of model calls: CUDA events on the GPU, perf_counter on the CPU; p20/p50/p80."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


class Timer:
    """Times blocks on ``device``; ``samples`` holds milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.samples: list[float] = []

    def __call__(self, fn: Callable[[], object]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize()
            self.samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            out = fn()
            self.samples.append((time.perf_counter() - t0) * 1e3)
        return out


def quantiles(samples_ms: list[float]) -> dict[str, float]:
    """p20/p50/p80 in milliseconds (a single sample gives it three times)."""
    if not samples_ms:
        raise ValueError("no timing samples")
    if len(samples_ms) == 1:
        v = samples_ms[0]
        return {"p20_ms": v, "p50_ms": v, "p80_ms": v}
    q = statistics.quantiles(samples_ms, n=10, method="inclusive")
    return {"p20_ms": q[1], "p50_ms": statistics.median(samples_ms), "p80_ms": q[7]}


def measure(fn: Callable[[], object], device, *, warmup: int, repeats: int) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed: p20/p50/p80 ms."""
    for _ in range(warmup):
        fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    timer = Timer(device)
    for _ in range(repeats):
        timer(fn)
    return quantiles(timer.samples)
