"""Eager prefill of a patched model with kernel launches through ``ops/launch.py``'s memo and through Triton's own
path, in alternating rounds (ABAB, so drift hits both), plus the memo's entries afterwards.

    python scripts/probe_launch_model.py            # GPU: SmolLM2-135M shape, random weights, DistrConfig(), 4 x 4096

Prints the ms per prefill of each round, then one markdown table last.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from distr_patch import DistrConfig
from distr_patch.models.loading import load_model
from distr_patch.ops import launch as launch_mod
from distr_patch.patching.registry import patch_model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preset:smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--prefills", type=int, default=10, help="prefills per round")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.prefills < 1:
        p.error("--rounds and --prefills must be at least 1")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device (the memo is for GPU launches; the interpreter never uses it)")
    model = load_model(a.model, "lm", dtype="bfloat16").model.cuda()
    patch_model(model, DistrConfig())
    ids = torch.randint(0, 1000, (a.batch, a.seq_len), device="cuda")

    def prefill():
        with torch.no_grad():
            model(ids)

    for fast in (True, False):  # compile and fill the memo
        launch_mod.FAST_LAUNCH = fast
        for _ in range(3):
            prefill()
    times = {True: [], False: []}
    for _ in range(a.rounds):
        for fast in (True, False):
            launch_mod.FAST_LAUNCH = fast
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(a.prefills):
                prefill()
            torch.cuda.synchronize()
            times[fast].append((time.perf_counter() - t0) / a.prefills * 1e3)
    launch_mod.FAST_LAUNCH = True
    memo = {getattr(fn, "__name__", str(fn)): (len(m), sum(e is not None and e[2] is not None for e in m.values()))
            for fn, m in launch_mod._memos.items()}
    print("memo (kernel: entries, entries launched by the C launcher directly):", memo)
    print(f"\n{a.model}, {a.batch} x {a.seq_len}, DistrConfig(), eager; ms per prefill, {a.prefills} per round\n")
    print("| launch | rounds | median |\n|---|---|---|")
    for fast, ts in times.items():
        print(f"| {'fast (memo)' if fast else 'plain (Triton)'} | {' / '.join(f'{t:.2f}' for t in ts)} | "
              f"{statistics.median(ts):.2f} |")
    return {"fast": times[True], "plain": times[False], "memo": memo}


if __name__ == "__main__":
    main()
