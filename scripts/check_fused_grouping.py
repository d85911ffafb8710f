"""FwdConfig.fused_grouping (each attention program groups its own query block) against the grouping launch, on the GPU.

    python scripts/check_fused_grouping.py [--batch 8]
    compute-sanitizer --tool memcheck python scripts/check_fused_grouping.py     # shared/global access checks

The fused prologue runs ``grouping_triton.group_block``'s hash-projection dot inside the attention kernel, at that
kernel's warps (8 with the exact window at d <= 64). The same dot faulted in the fused Q_eff launch at 8 warps with
128 rows at d <= 64 (docs/benchmarks.md, fourteenth session), so this runs the fused prologue at those settings on
the benchmark's grid (B·H·N = B × 2048/d × 4096, bf16, G=2 rank1, grouped_qk="reduced") and prints, per case, the
largest difference from the same forward with the separate grouping launch (the same groups; 0 on the H200).
Needs a CUDA device.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

CASES = ((64, 128, 0), (64, 128, 1), (64, 0, 1), (32, 128, 0))  # (d, exact_window, causal)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="B (H = 2048 // d, N = 4096)")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    if not torch.cuda.is_available():
        sys.exit("check_fused_grouping.py needs a CUDA device")
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    for d, W, causal in CASES:
        q, k, v = (torch.randn(args.batch, 2048 // d, 4096, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        kw = dict(group_size=2, block_m=128, fusion="rank1", exact_window=W, window_correction=0.5 if W else 0.0,
                  causal=bool(causal), attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None,
                  groups=None)
        base = fwd_config(d, 2, 128, exact_window=W, grouped_qk="reduced")
        cfg = replace(base, fused_grouping=True)
        fused = _triton_forward(q, k, v, config=cfg, return_lse=True, **kw)[0]
        apart = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[0]
        torch.cuda.synchronize()
        diff = (fused.float() - apart.float()).abs().max().item()
        print(f"d={d} W={W} causal={causal} warps={cfg.num_warps} block_n={cfg.block_n} max|diff|={diff:.3e}",
              flush=True)


if __name__ == "__main__":
    main()
