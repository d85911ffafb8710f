"""The grouping's own launches, timed alone on the GPU, three ways side by side.

For each head dim and fusion (bf16 unless ``--dtype``, N = 4096, B·N = 32768, H = 2048/d) it times what the Q_eff prologue
needs before the attention kernel: the grouping launch with the column -> position map scattered by torch
afterwards (``regroup.inverse_groups``), and the grouping launch storing the positions itself
(``positions=True``), plus the grouping launch alone. Each is timed as called from Python (``do_bench``:
host launch overhead included when it exceeds the GPU time) and replayed from a CUDA graph (GPU time only),
so a share of a whole call can be read either way. Checks that both maps agree. ``--projections`` times the
launch storing positions with each way of computing the hash projection (``grouping_triton.PROJECTION``);
``--pair-weights`` with each way of forming the G=2 rank1 pair weights (``grouping_triton.PAIR_WEIGHTS``);
``--power-grams`` with each way of forming the G>=4 rank1 groups' Grams (``grouping_triton.POWER_GRAMS``);
``--power-chunks`` with each chunk of sorted positions there (``grouping_triton.POWER_CHUNK``; with ``--warps``, at
each of those warps too); ``--group-sizes`` the group sizes G (default 2).

    python scripts/bench_grouping.py [--d 64 128] [--n 4096] [--warps 2 4 8 16] [--projections 16bit fp32]
                                     [--pair-weights gram regs] [--group-sizes 2 4 8] [--power-grams rows dot]
                                     [--power-chunks 32 64 128]

Prints one markdown table last.
"""
from __future__ import annotations

import argparse

import torch
import triton


def _graph_ms(fn, ms):
    fn()  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        with torch.cuda.graph(g, stream=s):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    return triton.testing.do_bench(g.replay, warmup=10, rep=ms, return_mode="median")


def agreement(got, groups, weights, G):
    """How far a launch's (groups, weights, ...) agree with the default's ``groups`` [B, H, nb, d] and ``weights``
    (same shape, fp32, or None for mean fusion on the torch path) at group size ``G``: (share of blocks grouped the
    same, share of groups whose weights lie within 1e-4 of the default's by |cosine|, or None without weights).
    fp32 sums in another order may flip a near-zero hash bit or a weight's last bits, so neither need be 1."""
    same_blocks = (got[0] == groups).all(-1).float().mean().item()
    if weights is None or got[1] is None:
        return same_blocks, None
    cos = torch.nn.functional.cosine_similarity(got[1].reshape(-1, G), weights.reshape(-1, G), dim=-1).abs()
    return same_blocks, (cos > 1 - 1e-4).float().mean().item()


def _agreement_text(same_blocks, same_weights):
    return (f"groups the same in {same_blocks:.4%} of blocks"
            + ("" if same_weights is None else f"; weights: {same_weights:.4%} of groups within 1e-4 of the "
                                               f"default's (cosine)"))


def main(argv=None):
    from distr_patch.ops import grouping_triton
    from distr_patch.ops.grouping_triton import triton_grouping
    from distr_patch.ops.regroup import inverse_groups

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[64, 128])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--fusions", nargs="+", default=["mean", "rank1"])
    p.add_argument("--rep-ms", type=int, default=50)
    p.add_argument("--warps", type=int, nargs="*", default=[],
                   help="also the grouping launch storing positions at each of these num_warps")
    p.add_argument("--projections", nargs="*", default=[],
                   help="also the launch storing positions with each of these hash projections (16bit, fp32)")
    p.add_argument("--pair-weights", nargs="*", default=[],
                   help="rank1: also the launch storing positions with each of these ways of forming the G=2 pair "
                        "weights (grouping_triton.PAIR_WAYS: gather, gram, regs)")
    p.add_argument("--power-grams", nargs="*", default=[],
                   help="rank1, G >= 4: also the launch storing positions with each of these ways of forming the "
                        "groups' Grams (grouping_triton.POWER_GRAMS: rows, dot)")
    p.add_argument("--power-chunks", type=int, nargs="*", default=[],
                   help="rank1, G >= 4: also the launch storing positions with each of these chunks of sorted "
                        "positions (grouping_triton.POWER_CHUNK), at the default warps and at each of --warps")
    p.add_argument("--group-sizes", type=int, nargs="+", default=[2])
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                   help="Q's dtype (fp32 Q takes the fp32 projection and, for G >= 4 rank1 at d <= 64, the Grams by "
                        "rows: grouping_triton.power_grams)")
    args = p.parse_args(argv)
    rows = []
    for d in args.d:
        B, H = max(1, 32768 // args.n), 2048 // d
        q = torch.randn(B, H, args.n, d, device="cuda", dtype=getattr(torch, args.dtype))
        for fusion, G in [(f, g) for f in args.fusions for g in args.group_sizes]:
            kw = dict(group_size=G, block_m=128, num_hash_bits=16, seed=0, query_valid=None, fusion=fusion)
            grp, _a, _b, inv = triton_grouping(q, positions=True, **kw)
            assert torch.equal(inv, inverse_groups(grp)), "kernel-stored positions differ from the scatter"
            ways = {
                "grouping alone": lambda: triton_grouping(q, **kw),
                "grouping + torch scatter": lambda: inverse_groups(triton_grouping(q, **kw)[0]),
                "grouping storing positions": lambda: triton_grouping(q, positions=True, **kw),
            }
            for w in args.warps:
                agree = agreement(triton_grouping(q, positions=True, num_warps=w, **kw), grp, _a, G)
                print(f"  {w} warps: {_agreement_text(*agree)}")
                if agree[0] > 0.999 and (agree[1] is None or agree[1] > 0.999):
                    ways[f"storing positions, {w} warps"] = (lambda w=w: triton_grouping(q, positions=True,
                                                                                         num_warps=w, **kw))
                else:
                    print(f"  {w} warps: other groups or weights than the default, not timed")

            def switched(attr, value, warps=None):  # the launch storing positions with grouping_triton.<attr> = value
                def fn():
                    saved = getattr(grouping_triton, attr)
                    setattr(grouping_triton, attr, value)
                    try:
                        return triton_grouping(q, positions=True, num_warps=warps, **kw)
                    finally:
                        setattr(grouping_triton, attr, saved)
                return fn

            for proj in args.projections:
                with_projection = switched("PROJECTION", proj)
                same = with_projection()[0].ne(grp).any(-1).float().mean().item()
                print(f"  projection {proj}: {same:.2%} of blocks grouped otherwise than the default (near-ties)")
                ways[f"storing positions, {proj} projection"] = with_projection
            for pw in args.pair_weights if fusion == "rank1" and G == 2 else []:
                with_pairs = switched("PAIR_WEIGHTS", pw)
                got = with_pairs()
                same = torch.equal(got[0], grp) and torch.allclose(got[1], _a, rtol=1e-5, atol=1e-6)
                print(f"  pair weights {pw}: {'the same' if same else 'NOT the same'} groups and weights as the default")
                ways[f"storing positions, pair weights {pw}"] = with_pairs
            for pg in args.power_grams if fusion == "rank1" and G > 2 else []:
                with_grams = switched("POWER_GRAMS", pg)
                print(f"  power grams {pg}: {_agreement_text(*agreement(with_grams(), grp, _a, G))}")
                ways[f"storing positions, grams {pg}"] = with_grams
            for ch in args.power_chunks if fusion == "rank1" and G > 2 else []:
                for w in [None, *args.warps]:
                    with_chunk = switched("POWER_CHUNK", ch, w)
                    same_blocks, same_weights = agreement(with_chunk(), grp, _a, G)
                    if same_blocks > 0.999 and same_weights > 0.999:
                        ways[f"chunk {ch}" + (f", {w} warps" if w else "")] = with_chunk
                    else:
                        print(f"  chunk {ch}, warps {w}: other groups or weights than the default, not timed")
            for name, fn in ways.items():
                py = triton.testing.do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median")
                try:
                    gr = _graph_ms(fn, args.rep_ms)
                except RuntimeError as e:  # a host sync inside the launch cannot be captured
                    print(f"  no CUDA graph for {name}: {e}"[:160])
                    gr = float("nan")
                rows.append((d, f"G{G} {fusion}", name, py, gr))
                print(f"d={d} G{G} {fusion:<5} {name:<28} python {py:.4f} ms  graph {gr:.4f} ms", flush=True)
        del q
    print(f"\nQ {args.dtype}, N={args.n}\n\n| d | fusion | launches | ms from Python | ms in a CUDA graph |\n"
          "|---|---|---|---|---|")
    for d, fusion, name, py, gr in rows:
        print(f"| {d} | {fusion} | {name} | {py:.4f} | {gr:.4f} |")
    return rows


if __name__ == "__main__":
    main()
