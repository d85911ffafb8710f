"""Host (CPU) time per DistrAttention call next to its GPU time, at one layer's shape.

A patched model whose layers each do little GPU work (SmolLM2-135M: 9 heads of d=64) runs at the speed of the
host, not of the kernels, once a call's host side (Python, Triton's launcher for each kernel) outlasts its GPU
side. This times ``n`` calls back to back: the host time is until the last call returns (the GPU still busy), the
wall time until the GPU is done too; wall ≈ host means host-bound.

    python scripts/host_overhead.py                      # GPU: SmolLM2's layer shape (B=4, 9 / 3 heads, N=4096)
    python scripts/host_overhead.py --stub-kernels --device cpu   # the Python wrapper alone (no GPU needed)

``--fused-grouping both`` adds each grouped variant with the grouping computed inside the attention kernel
(``configs.DEFAULT_FUSED_GROUPING``: one launch fewer). ``--rounds R`` times all variants R times in turn and
reports each one's median, so variants compared side by side meet the same host noise.

``--stub-kernels`` replaces every Triton kernel launch with a no-op, so what is left is this package's own Python
(validation, configs, allocations, TMA descriptors). On the GPU each DistrAttention variant runs twice: its
launches through ``ops/launch.py``'s memo ("fast launch") and through Triton's own path ("plain launch").
Prints one markdown table last.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _stub_kernels():
    """Every Triton kernel of the ops modules launches nothing (host-side cost of the wrapper only)."""
    import distr_patch.ops.distr_attn as da
    import distr_patch.ops.grouping_triton as gt
    import distr_patch.ops.regroup as rg

    class _NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    for mod in (da, gt, rg):
        for name in dir(mod):
            if type(getattr(mod, name)).__name__ in ("JITFunction", "InterpretedFunction"):
                setattr(mod, name, _NoLaunch())


def _profile(fn, calls: int, top: int, sync) -> None:
    """``calls`` calls of fn under cProfile: the ``top`` functions by own time, in µs per call."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (calls, primitive, own s, cumulative s, callers)
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (path, line, name), (n, _, own, cum, _) in rows:
        print(f"    {own / calls * 1e6:8.1f} µs own {cum / calls * 1e6:8.1f} µs cum  {n // calls:3d}x  "
              f"{os.path.basename(path)}:{line} {name}")


VARIANTS = {
    "G1": dict(group_size=1),
    "G2 mean": dict(group_size=2, fusion="mean"),
    "G2 rank1": dict(group_size=2, fusion="rank1"),
    "G2 rank1 W128 c.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--stub-kernels", action="store_true", help="launch no kernel: the package's Python alone")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=9, help="query heads")
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--launch", choices=["both", "fast", "plain"], default=None,
                   help="kernel launches through ops/launch.py's memo (fast), Triton's own path (plain), or each "
                        "side by side (default; plain alone with --stub-kernels, where nothing launches)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also run each variant's calls under cProfile and print its K costliest functions (own time)")
    p.add_argument("--fused-grouping", choices=["off", "on", "both"], default="off",
                   help="grouped variants with the grouping inside the attention kernel (on), as the config says (off: the "
                        "table, or DISTR_FWD_FUSED_GROUPING), or by its own launch and inside the kernel side by side "
                        "(both)")
    p.add_argument("--rounds", type=int, default=1, help="time all variants this many times in turn; medians")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.calls < 1:
        p.error(f"--rounds and --calls must be at least 1, got {a.rounds} and {a.calls}")
    if a.device == "cpu":
        if not a.stub_kernels:
            p.error("--device cpu times only the wrapper: add --stub-kernels")
        os.environ.setdefault("TRITON_INTERPRET", "1")  # CPU tensors take the Triton path only under the interpreter
    import torch
    import torch.nn.functional as F

    from distr_patch.ops import configs, distr_attention
    from distr_patch.ops import launch as launch_mod

    if a.stub_kernels:
        _stub_kernels()
    dev, dt = torch.device(a.device), torch.bfloat16
    q = torch.randn(a.batch, a.heads, a.n, a.d, device=dev, dtype=dt)
    k, v = (torch.randn(a.batch, a.kv_heads, a.n, a.d, device=dev, dtype=dt) for _ in range(2))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    fns = {} if a.stub_kernels else {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)}
    launch = a.launch or ("plain" if a.stub_kernels else "both")
    modes = {"fast": True, "plain": False} if launch == "both" else {launch: launch == "fast"}

    fused_modes = {"off": [False], "on": [True], "both": [False, True]}[a.fused_grouping]
    env_fused = configs.DEFAULT_FUSED_GROUPING  # DISTR_FWD_FUSED_GROUPING, which "off" leaves as it is

    def with_switches(fn, fast, fused):  # ops/launch.py's memo on (fast) or Triton's path (plain); grouping fused
        def run():
            launch_mod.FAST_LAUNCH = fast
            # None: the config table's choice (a launch of its own)
            configs.DEFAULT_FUSED_GROUPING = True if fused else None if a.fused_grouping == "both" else env_fused
            return fn()
        return run

    for mode, fast in modes.items():
        tag = f" ({mode} launch)" if len(modes) > 1 else ""
        for fused in fused_modes:
            ftag = " fused grouping" if fused else ""
            for name, kw in VARIANTS.items():
                if fused and kw["group_size"] == 1:
                    continue
                fns[f"distr {name}{ftag}{tag}"] = with_switches(
                    lambda kw=kw: distr_attention(q, k, v, causal=True, backend="triton", **kw), fast, fused)
            if not a.stub_kernels and not fused:  # the SDPA engine (its torch SDPA calls would run for real on
                for name in ("G2 mean", "G2 rank1 W128 c.5"):  # stubbed launches' output); it fuses its own grouping
                    fns[f"distr {name} sdpa{tag}"] = with_switches(
                        lambda kw=VARIANTS[name]: distr_attention(q, k, v, causal=True, backend="sdpa", **kw), fast,
                        False)
    for fn in fns.values():  # compile and warm every variant before any is timed
        for _ in range(5):
            fn()
    sync()
    times = {name: [] for name in fns}
    for r in range(a.rounds):
        for name, fn in fns.items():
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(a.calls):
                fn()
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            times[name].append(((t1 - t0) / a.calls * 1e3, (t2 - t0) / a.calls * 1e3))
    rows = []
    for name, ts in times.items():
        host, wall = (statistics.median(t[i] for t in ts) for i in (0, 1))
        rows.append(dict(variant=name, host_ms=host, wall_ms=wall, rounds=ts))
        print({k: v for k, v in rows[-1].items() if k != "rounds"}, flush=True)
        if a.profile:
            _profile(fns[name], a.calls, a.profile, sync)
    configs.DEFAULT_FUSED_GROUPING = env_fused
    med = f", median of {a.rounds} rounds" if a.rounds > 1 else ""
    print(f"\n{a.device}, B={a.batch}, heads {a.heads}/{a.kv_heads}, N={a.n}, d={a.d}, causal"
          f"{', kernels stubbed' if a.stub_kernels else ''}; ms per call, {a.calls} calls back to back{med}\n")
    print("| variant | host ms/call | wall ms/call | host / wall |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['host_ms']:.3f} | {r['wall_ms']:.3f} | {r['host_ms'] / r['wall_ms']:.2f} |")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
