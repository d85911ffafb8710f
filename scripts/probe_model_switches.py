"""Eager prefill of one model under several settings in alternating rounds (A B C A B C ..., so drift hits all).

Modes (``--modes``, any of):
    exact   the model unpatched (its own attention: SDPA)
    fast    patched, kernel launches through ``ops/launch.py``'s memo (the default setting)
    plain   patched, launches through Triton's own path (``launch.FAST_LAUNCH = False``)
    fused   patched, the grouping inside the attention kernel (``configs.DEFAULT_FUSED_GROUPING = True``:
            one launch fewer per call; env ``DISTR_FWD_FUSED_GROUPING=1``)
    exact-compiled, compiled   a copy of the model, unpatched / patched, under
            ``torch.compile(mode="reduce-overhead")`` (CUDA-graph replays; attention is the custom operator of
            ``ops/compile_op.py``)

    python scripts/probe_model_switches.py                        # SmolLM2-135M shape, random weights, 4 x 4096
    python scripts/probe_model_switches.py --modes exact fast fused --batch 1 --seq-len 1024

Prints the ms per prefill of each round, then one markdown table last (median, and the ratio to exact when
exact is among the modes). Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import copy as copy_module
import statistics
import time

import torch

from distr_patch import DistrConfig
from distr_patch.models.loading import load_model
from distr_patch.ops import configs
from distr_patch.ops import launch as launch_mod
from distr_patch.patching.registry import patch_model, unpatch_model

MODES = ("exact", "fast", "plain", "fused", "exact-compiled", "compiled")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preset:smollm2-135m")
    p.add_argument("--config", default=None, help="a DistrConfig JSON (default: DistrConfig())")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["fast", "plain"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prefills", type=int, default=10, help="prefills per round")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.prefills < 1:
        p.error("--rounds and --prefills must be at least 1")
    if len(set(a.modes)) != len(a.modes):
        p.error(f"--modes lists a mode twice: {a.modes}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the switches compared are the GPU path's; the interpreter never uses them)")
    cfg = DistrConfig.load(a.config) if a.config else DistrConfig()
    model = load_model(a.model, "lm", dtype="bfloat16", processor=False).model.cuda()
    ids = torch.randint(0, 1000, (a.batch, a.seq_len), device="cuda")
    patched = [False]
    compiled = {}
    for mode in a.modes:  # compiled modes own a copy of the model
        if mode.endswith("compiled"):
            copy = copy_module.deepcopy(model)
            if mode == "compiled":
                patch_model(copy, cfg)
            compiled[mode] = torch.compile(copy, mode="reduce-overhead")

    def set_mode(mode):
        if mode in compiled:
            launch_mod.FAST_LAUNCH, configs.DEFAULT_FUSED_GROUPING = True, None
            return
        if (mode == "exact") == patched[0]:
            (unpatch_model if patched[0] else lambda m: patch_model(m, cfg))(model)
            patched[0] = not patched[0]
        launch_mod.FAST_LAUNCH = mode != "plain"
        configs.DEFAULT_FUSED_GROUPING = True if mode == "fused" else None

    current = ["exact"]

    def prefill():
        with torch.no_grad():
            compiled.get(current[0], model)(ids)

    for mode in a.modes:  # compile (Triton, and torch.compile's CUDA graphs) and fill the memo
        set_mode(mode)
        current[0] = mode
        for _ in range(3):
            prefill()
    times = {mode: [] for mode in a.modes}
    for _ in range(a.rounds):
        for mode in a.modes:
            set_mode(mode)
            current[0] = mode
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.prefills):
                prefill()
            torch.cuda.synchronize()
            times[mode].append((time.perf_counter() - t0) / a.prefills * 1e3)
    set_mode("fast")
    memo = {getattr(fn, "__name__", str(fn)): (len(m), sum(e is not None and e[2] is not None for e in m.values()))
            for fn, m in launch_mod._memos.items()}
    print("memo (kernel: entries, entries launched by the C launcher directly):", memo)
    med = {mode: statistics.median(ts) for mode, ts in times.items()}
    print(f"\n{a.model}, {a.batch} x {a.seq_len}, {a.config or 'DistrConfig()'}, eager; ms per prefill, "
          f"{a.prefills} per round\n")
    print("| mode | rounds | median | vs exact |\n|---|---|---|---|")
    for mode, ts in times.items():
        ratio = f"{med['exact'] / med[mode]:.2f}×" if "exact" in med else "-"
        print(f"| {mode} | {' / '.join(f'{t:.2f}' for t in ts)} | {med[mode]:.2f} | {ratio} |")
    return {"times": times, "median": med, "memo": memo}


if __name__ == "__main__":
    main()
