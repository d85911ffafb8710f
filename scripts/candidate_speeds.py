"""Each calibration candidate's kernel time over exact SDPA at one model's attention shape (GPU).

    python scripts/candidate_speeds.py --heads 9 --kv-heads 3 --head-dim 64 --seq-lens 1024 4096   # SmolLM2-135M

The same numbers ``distr-patch calibrate --speeds measure`` takes (``calibrate.kernel_speed``), for a grid
of candidates, printed as one markdown table last (ratio < 1: the candidate is faster than exact).
"""
import argparse

import torch

from distr_patch.calibrate import AttentionShape, measure_speeds, parse_candidates

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--heads", type=int, default=9)
ap.add_argument("--kv-heads", type=int, default=3)
ap.add_argument("--head-dim", type=int, default=64)
ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096])
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--candidates", default="fast,G2-mean-b128-w0-c0", help="grid name or names, as calibrate takes")
a = ap.parse_args()
shape = AttentionShape(a.heads, a.kv_heads, a.head_dim, torch.bfloat16, torch.device("cuda"))
cands = parse_candidates(a.candidates)
cols = {n: measure_speeds(cands, shape, seq_len=n, batch=a.batch, progress=True) for n in a.seq_lens}
print(f"| candidate | " + " | ".join(f"N={n} (time / exact)" for n in a.seq_lens) + " |")
print("|---|" + "---|" * len(a.seq_lens))
for c in cands:
    print(f"| {c.name} | " + " | ".join(f"{cols[n][c.name]:.2f}" for n in a.seq_lens) + " |")
