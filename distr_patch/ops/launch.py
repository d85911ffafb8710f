"""Kernel launches with less host work: the compiled kernel found by the call's argument values.

``kernel[grid](*args, **meta)`` makes Triton bind and specialise every argument on each call (a generated binder,
one native call per argument, a cache key), tens of µs of host time per launch for our 80-argument kernels. Where a
call gives the GPU little work (B=1, N=1024) the host sets its speed: there the memo made calls 1.3-2.3x faster on
an H200 (docs/benchmarks.md, "Kernel launches without Triton's binder"; larger calls are bound by the GPU anyway).

``launch(fn, grid, *args, **meta)`` is ``fn[grid](*args, **meta)`` with a memo: the key is every value that
Triton's specialisation can depend on (each int argument's value, each tensor's dtype and 16-byte alignment, each
other argument's type, the constexprs and launch options, the device). Equal keys mean equal specialisations, so
a hit calls the compiled kernel Triton returned for the first such call, with the argument list Triton's binder
built for it (the constexprs appended). Nothing about Triton's rules is copied, only the superset of their inputs.

Plain ``fn[grid]`` runs instead under the Triton interpreter, with ``DISTR_FAST_LAUNCH=0``, on a Triton release the
memo has not passed the GPU tests on (``FAST_LAUNCH_TRITON``), and for kernels whose binder does not put the positional
arguments first (then the memo could not rebuild the argument list).
"""
from __future__ import annotations

import inspect

import torch
import triton

from .configs import _env_flag

try:
    from triton import knobs
    from triton.runtime import driver
except ImportError:  # a Triton before knobs (3.4): the plain path only
    knobs = driver = None

# The memo reads Triton's internals (knobs, the binder caches, the launcher's arguments). It runs on the releases
# whose GPU tests passed with it: 3.6 (the device image), 3.7 (3.7.1, torch 2.13's CUDA pin: 366 of 368 cases, two
# not finished in the time, docs/benchmarks.md; read from its wheel, 3.7 has no per-kernel launcher for the raw path,
# so its hits call ``kernel.run``) and 3.9 (3.9.0, the newest release: the whole GPU suite, 432 cases, on an H100 with
# the image's torch 2.11). Other releases take the plain path until checked on a GPU: Triton 3.4's knobs have no
# ``add_stages_inspection_hook``, so the memo's first check failed there (docs/compatibility.md); 3.8 was not run.
FAST_LAUNCH_TRITON = ("3.6", "3.7", "3.9")
TRITON_MINOR = ".".join(triton.__version__.split(".")[:2])
FAST_LAUNCH = _env_flag("DISTR_FAST_LAUNCH", True) and TRITON_MINOR in FAST_LAUNCH_TRITON
# DISTR_FAST_LAUNCH_RAW=0: memo hits go through kernel.run (Triton's launcher wrapper) instead of its C launcher
RAW_LAUNCH = _env_flag("DISTR_FAST_LAUNCH_RAW", True)
MAX_ENTRIES = 256  # per kernel; past it the memo starts over (a model sees a few shapes, a sweep many)

_MISSING = object()
_memos: dict = {}  # kernel -> {key: (compiled kernel, constexpr tail, raw launch or None) or None (not memoisable)}


def _spec_of(a):
    """What Triton's specialisation of one non-int argument can depend on."""
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    base = getattr(a, "base", None)  # a host TensorDescriptor: its tensor, shape, strides, block, padding
    if isinstance(base, torch.Tensor):
        return (type(a), base.dtype, base.data_ptr() % 16 == 0, tuple(a.shape), tuple(a.strides),
                tuple(a.block_shape), getattr(a, "padding", None))
    if type(a) is bool or a is None or isinstance(a, str):
        return (type(a), a)
    return type(a)  # floats: typed, never specialised on their value


def _device_and_stream():
    device = driver.active.get_current_device()
    return device, driver.active.get_current_stream(device)


def _raw_launch(kernel):
    """(C launcher, descriptor positions, their metadata, the encoder) to launch without the per-call Python
    wrapper that Triton 3.6's CUDA launcher puts around kernels with host tensor descriptors (a loop over all
    ~80 arguments that expands each descriptor), or None where the launcher is not that shape (then the memo
    calls ``kernel.run``, which does the same work the usual way)."""
    try:
        from triton.backends.nvidia import driver as nv

        run = kernel.run
        if run.global_scratch_size or run.profile_scratch_size or nv._BASE_ARGS_FORMAT_LEN != 13:
            return None
        wrapper = run.launch
        if wrapper.__name__ != "inner" or wrapper.__code__.co_filename != nv.__file__:
            return (wrapper, (), (), None) if wrapper.__name__ == "launch" else None
        cells = dict(zip(wrapper.__code__.co_freevars, (c.cell_contents for c in wrapper.__closure__)))
        positions = tuple(sorted(cells["tensordesc_indices"]))
        metas = tuple(cells["tensordesc_meta"])
        if len(inspect.signature(nv.make_tensordesc_arg).parameters) != 2 or len(metas) != len(positions):
            return None
        return cells["launcher"], positions, metas, nv.make_tensordesc_arg
    except Exception:  # noqa: BLE001  another Triton or backend: kernel.run
        return None


def _memo_entry(fn, kernel, args, meta, device):
    """(kernel, constexpr tail, raw launch or None) for a launch that Triton just ran, or None if its binder does
    not list ``args`` first and constexprs after them (then every such call takes the plain path)."""
    try:
        binder = fn.device_caches[device][-1]
        bound, _, _ = binder(*args, **meta)
    except Exception:  # noqa: BLE001  an internal that moved: no memo, the plain path stays correct
        return None
    values = list(bound.values())
    n = len(args)
    if len(values) < n or any(values[i] is not args[i] for i in range(n)) \
            or not all(p.is_constexpr for p in fn.params[n:]) or len(fn.params) != len(values):
        return None
    if hasattr(kernel, "result"):  # asynchronous compile mode hands back a future
        kernel = kernel.result()
    return kernel, tuple(values[n:]), _raw_launch(kernel) if RAW_LAUNCH else None


def launch(fn, grid, *args, **meta):
    """``fn[grid](*args, **meta)``: runtime arguments positional, constexprs and launch options (num_warps, ...)
    as keywords. grid: a tuple of 1-3 ints (a callable grid takes the plain path). Every launch asks for FMA
    contraction (``enable_fp_fusion=True``), the default the kernels were tuned and checked with, which Triton 3.10
    turns off (3.9 warns about it); torch.compile's capture of a kernel call takes no such option, so there it is
    left to Triton's default."""
    compiling = torch.compiler.is_compiling()
    if not compiling:
        meta.setdefault("enable_fp_fusion", True)
    # the interpreter's kernels have no device caches; hooks Triton's run would call, a grid computed from the
    # meta-parameters, or torch.compile tracing (it captures ``fn[grid](...)`` calls as they are): the plain path
    if not FAST_LAUNCH or knobs is None or not hasattr(fn, "device_caches") or callable(grid) or getattr(fn, "pre_run_hooks", True) \
            or getattr(knobs.runtime, "add_stages_inspection_hook", None) is not None or compiling:
        return fn[grid](*args, **meta)
    device, stream = _device_and_stream()
    key = (device, knobs.runtime.debug, knobs.compilation.instrumentation_mode, tuple(meta.items()),
           tuple([a if type(a) is int else (a.dtype, a.data_ptr() % 16 == 0) if type(a) is torch.Tensor
                  else _spec_of(a) for a in args]))
    memo = _memos.setdefault(fn, {})
    try:
        entry = memo.get(key, False)
    except TypeError:  # an unhashable constexpr value: no memo
        return fn[grid](*args, **meta)
    if entry is False:
        kernel = fn[grid](*args, **meta)
        if len(memo) >= MAX_ENTRIES:
            memo.clear()
        memo[key] = _memo_entry(fn, kernel, args, meta, device)
        return kernel
    if entry is None or any(globals_dict.get(name, _MISSING) != value  # a global the kernel read was rebound:
                            for (name, _), (value, globals_dict) in getattr(fn, "used_global_vals", {}).items()):
        return fn[grid](*args, **meta)  # Triton's path, which raises its error for that
    kernel, tail, raw = entry
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    launch_metadata = kernel.launch_metadata(grid, stream, *args, *tail)
    if raw is None:
        kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, launch_metadata,
                   knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args, *tail)
        return kernel
    c_launch, positions, metas, encode = raw
    full = [*args, *tail]
    for pos, m in zip(positions[::-1], metas[::-1]):  # from the end, so the earlier positions stay put
        full[pos:pos + 1] = encode(full[pos], m)
    run = kernel.run
    c_launch(grid[0], g1, g2, stream, kernel.function, run.launch_cooperative_grid, run.launch_pdl, None, None,
             kernel.packed_metadata, launch_metadata, knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook,
             *full)
    return kernel


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host code (``triton.cdiv`` is a constexpr function: ~4 µs a call outside kernels)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1), for host code (as ``cdiv``)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
