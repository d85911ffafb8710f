"""The ceiling of a reduced grouped product: attention with the score dot at d_qk = d/G and no grouping at all.

    python scripts/probe_reduced_dqk.py                  # d=64 and 128, N=4096 and 16384, causal and not
    python scripts/probe_reduced_dqk.py --n 4096 --d 64

DistrAttention's "reduced" path runs QKᵀ with inner dimension d/G on a K̃ formed per key tile. Whatever forming K̃
costs, the call cannot be faster than attention whose scores simply have d/G columns. This probe times that bound
on the GPU, beside SDPA-flash and cuDNN at full d (the issue's baselines):
- "triton d_qk=k": a plain FlashAttention-2-style Triton forward (one query tile per program, online softmax in
  exp2, P·V at the full d), its tiles the best of a few configs; d_qk = d is its dense reference point;
- "cudnn d_qk=k": SDPA's cuDNN backend on q, k with d_qk columns and v with d (where it accepts the shapes);
- "triton K̃ dot G": the same kernel with d_qk = d/G scores on a K̃ that each program forms per key tile by a
  tensor-core dot of the K tile with its 128-row block's [d, d/G] fusion matrix (mean fusion, a random grouping:
  the kernel's cost, not the hash's); "dot ahead": each tile's K̃ formed one iteration earlier. One way to pay for
  K̃ that the product's kernel does not have; if it beats "triton d_qk=d" by a margin, it is worth building there.
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
def _probe_fwd(Q, K, V, O, A, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, H, N, NBLK, qk_scale2,
               D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, KT_DOT: tl.constexpr, GROUP_M: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head); q [N, D_QK], v, o [N, D_V] (last stride 1).
    k: [N, D_QK]; with KT_DOT > 0 [N, D_V], and each key tile's K̃ = k_tile · A_blk [BLOCK_N, D_QK] is formed on
    tensor cores from the query block's fusion matrix A_blk [D_V, D_QK] (A: [B·H·NBLK, D_V, D_QK], one per GROUP_M
    query rows): KT_DOT 1 in the tile's own iteration, 2 one iteration ahead (the next tile's K̃ at the end of the
    body, carried in fp32: compiled for sm_90, this keeps ptxas from serialising the wgmma pipeline at d=64)."""
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
    if KT_DOT > 0:
        blk = (pid_m * BLOCK_M) // GROUP_M
        a = tl.load(A + ((b * H + h) * NBLK + blk).to(tl.int64) * (D_V * D_QK) + offs_v[:, None] * D_QK
                    + offs_k[None, :])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_V], dtype=tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, N) if CAUSAL else N
    if KT_DOT == 2:  # the first tile's K̃
        offs_n = tl.arange(0, BLOCK_N)
        kt_next = tl.dot(tl.load(K + offs_n[:, None] * skn + offs_v[None, :], mask=(offs_n < N)[:, None], other=0.0),
                         a)
    for start_n in tl.range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        v = tl.load(V + offs_n[:, None] * svn + offs_v[None, :], mask=(offs_n < N)[:, None], other=0.0)
        if KT_DOT == 1:
            k = tl.load(K + offs_n[:, None] * skn + offs_v[None, :], mask=(offs_n < N)[:, None], other=0.0)
            k = tl.dot(k, a).to(v.dtype)  # K̃ [BLOCK_N, D_QK]
        elif KT_DOT == 2:
            k = kt_next.to(v.dtype)
        else:
            k = tl.load(K + offs_n[:, None] * skn + offs_k[None, :], mask=(offs_n < N)[:, None], other=0.0)
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
        if KT_DOT == 2:  # the next tile's K̃ (zeros past N)
            nxt = offs_n + BLOCK_N
            kt_next = tl.dot(tl.load(K + nxt[:, None] * skn + offs_v[None, :], mask=(nxt < N)[:, None], other=0.0),
                             a)
    o = acc / l_i[:, None]
    tl.store(O + b.to(tl.int64) * sob + h * soh + offs_m[:, None] * son + offs_v[None, :], o.to(O.dtype.element_ty),
             mask=(offs_m < N)[:, None])


# (block_m, block_n, num_warps, num_stages): the probe keeps the fastest per shape
CONFIGS = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3))


def probe_attention(q, k, v, causal: bool, config, fusion=None, group_m: int = 128, ahead: bool = False
                    ) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d_v)) v; q, k [B, H, N, d_qk], v [B, H, N, d_v], contiguous. The scale is d_v's, as
    DistrAttention's (the grouped scores keep the full head's scale). With ``fusion`` [B, H, ceil(N / group_m),
    d_v, d_qk] (the query blocks' fusion matrices, ``block_fusion``), k is [B, H, N, d_v] and the scores are
    q (k · fusion[block])ᵀ: K̃ formed per key tile by a dot (``ahead``: one key tile ahead). CUDA, or CPU tensors
    under the interpreter."""
    B, H, N, dqk = q.shape
    dv = v.shape[-1]
    bm, bn, warps, stages = config
    if fusion is not None and group_m % bm:
        raise ValueError(f"config block_m {bm} must divide group_m {group_m}")
    o = torch.empty_like(v)
    a = fusion.contiguous() if fusion is not None else q
    grid = (triton.cdiv(N, bm), B * H)
    _probe_fwd[grid](q, k, v, o, a, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2), H, N,
                     triton.cdiv(N, group_m), dv ** -0.5 * math.log2(math.e), D_QK=dqk, D_V=dv, BLOCK_M=bm,
                     BLOCK_N=bn, CAUSAL=causal, KT_DOT=0 if fusion is None else 1 + bool(ahead), GROUP_M=group_m,
                     num_warps=warps, num_stages=stages)
    return o


def block_fusion(q: torch.Tensor, group_size: int, group_m: int = 128, seed: int = 0):
    """Mean fusion with a random column grouping per query block (the probe times the kernel, not the hash):
    returns (q̃ [B, H, N, d/G] = each group's mean, A [B, H, ceil(N / group_m), d, d/G] with A[c, g] = 1 for the
    columns c of group g, so K̃ = K · A is each group's sum)."""
    B, H, N, d = q.shape
    if group_size < 1 or d % group_size:
        raise ValueError(f"group_size must divide the head dim {d}, got {group_size}")
    nb = triton.cdiv(N, group_m)
    gen = torch.Generator().manual_seed(seed)
    pos = torch.stack([torch.randperm(d, generator=gen) for _ in range(B * H * nb)]).view(B, H, nb, d)
    a = torch.nn.functional.one_hot(pos // group_size, d // group_size).to(q.device, q.dtype)  # [B, H, nb, d, d/G]
    qp = torch.nn.functional.pad(q.float(), (0, 0, 0, nb * group_m - N)).view(B, H, nb, group_m, d)
    qt = (qp @ a.float()).view(B, H, nb * group_m, d // group_size)[:, :, :N] / group_size  # block by block
    return qt.to(q.dtype).contiguous(), a


def grouped_reference(qt, k, v, a, causal: bool, group_m: int = 128) -> torch.Tensor:
    """What ``probe_attention(qt, k, v, ..., fusion=a)`` computes, in fp32 torch ops."""
    N, dv = k.shape[2], v.shape[-1]
    keys = torch.arange(N, device=k.device)
    out = []
    for blk, i0 in enumerate(range(0, N, group_m)):
        kt = k.float() @ a[:, :, blk].float()  # this block's K̃ [B, H, N, d/G]
        s = qt[:, :, i0:i0 + group_m].float() @ kt.transpose(-1, -2) * dv ** -0.5
        if causal:
            rows = torch.arange(i0, min(i0 + group_m, N), device=k.device)
            s = s.masked_fill(keys[None, :] > rows[:, None], float("-inf"))
        out.append(s.softmax(-1) @ v.float())
    return torch.cat(out, 2)


def _rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", nargs="+", type=int, default=[4096, 16384])
    ap.add_argument("--causal", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    ap.add_argument("--tokens", type=int, default=32768, help="B*N")
    ap.add_argument("--rep-ms", type=int, default=20)
    ap.add_argument("--ktilde-groups", nargs="*", type=int, default=[2, 4],
                    help="G of the K̃-by-dot rows (mean fusion, random grouping per 128-row block); none: skip them")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    bad = [(d, G) for d in args.d for G in args.ktilde_groups if G < 2 or d % G or d // G < 16]
    if bad:
        ap.error(f"--ktilde-groups: each G must be >= 2, divide every --d and leave d/G >= 16 (Triton's dots), "
                 f"got (d, G) = {bad}")
    if not torch.cuda.is_available():
        sys.exit("probe_reduced_dqk.py needs a CUDA device")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def ms(fn):
        return triton.testing.do_bench(fn, rep=args.rep_ms)

    def fastest(run, ref, flash, label):
        """'ratio (config)' of the fastest of CONFIGS for run(config), each checked against ref first."""
        best = None
        for cfg in CONFIGS:
            try:
                err = _rel_err(run(cfg)[:1, :2], ref)
                if err > 2e-2:
                    raise AssertionError(f"probe output differs from the reference: {err:.1e}")
                t = ms(lambda c=cfg: run(c))
            except Exception as e:  # a config that does not fit (shared memory) is skipped, and said
                print(f"  skip {label} {cfg}: {type(e).__name__}: {e}"[:160], flush=True)
                continue
            if best is None or t < best[0]:
                best = (t, cfg)
        return f"{flash / best[0]:.2f} {best[1]}" if best else "–"

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
                    row[f"triton d_qk={label}"] = fastest(
                        lambda c, qn=qn, kn=kn: probe_attention(qn, kn, v, causal, c), ref, flash, label)
                    try:
                        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                            out = sdpa(qn, kn, v, is_causal=causal, scale=d ** -0.5)
                            err = _rel_err(out[:1, :2], ref)
                            t = ms(lambda: sdpa(qn, kn, v, is_causal=causal, scale=d ** -0.5))
                        row[f"cudnn d_qk={label}"] = f"{flash / t:.2f}" + ("" if err <= 2e-2 else f" (err {err:.1e})")
                    except Exception as e:  # cuDNN may refuse d_qk != d_v
                        row[f"cudnn d_qk={label}"] = type(e).__name__
                for G in args.ktilde_groups:  # K̃ formed per key tile by a dot with the block's fusion matrix
                    qt, a = block_fusion(q, G)
                    ref = grouped_reference(qt[:1, :2], k[:1, :2], v[:1, :2], a[:1, :2], causal)
                    for ahead in (False, True):
                        name = f"triton K̃ dot{' ahead' if ahead else ''} G={G}"
                        row[name] = fastest(lambda c, qt=qt, a=a, ahead=ahead: probe_attention(
                            qt, k, v, causal, c, fusion=a, ahead=ahead), ref, flash, name)
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
