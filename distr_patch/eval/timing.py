"""Wall-clock timing of model calls: CUDA events on the GPU, perf_counter on the CPU; p20/p50/p80."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import torch


def cuda_devices(where) -> list[torch.device]:
    """The CUDA devices a call on ``where`` runs on: a device (or its name), or a module's parameters' devices
    (a ``device_map`` model spans several). Indices are explicit (``cuda`` -> the current device)."""
    if isinstance(where, torch.nn.Module):
        found = {p.device for p in where.parameters()} | {b.device for b in where.buffers()}
    else:
        found = {torch.device(where)}
    cuda = {torch.device("cuda", d.index if d.index is not None else torch.cuda.current_device())
            for d in found if d.type == "cuda"}
    return sorted(cuda, key=lambda d: d.index)


class Timer:
    """Times blocks that run on ``where`` (a device, or a module: all the CUDA devices its parameters are on);
    ``samples`` holds milliseconds. On CUDA: events on the first device's current stream, the end recorded after
    the host has waited for the other devices, so a call spread over several GPUs is timed whole."""

    def __init__(self, where):
        self.devices = cuda_devices(where)
        self.cuda = bool(self.devices)
        self.samples: list[float] = []

    def __call__(self, fn: Callable[[], object]):
        if self.cuda:
            first, *others = self.devices
            with torch.cuda.device(first):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                for d in others:
                    torch.cuda.synchronize(d)
                end.record()
                end.synchronize()
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


# transformers' mask builders that decide from tensor values (a host read) and, while a CUDA stream captures, give
# the cautious answer instead: ``find_packed_sequence_indices`` then returns the position ids' packing mask (so the
# causal mask is built as a tensor) and, in 5.17, ``_ignore_causal_mask_sdpa`` returns False even without padding.
MASK_DECISIONS = ("find_packed_sequence_indices", "_ignore_causal_mask_sdpa")


class EagerMaskDecisions:
    """Makes a captured call take the mask decisions its eager warm-up took.

    ``recording()`` (around an eager call) notes what each of ``MASK_DECISIONS`` returned, in call order;
    ``replaying()`` (around the capture) returns those answers where they were None or a bool, and calls the
    function itself otherwise or past the recorded calls. So a graph of a model called without padding holds the
    eager call's kernels (SDPA's ``is_causal`` path, DistrAttention's causal path), not masked attention. The graph
    keeps those decisions: replays are right for inputs with the warm-up's padding and position pattern (a
    prefill benchmark replays the same inputs). Without transformers, or where it lacks these functions, both
    contexts do nothing."""

    def __init__(self):
        self.answers: dict[str, list] = {name: [] for name in MASK_DECISIONS}

    def _patched(self, wrap):
        try:
            from transformers import masking_utils
        except ImportError:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for name in MASK_DECISIONS:
            original = getattr(masking_utils, name, None)
            if original is None:
                continue
            setattr(masking_utils, name, wrap(name, original))
            stack.callback(setattr, masking_utils, name, original)
        return stack

    def recording(self):
        """Note the answers of an eager call (the previous recording is replaced)."""
        self.answers = {name: [] for name in MASK_DECISIONS}

        def wrap(name, original):
            def recorded(*args, **kwargs):
                out = original(*args, **kwargs)
                self.answers[name].append(out)
                return out
            return recorded
        return self._patched(wrap)

    def replaying(self):
        """Give the recorded answers again, call by call."""
        calls = {name: 0 for name in MASK_DECISIONS}

        def wrap(name, original):
            def replayed(*args, **kwargs):
                i, calls[name] = calls[name], calls[name] + 1
                answers = self.answers[name]
                if i < len(answers) and (answers[i] is None or isinstance(answers[i], bool)):
                    return answers[i]
                return original(*args, **kwargs)
            return replayed
        return self._patched(wrap)


def cuda_graphed(fn: Callable[[], object], device, *, warmup: int = 2) -> Callable[[], None]:
    """``fn`` captured once in a CUDA graph: returns the graph's replay (which reruns fn's kernels on fn's captured
    inputs, so fn must read the same tensors each call). fn first runs ``warmup`` times (at least once) on a side
    stream, as ``torch.cuda.graph`` asks: kernels compile and lazy state is set up before the capture. The capture
    replays the last warm-up's mask decisions (``EagerMaskDecisions``: a transformers model builds the masks its
    eager call built). A call that synchronises with the host (``.item()``, a data-dependent shape) cannot be
    captured: that raises a RuntimeError naming the cause."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"cuda_graphed: CUDA graphs need a CUDA device, got {device}")
    decisions = EagerMaskDecisions()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(max(1, warmup)):
            with decisions.recording() if i == max(1, warmup) - 1 else contextlib.nullcontext():
                fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with decisions.replaying(), torch.cuda.graph(graph):
            fn()
    except Exception as e:
        raise RuntimeError(f"capturing the call in a CUDA graph failed ({type(e).__name__}: {e}); "
                           "time it without --cuda-graph") from e
    return graph.replay


def run_for(fn: Callable[[], object], ms: float, where=None) -> int:
    """``fn`` called back to back for about ``ms`` milliseconds of wall time (four calls queued between syncs of
    ``where``'s CUDA devices, so a GPU never idles between them; every CUDA device when ``where`` is None): the GPU's
    clocks settle at this work's level before a timing. Nothing for ms <= 0. Returns the number of calls."""
    devices = cuda_devices(where) if where is not None else (
        [torch.device("cuda", torch.cuda.current_device())] if torch.cuda.is_available() else [])
    calls, t0 = 0, time.perf_counter()
    while (time.perf_counter() - t0) * 1e3 < ms:
        for _ in range(4):
            fn()
        calls += 4
        for d in devices:
            torch.cuda.synchronize(d)
    return calls


def measure(fn: Callable[[], object], where, *, warmup: int, repeats: int, settle_ms: float = 0.0
            ) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then back to back for ``settle_ms`` ms untimed (``run_for``), then
    ``repeats`` times timed: p20/p50/p80 ms. ``where``: the device or the model the call runs on (``Timer``)."""
    for _ in range(warmup):
        fn()
    run_for(fn, settle_ms, where)
    timer = Timer(where)
    for d in timer.devices:
        torch.cuda.synchronize(d)
    for _ in range(repeats):
        timer(fn)
    return quantiles(timer.samples)
