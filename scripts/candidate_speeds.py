"""Each calibration candidate's kernel time over exact SDPA at one model's attention shape (GPU).

    python scripts/candidate_speeds.py --heads 9 --kv-heads 3 --head-dim 64 --seq-lens 1024 4096   # SmolLM2-135M

The same numbers ``distr-patch calibrate --speeds measure`` takes (``calibrate.kernel_speed``), for a grid
of candidates, printed as one markdown table last (ratio < 1: the candidate is faster than exact). With
``--host`` it also prints each call's host time (µs to enqueue one call, no synchronisation, at the last
sequence length) next to its time between CUDA events over back-to-back calls: where the two are close, the
call is bound by its Python side and launches, not by its kernels. (The table ran on the H200, see
docs/benchmarks.md; ``--host`` has not run on a GPU yet.)
"""
import argparse
import time

import torch
import torch.nn.functional as F

from distr_patch.calibrate import AttentionShape, measure_speeds, parse_candidates
from distr_patch.ops import distr_attention

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--heads", type=int, default=9)
ap.add_argument("--kv-heads", type=int, default=3)
ap.add_argument("--head-dim", type=int, default=64)
ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--candidates", default="fast,G2-mean-b128-w0-c0", help="grid name or names, as calibrate takes")
ap.add_argument("--host", action="store_true", help="also the host time per call at the last sequence length")
a = ap.parse_args()
shape = AttentionShape(a.heads, a.kv_heads, a.head_dim, torch.bfloat16, torch.device("cuda"))
cands = parse_candidates(a.candidates)
cols = {n: measure_speeds(cands, shape, seq_len=n, batch=a.batch, progress=True) for n in a.seq_lens}
print("| candidate | " + " | ".join(f"N={n} (time / exact)" for n in a.seq_lens) + " |")
print("|---|" + "---|" * len(a.seq_lens))
for c in cands:
    print(f"| {c.name} | " + " | ".join(f"{cols[n][c.name]:.2f}" for n in a.seq_lens) + " |")


def host_and_gpu_us(fn, calls=50):
    """(µs to enqueue one call, µs per call between CUDA events) over ``calls`` back-to-back calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls * 1e6
    end.record()
    torch.cuda.synchronize()
    return host, start.elapsed_time(end) / calls * 1e3


if a.host:
    n = a.seq_lens[-1]
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(a.batch, a.heads, n, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(a.batch, a.kv_heads, n, a.head_dim, device="cuda", dtype=torch.bfloat16, generator=g)
            for _ in range(2))
    rep = a.heads // a.kv_heads
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    rows = [("exact SDPA", lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True)),
            ("distr G=1", lambda: distr_attention(q, k, v, group_size=1, causal=True))]
    rows += [(c.name, lambda c=c: distr_attention(q, k, v, causal=True, **c.settings())) for c in cands]
    print(f"\n| call (N={n}) | host µs / call | µs / call (CUDA events) |")
    print("|---|---|---|")
    with torch.no_grad():
        for name, fn in rows:
            h, d = host_and_gpu_us(fn)
            print(f"| {name} | {h:.0f} | {d:.0f} |")
