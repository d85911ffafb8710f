"""The regroup launch (Q_eff, and its adjoint with the exact band's part added) under several tiles,
side by side on the GPU, with its memory throughput against a plain copy of the same bytes.

    python scripts/bench_regroup.py                     # d=64 and 128, rank1 and mean, N=4096
    python scripts/bench_regroup.py --tiles 4,64 8,32 4,32 8,64 4,64,64 8,64,128   # warps,columns[,rows]
    python scripts/bench_regroup.py --qeff      # Q_eff for backend="sdpa": the grouping launch + the regroup launch
                                                # against the fused launch under several tiles (also at Llama's shape)

Checks every tile's output against the default tile's (the same function), then prints one markdown table.
"""
import argparse

import torch
import triton

from distr_patch.ops.grouping import compute_groups
from distr_patch.ops.grouping_triton import (QEFF_SOURCES, QEFF_WAYS, qeff_tiles, qeff_way, triton_grouping,
                                             triton_query_effective)
from distr_patch.ops.regroup import REGROUP_TILES, regroup


def bench_qeff(args):
    """Q_eff formed by two launches (grouping, regroup) against the fused launch, per tile; ms and GB/s of one read
    of q and one write of Q_eff."""
    tiles = [tuple(int(x) for x in t.split(",")) for t in args.qeff_tiles]
    shapes = [(max(1, args.tokens // args.n), 2048 // d, args.n, d) for d in args.d] + [(1, 32, 4096, 64)]
    rows = []
    for B, H, N, d in shapes:
        # the model's layout: a transposed [B, N, H, d] view
        q = torch.randn(B, N, H, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
        nbytes = 2 * q.numel() * 2
        for fusion in ("mean", "rank1"):
            kw = dict(group_size=2, block_m=128, num_hash_bits=16, seed=0, query_valid=None, fusion=fusion)

            def two():
                grp, wa, wb, inv = triton_grouping(q, positions=True, **kw)
                return regroup(q, grp, wa, wb, group_size=2, block_m=128, out_dtype=q.dtype, inv=inv,
                               mean_weights=(0.5, 1.0) if wa is None else None)

            ref = two()
            grouping_ms = triton.testing.do_bench(lambda: triton_grouping(q, positions=True, **kw))
            variants = [("grouping + regroup", two)] + [
                (f"fused {way}{'' if src == 'memory' else ' regs'} {t}",
                 lambda t=t, way=way, src=src: triton_query_effective(q, tiles=t, regroup_way=way, fusion_from=src,
                                                                      **kw)[0])
                for src in args.qeff_from for way in args.qeff_ways for t in tiles]
            for name, fn in variants:
                try:
                    same = torch.allclose(fn().float(), ref.float(), rtol=1e-2, atol=1e-2)
                    ms = triton.testing.do_bench(fn)
                except Exception as e:  # a variant that does not compile (or run) is a row, not the end of the run
                    same, ms = f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}", float("nan")
                rows.append((f"{B}x{H}x{N}", d, fusion, name, ms, nbytes / ms * 1e-6, grouping_ms, same))
                print(rows[-1], flush=True)
    print(f"\nfused default tiles (warps, columns, rows) and (way, source), mean / rank1: "
          f"d=64 {qeff_tiles(64)} {qeff_way(64)} / {qeff_tiles(64, True)} {qeff_way(64, True)}, "
          f"d=128 {qeff_tiles(128)} {qeff_way(128)} / {qeff_tiles(128, True)} {qeff_way(128, True)}")
    print("\n| B x H x N | d | fusion | Q_eff by | ms | GB/s (q read + Q_eff write) | grouping launch alone ms "
          "| same as two launches |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, d, fusion, name, ms, gbs, gms, same in rows:
        print(f"| {shape} | {d} | {fusion} | {name} | {ms:.3f} | {gbs:.0f} | {gms:.3f} | {same} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=32768, help="B*N")
    ap.add_argument("--tiles", nargs="+", default=["4,64", "8,32", "4,64,64", "4,64,128", "8,64,128"],
                    help="num_warps,columns[,rows per program]")
    ap.add_argument("--qeff", action="store_true", help="time Q_eff's fused launch against the two launches")
    ap.add_argument("--qeff-tiles", nargs="+", default=["4,64,64", "4,64,32", "2,64,64", "8,64,64", "4,128,64",
                                                        "8,64,128", "4,64,128", "8,128,128", "4,64,16"],
                    help="num_warps,columns,rows per step of the fused launch")
    ap.add_argument("--qeff-ways", nargs="+", default=["dot", "dot16"], choices=QEFF_WAYS,
                    help="how the fused launch forms Q_eff's columns (grouping_triton.QEFF_REGROUP)")
    ap.add_argument("--qeff-from", nargs="+", default=list(QEFF_SOURCES), choices=QEFF_SOURCES,
                    help="where the fused launch's dot takes the fusion matrix from (grouping_triton.QEFF_FUSION_FROM)")
    args = ap.parse_args()
    if args.qeff:
        return bench_qeff(args)
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
