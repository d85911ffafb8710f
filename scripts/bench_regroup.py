"""The regroup launch (Q_eff, and its adjoint with the exact band's part added) under several tiles,
side by side on the GPU, with its memory throughput against a plain copy of the same bytes.

    python scripts/bench_regroup.py                     # d=64 and 128, rank1 and mean, N=4096
    python scripts/bench_regroup.py --tiles 4,64 8,32 4,32 8,64 4,64,64 8,64,128   # warps,columns[,rows]

Checks every tile's output against the default tile's (the same function), then prints one markdown table.
"""
import argparse

import torch
import triton

from distr_patch.ops.grouping import compute_groups
from distr_patch.ops.regroup import REGROUP_TILES, regroup


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=32768, help="B*N")
    ap.add_argument("--tiles", nargs="+", default=["4,64", "8,32", "4,64,64", "4,64,128", "8,64,128"],
                    help="num_warps,columns[,rows per program]")
    args = ap.parse_args()
    tiles = [tuple(int(x) for x in t.split(",")) for t in args.tiles]
    rows = []
    for d in args.d:
        B, H, N = max(1, args.tokens // args.n), 2048 // d, args.n
        q = torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16)
        grp = compute_groups(q, group_size=2, block_m=128, num_hash_bits=16, seed=0).to(torch.int32).contiguous()
        w = torch.rand(grp.shape, device="cuda") + 0.1
        dqe = torch.randn(q.shape, device="cuda", dtype=torch.float32)
        copy_ms = triton.testing.do_bench(lambda: q.clone())
        for fusion in ("mean", "rank1"):
            wa = None if fusion == "mean" else w
            mw = (0.5, 1.0) if fusion == "mean" else None
            calls = {  # (name, fn(tiles), bytes moved)
                "Q_eff": (lambda t: regroup(q, grp, wa, wa, group_size=2, block_m=128, out_dtype=q.dtype,
                                            mean_weights=mw, tiles=t), 2 * q.numel() * 2),
                "adjoint+add": (lambda t: regroup(dqe, grp, wa, wa, group_size=2, block_m=128, out_dtype=q.dtype,
                                                  add=dqe, mean_weights=mw, tiles=t), q.numel() * (4 + 4 + 2)),
            }
            for cname, (fn, nbytes) in calls.items():
                ref = fn(REGROUP_TILES)
                for t in tiles:
                    out = fn(t)
                    same = torch.allclose(out.float(), ref.float(), rtol=1e-2, atol=1e-2)
                    ms = triton.testing.do_bench(lambda: fn(t))
                    rows.append((d, fusion, cname, t, ms, nbytes / ms * 1e-6, 2 * q.numel() * 2 / copy_ms * 1e-6,
                                 same))
                    print(rows[-1], flush=True)
    print("\n| d | fusion | call | warps, columns | ms | GB/s | copy GB/s | same as default |")
    print("|---|---|---|---|---|---|---|---|")
    for d, fusion, cname, t, ms, gbs, cgbs, same in rows:
        print(f"| {d} | {fusion} | {cname} | {t[0]}, {t[1]} | {ms:.3f} | {gbs:.0f} | {cgbs:.0f} | {same} |")


if __name__ == "__main__":
    main()
