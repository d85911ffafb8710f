"""The ceiling of a reduced grouped product: attention with the score dot at d_qk = d/G and no grouping at all.

    python scripts/probe_reduced_dqk.py                  # d=64 and 128, N=4096 and 16384, causal and not
    python scripts/probe_reduced_dqk.py --n 4096 --d 64

DistrAttention's "reduced" path runs QKᵀ with inner dimension d/G on a K̃ formed per key tile. Whatever forming K̃
costs, the call cannot be faster than attention whose scores simply have d/G columns. This probe times that bound
on the GPU, beside SDPA-flash and cuDNN at full d (the issue's baselines):
- "triton d_qk=k": a plain FlashAttention-2-style Triton forward (one query tile per program, online softmax in
  exp2, P·V at the full d), its tiles the best of a few configs; d_qk = d is its dense reference point;
- "cudnn d_qk=k": SDPA's cuDNN backend on q, k with d_qk columns and v with d (where it accepts the shapes).
Every timed output is checked against fp32 SDPA on the same narrowed inputs. Shapes as ``bench_attention.py``
(B·N = 32768 tokens, H = 2048 // d, bf16, random normal). Times: ms, median of ``triton.testing.do_bench``; ratios to
SDPA-flash at full d. Needs a CUDA device.
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
def _probe_fwd(Q, K, V, O, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, H, N, qk_scale2,
               D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head); q, k [N, D_QK], v, o [N, D_V] (last stride 1)."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, D_QK)
    offs_v = tl.arange(0, D_V)
    q = tl.load(Q + b.to(tl.int64) * sqb + h * sqh + offs_m[:, None] * sqn + offs_k[None, :],
                mask=(offs_m < N)[:, None], other=0.0)
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_V], dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, N) if CAUSAL else N
    for start_n in tl.range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = tl.load(K + offs_n[:, None] * skn + offs_k[None, :], mask=(offs_n < N)[:, None], other=0.0)
        v = tl.load(V + offs_n[:, None] * svn + offs_v[None, :], mask=(offs_n < N)[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale2
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
    tl.store(O + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * son + offs_v[None, :], o.to(O.dtype.element_ty),
             mask=(offs_m < N)[:, None])


# (block_m, block_n, num_warps, num_stages): the probe keeps the fastest per shape
CONFIGS = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3))


def probe_attention(q, k, v, causal: bool, config) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d_v)) v; q, k [B, H, N, d_qk], v [B, H, N, d_v], contiguous, CUDA. The scale is
    d_v's, as DistrAttention's (the grouped scores keep the full head's scale)."""
    B, H, N, dqk = q.shape
    dv = v.shape[-1]
    bm, bn, warps, stages = config
    o = torch.empty_like(v)
    grid = (triton.cdiv(N, bm), B * H)
    _probe_fwd[grid](q, k, v, o, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), H, N,
                     dv ** -0.5 * math.log2(math.e), D_QK=dqk, D_V=dv, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal,
                     num_warps=warps, num_stages=stages)
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
    if not torch.cuda.is_available():
        sys.exit("probe_reduced_dqk.py needs a CUDA device")
    from torch.nn.attention import SDPBackend, sdpa_kernel
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
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    flash = ms(lambda: sdpa(q, k, v, is_causal=causal))
                row["flash ms"] = round(flash, 3)
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    row["cudnn"] = round(flash / ms(lambda: sdpa(q, k, v, is_causal=causal)), 2)
                for part in (1, 2, 4):
                    dqk, label = d // part, "d" if part == 1 else f"d/{part}"
                    qn, kn = q[..., :dqk].contiguous(), k[..., :dqk].contiguous()
                    ref = sdpa(qn[:1, :2].float(), kn[:1, :2].float(), v[:1, :2].float(), is_causal=causal,
                               scale=d ** -0.5)
                    best = None
                    for cfg in CONFIGS:
                        try:
                            out = probe_attention(qn, kn, v, causal, cfg)
                            err = _rel_err(out[:1, :2], ref)
                            if err > 2e-2:
                                raise AssertionError(f"probe output differs from SDPA: {err:.1e}")
                            t = ms(lambda c=cfg: probe_attention(qn, kn, v, causal, c))
                        except Exception as e:  # a config that does not fit (shared memory) is skipped
                            print(f"  skip triton d_qk={dqk} {cfg}: {type(e).__name__}: {e}"[:160], flush=True)
                            continue
                        if best is None or t < best[0]:
                            best = (t, cfg)
                    row[f"triton d_qk={label}"] = f"{flash / best[0]:.2f} {best[1]}" if best else "–"
                    try:
                        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                            out = sdpa(qn, kn, v, is_causal=causal, scale=d ** -0.5)
                            err = _rel_err(out[:1, :2], ref)
                            t = ms(lambda: sdpa(qn, kn, v, is_causal=causal, scale=d ** -0.5))
                        row[f"cudnn d_qk={label}"] = f"{flash / t:.2f}" + ("" if err <= 2e-2 else f" (err {err:.1e})")
                    except Exception as e:  # cuDNN may refuse d_qk != d_v
                        row[f"cudnn d_qk={label}"] = type(e).__name__
                print(row, flush=True)
                rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
