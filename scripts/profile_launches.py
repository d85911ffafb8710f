"""A few launches of our kernels and their peers, each run twice, for Nsight Compute to read one by one.

``--what grouping`` (per head dim and fusion, G = 2, block_m = 128): the grouping launch storing positions (what the
fused attention kernel needs) and the SDPA engine's grouping + Q_eff launch, beside a plain copy of q.
``--what attention``: the fused forward (``backend="triton"``) at G = 1 and G = 2 mean, beside SDPA's cuDNN and
FlashAttention-2 kernels. bf16, N = 4096, B·N = 32768, H = 2048/d. Run under the profiler, e.g.

    ncu --clock-control none -k regex:_grouping --section SpeedOfLight --section Occupancy --section LaunchStats \\
        --section WarpStateStats python scripts/profile_launches.py --what grouping
    ncu --clock-control none -k regex:"_distr_fwd|sdpa|flash" --section SpeedOfLight --section ComputeWorkloadAnalysis \\
        --section Occupancy --section WarpStateStats python scripts/profile_launches.py --what attention --d 64

(``bash scripts/device_check.sh ncu-grouping ncu-attention`` runs both and keeps the reports.) With ``--rep-ms``
it also times each launch (``triton.testing.do_bench``, median) and prints the bytes it moves per second
(grouping) or its ratio to FlashAttention-2 (attention); a markdown table last.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel


def grouping_launches(d: int, n: int, fusions) -> tuple[dict, torch.Tensor]:
    from distr_patch.ops.grouping_triton import triton_grouping, triton_query_effective

    B, H = max(1, 32768 // n), 2048 // d
    q = torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16)
    copy = torch.empty_like(q)
    launches = {"copy of q (the device's memory speed)": (lambda: copy.copy_(q), 2)}
    for fusion in fusions:
        kw = dict(group_size=2, block_m=128, num_hash_bits=16, seed=0, query_valid=None, fusion=fusion)
        launches[f"grouping, {fusion}"] = (lambda kw=kw: triton_grouping(q, positions=True, **kw), 1)
        launches[f"grouping + Q_eff, {fusion}"] = (lambda kw=kw: triton_query_effective(q, **kw), 2)
    return launches, q


def attention_launches(d: int, n: int, causal: bool) -> tuple[dict, torch.Tensor]:
    from distr_patch.ops import distr_attention

    B, H = max(1, 32768 // n), 2048 // d
    q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def sdpa(backend):
        def fn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fn

    launches = {"SDPA flash": (sdpa(SDPBackend.FLASH_ATTENTION), 0), "SDPA cuDNN": (sdpa(SDPBackend.CUDNN_ATTENTION), 0)}
    for G, fusion in ((1, "mean"), (2, "mean")):
        launches[f"fused G={G} {fusion}"] = (lambda G=G, fusion=fusion: distr_attention(
            q, k, v, group_size=G, fusion=fusion, causal=causal, backend="triton"), 0)
    return launches, q


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=["grouping", "attention"], default="grouping")
    p.add_argument("--d", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--causal", type=int, nargs="+", default=[0], help="attention: 0, 1 or both")
    p.add_argument("--fusions", nargs="+", default=["mean", "rank1"], help="grouping: the fusions")
    p.add_argument("--rep-ms", type=int, default=0, help="also time each launch for this long (0: run twice only)")
    args = p.parse_args(argv)
    rows = []
    for d in args.d:
        for causal in args.causal if args.what == "attention" else [0]:
            launches, q = (grouping_launches(d, args.n, args.fusions) if args.what == "grouping"
                           else attention_launches(d, args.n, bool(causal)))
            base = None
            for name, (fn, passes) in launches.items():
                for _ in range(2):
                    fn()
                torch.cuda.synchronize()
                if not args.rep_ms:
                    continue
                ms = triton.testing.do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median")
                base = base or ms
                speed = (f"{passes * q.numel() * q.element_size() / ms / 1e6:.0f} GB/s" if passes
                         else f"{base / ms:.2f}x flash")
                rows.append((d, causal, name, ms, speed))
                print(f"d={d} causal={causal} {name:<40} {ms:.4f} ms  {speed}", flush=True)
    if rows:
        print("\n| d | causal | launch | ms | speed |\n|---|---|---|---|---|")
        for d, causal, name, ms, speed in rows:
            print(f"| {d} | {causal} | {name} | {ms:.4f} | {speed} |")
    return rows


if __name__ == "__main__":
    main()
