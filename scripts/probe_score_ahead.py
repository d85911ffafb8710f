"""Does issuing the next key tile's score dot before this tile's softmax speed up a plain Triton attention forward?

    python scripts/probe_score_ahead.py                 # d=64 and 128, N=4096 and 16384, causal and not
    python scripts/probe_score_ahead.py --n 4096 --d 128 --causal 0

The product's exact kernel (DistrAttention's G=1 and its expanded grouped path, Q_eff·Kᵀ) runs each key tile's steps
in order: S = Q·Kᵀ, softmax, acc += P·V. FlashAttention-3 overlaps the softmax of one tile with the score GEMM of the
next ("intra-warpgroup pipelining"). Hopper's wgmma is asynchronous, so a Triton loop that issues the next tile's
S before this tile's softmax, and carries it to the next iteration, lets the compiler wait for it only there. This
probe times that ("ahead") against the same kernel in order ("plain"), each at the best of a few tile configs, beside
SDPA-flash, cuDNN and the product's own G=1 call. Every timed output is checked against fp32 SDPA first. Causal
masking is applied on every tile in both variants (a probe of the loop body, not of the diagonal split).
Shapes as ``bench_attention.py`` (B·N = 32768 tokens, H = 2048 // d, bf16, random normal). Ratios to SDPA-flash
(higher is faster). Needs a CUDA device. Prints one markdown table last.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd(Q, K, V, O, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, H, N, qk_scale2,
         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, AHEAD: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head); q, k, v, o [N, D] (last stride 1). AHEAD: the next
    key tile's scores are issued before this tile's softmax and carried to the next iteration."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :],
                mask=(offs_m < N)[:, None], other=0.0)
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, N) if CAUSAL else N
    if AHEAD:  # the first tile's scores
        offs_n = tl.arange(0, BLOCK_N)
        k0 = tl.load(K + offs_n[:, None] * skn + offs_d[None, :], mask=(offs_n < N)[:, None], other=0.0)
        s_next = tl.dot(q, tl.trans(k0))
    for start_n in tl.range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if AHEAD:
            s = s_next
            nxt = offs_n + BLOCK_N  # the next tile's scores (zeros past N, unused past hi)
            kn = tl.load(K + nxt[:, None] * skn + offs_d[None, :], mask=(nxt < N)[:, None], other=0.0)
            s_next = tl.dot(q, tl.trans(kn))
        else:
            k = tl.load(K + offs_n[:, None] * skn + offs_d[None, :], mask=(offs_n < N)[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k))
        v = tl.load(V + offs_n[:, None] * svn + offs_d[None, :], mask=(offs_n < N)[:, None], other=0.0)
        s = s * qk_scale2
        keep = (offs_n < N)[None, :]
        if CAUSAL:
            keep = keep & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    o = acc / l_i[:, None]
    tl.store(O + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], o.to(O.dtype.element_ty),
             mask=(offs_m < N)[:, None])


# (block_m, block_n, num_warps, num_stages): the probe keeps the fastest per shape and variant
CONFIGS = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 3))


def probe_attention(q, k, v, causal: bool, config, ahead: bool) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d)) v for q, k, v [B, H, N, d] contiguous, by ``_fwd`` at ``config``."""
    B, H, N, d = q.shape
    bm, bn, warps, stages = config
    o = torch.empty_like(v)
    _fwd[(triton.cdiv(N, bm), B * H)](
        q, k, v, o, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0),
        v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), H, N, d ** -0.5 * math.log2(math.e), D=d,
        BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, AHEAD=ahead, num_warps=warps, num_stages=stages)
    return o


def _rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", nargs="+", type=int, default=[4096, 16384])
    ap.add_argument("--causal", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    ap.add_argument("--tokens", type=int, default=32768, help="B*N")
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    bad = [d for d in args.d if d < 16 or d & (d - 1)]
    if bad:
        ap.error(f"--d: each head dim must be a power of two >= 16 (the probe kernel loads whole rows), got {bad}")
    if not torch.cuda.is_available():
        sys.exit("probe_score_ahead.py needs a CUDA device")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from distr_patch.ops import distr_attention
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def ms(fn):
        return triton.testing.do_bench(fn, rep=args.rep_ms)

    torch.manual_seed(0)
    rows = []
    for d in args.d:
        H = 2048 // d
        for N in args.n:
            B = max(1, args.tokens // N)
            q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            for causal in map(bool, args.causal):
                row = {"d": d, "N": N, "causal": int(causal)}
                ref = sdpa(q[:1, :2].float(), k[:1, :2].float(), v[:1, :2].float(), is_causal=causal)
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    flash = ms(lambda: sdpa(q, k, v, is_causal=causal))
                row["flash ms"] = round(flash, 3)
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    row["cudnn"] = round(flash / ms(lambda: sdpa(q, k, v, is_causal=causal)), 2)
                g1 = lambda: distr_attention(q, k, v, group_size=1, causal=causal)  # noqa: E731
                assert _rel_err(g1()[:1, :2], ref) < 1e-2
                row["our G1"] = round(flash / ms(g1), 2)
                for ahead in (False, True):
                    best = None
                    for cfg in CONFIGS:
                        try:
                            err = _rel_err(probe_attention(q, k, v, causal, cfg, ahead)[:1, :2], ref)
                            if err > 1e-2:
                                raise AssertionError(f"output differs from the reference: {err:.1e}")
                            t = ms(lambda c=cfg: probe_attention(q, k, v, causal, c, ahead))
                        except Exception as e:  # a config that does not fit (shared memory) is skipped, and said
                            print(f"  skip {'ahead' if ahead else 'plain'} {cfg}: {type(e).__name__}: {e}"[:160])
                            continue
                        print(f"  d={d} N={N} causal={int(causal)} {'ahead' if ahead else 'plain'} {cfg}: "
                              f"{flash / t:.3f}x", flush=True)
                        if best is None or t < best[0]:
                            best = (t, cfg)
                    row["ahead" if ahead else "plain"] = f"{flash / best[0]:.2f} {best[1]}" if best else "–"
                print(row, flush=True)
                rows.append(row)
            del q, k, v
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
