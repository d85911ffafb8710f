"""Wall-clock timing of model calls: CUDA events on the GPU, perf_counter on the CPU; p20/p50/p80."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def masks_as_in_eager():
    """transformers' mask builders treat a capturing CUDA stream as tracing (``is_tracing`` asks
    ``is_cuda_stream_capturing``) and then keep the causal mask as a tensor: in 5.17, ``_ignore_causal_mask_sdpa``
    returns False under capture even without padding. A graph captured that way times masked attention (SDPA with a
    tensor mask, DistrAttention's masked path), not the ``is_causal`` path an eager call takes. Inside this context
    transformers sees no capture, so the graph holds the eager call's kernels. The check only guards host reads of a
    padding mask's values; such a read during capture fails the capture loudly, it cannot go wrong silently."""
    try:
        from transformers.utils import import_utils
    except ImportError:
        yield
        return
    probe = getattr(import_utils, "is_cuda_stream_capturing", None)
    if probe is None:
        yield
        return
    import_utils.is_cuda_stream_capturing = lambda: False
    try:
        yield
    finally:
        import_utils.is_cuda_stream_capturing = probe


def cuda_graphed(fn: Callable[[], object], device, *, warmup: int = 2) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph: returns the graph's replay (which reruns fn's kernels on fn's captured
    inputs, so fn must read the same tensors each call). fn first runs ``warmup`` times (at least once) on a side
    stream, as ``torch.cuda.graph`` asks: kernels compile and lazy state is set up before the capture. The capture
    runs under ``masks_as_in_eager`` (a transformers model builds the masks it builds eagerly). A call that
    synchronises with the host (``.item()``, a data-dependent shape) cannot be captured: that raises a
    RuntimeError naming the cause."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"cuda_graphed: CUDA graphs need a CUDA device, got {device}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with masks_as_in_eager(), torch.cuda.graph(graph):
            fn()
    except Exception as e:
        raise RuntimeError(f"capturing the call in a CUDA graph failed ({type(e).__name__}: {e}); "
                           "time it without --cuda-graph") from e
    return graph.replay


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
