"""Can the SDPA engine hide its Q_eff launch behind cuDNN? (Its forward is the Q_eff launch, memory-bound, then
cuDNN's attention on Q_eff, compute-bound; at d=64 causal N=4096 the launch is 6-8% of the call and the engine
misses issue 3's 1.37x SDPA-flash by about that much.)

Splits the batch in C chunks and forms chunk i+1's Q_eff on a side stream while cuDNN runs on chunk i, against the
same split run serially and the unsplit engine. Every row is timed settled (run back to back ``--settle-ms`` first,
as bench_attention.py does) in ``--rounds`` rotated passes; the outputs are checked equal to the unsplit engine's.
The chunks' outputs are timed as a list (the idea's ceiling) and, for the overlapped rows, also assembled into one
tensor (a copy the unsplit engine does not make).
Prints one table: median ms, ratio to SDPA-flash, and to the unsplit engine.

    python scripts/probe_overlap.py [--d 64] [--causal 1] [--chunks 2 4 8] [--fusion mean]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def chunked_engine(q, k, v, *, chunks: int, overlap: bool, qeff, attend, assemble: bool = True):
    """The SDPA engine over ``chunks`` slices of the batch: qeff(q_slice) -> Q_eff, attend(Q_eff, k, v) -> out.
    With ``overlap`` chunk i+1's Q_eff is formed on a side stream while chunk i attends on the current stream.
    Returns out [B, H, N, d], or with ``assemble=False`` the chunks' outputs as a list (no copy into one tensor: the
    idea's ceiling, since SDPA cannot write into a slice of a given output)."""
    B = q.shape[0]
    bounds = [(i * B // chunks, (i + 1) * B // chunks) for i in range(chunks)]
    if not overlap:
        parts = [attend(qeff(q[b0:b1]), k[b0:b1], v[b0:b1]) for b0, b1 in bounds]
    else:
        main, side = torch.cuda.current_stream(), _side_stream()
        side.wait_stream(main)  # q is ready
        made = []
        with torch.cuda.stream(side):
            for b0, b1 in bounds:
                qe = qeff(q[b0:b1])
                ev = torch.cuda.Event()
                ev.record(side)
                made.append((qe, ev))
        parts = []
        for (b0, b1), (qe, ev) in zip(bounds, made):
            main.wait_event(ev)
            qe.record_stream(main)  # made on the side stream, read and freed on this one
            parts.append(attend(qe, k[b0:b1], v[b0:b1]))
    return torch.cat(parts) if assemble else parts


_SIDE = {}


def _side_stream():
    dev = torch.cuda.current_device()
    if dev not in _SIDE:
        _SIDE[dev] = torch.cuda.Stream()
    return _SIDE[dev]


def main(argv=None):
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_attention import median_spread, settled, timed_rounds
    from distr_patch.ops.sdpa_engine import query_effective

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--causal", type=int, default=1, choices=[0, 1])
    p.add_argument("--fusion", default="mean", choices=["mean", "rank1"])
    p.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settle-ms", type=float, default=200.0)
    p.add_argument("--rep-ms", type=int, default=20)
    p.add_argument("--tokens", type=int, default=32768, help="B*N (the bench's)")
    p.add_argument("--model-dim", type=int, default=2048, help="H = model_dim // d (the bench's)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU: it overlaps CUDA streams (none is visible here)")
    d, N, causal = args.d, args.n, bool(args.causal)
    H, B = args.model_dim // d, max(1, args.tokens // N)
    if any(c < 1 or c > B for c in args.chunks):
        p.error(f"--chunks must lie in 1..B={B} (the batch is what is split), got {args.chunks}")
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def qeff(qs):
        return query_effective(qs, group_size=2, block_m=128, fusion=args.fusion, num_hash_bits=16, seed=0,
                               query_valid=None, groups=None)

    def attend(qs, ks, vs, backend=SDPBackend.CUDNN_ATTENTION):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)

    fns = {
        "sdpa-flash": lambda: attend(q, k, v, SDPBackend.FLASH_ATTENTION),
        "sdpa-cudnn on q": lambda: attend(q, k, v),
        "Q_eff launch alone": lambda: qeff(q),
        "engine (Q_eff, cuDNN)": lambda: attend(qeff(q), k, v),
    }
    for c in args.chunks:
        for label, overlap, assemble in (("serial", False, False), ("overlapped", True, False),
                                         ("overlapped, assembled", True, True)):
            fns[f"{c} chunks {label}"] = lambda c=c, o=overlap, a=assemble: chunked_engine(
                q, k, v, chunks=c, overlap=o, qeff=qeff, attend=attend, assemble=a)
    ref = fns["engine (Q_eff, cuDNN)"]().float()
    for name, fn in fns.items():
        if "chunks" in name:
            out = fn()
            out = out if torch.is_tensor(out) else torch.cat(out)
            err = ((out.float() - ref).norm() / ref.norm()).item()
            if err > 1e-3:
                raise SystemExit(f"{name}: output differs from the unsplit engine's (relative {err:.2e})")
    torch.cuda.synchronize()

    def time_one(name):
        return triton.testing.do_bench(fns[name], warmup=10, rep=args.rep_ms, return_mode="median")

    passes = timed_rounds(fns, args.rounds, settled(time_one, lambda n: fns[n](), args.settle_ms))
    flash = statistics.median(passes["sdpa-flash"])
    engine = statistics.median(passes["engine (Q_eff, cuDNN)"])
    print(f"\nd={d} N={N} B={B} H={H} causal={int(causal)} fusion={args.fusion} {torch.cuda.get_device_name()} | "
          f"settle {args.settle_ms:.0f} ms, rep {args.rep_ms} ms, {args.rounds} rotated passes (median)\n")
    print("| row | ms | spread % | vs flash | engine / row |")
    print("|---|---|---|---|---|")
    for name in fns:
        ms, spread = median_spread(passes[name])
        print(f"| {name} | {ms:.3f} | {spread:.1f} | {flash / ms:.3f} | {engine / ms:.3f} |")


if __name__ == "__main__":
    main()
