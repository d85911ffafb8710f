"""The exact window on top of exact-attention engines: the band's exact part and the merge of partial attentions.

``backend="sdpa"`` runs DistrAttention with an exact window W (N == M, no tensor mask) as three pieces:
- the keys left of the band, j <= i - W, grouped: exact attention of Q_eff on them is top-left causal attention
  of Q_eff[W:] on K[:N-W], one fast SDPA call that also returns each row's log-sum-exp;
- (not causal) the keys right of it, j >= i + W: the same call on the reversed sequences;
- the band |i - j| < W, exact: this module's kernel. For each query tile it computes the band's exact and grouped
  scores (σ², the row's mean squared grouped-vs-exact error over its band keys, gives the correction
  δ = c·σ²/2 that lowers every grouped score of the row), the band's exact softmax partial, and merges it with
  the grouped partials, each weighted by exp(its log-sum-exp - δ).
The result is the fused kernel's function: one softmax over exact band scores and corrected grouped scores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# One program: BLOCK_M query rows of one (batch, head); it visits the key tiles that meet the rows' band.
BLOCK_M = 64
BLOCK_N = 64


@triton.jit
def _band_merge_kernel(Q, QE, K, V, OL, LL, OR, LR, O,
                       stride_qb, stride_qh, stride_qn, stride_qd,
                       stride_eb, stride_eh, stride_en, stride_ed,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_lb, stride_lh, stride_ln, stride_ld,
                       stride_rb, stride_rh, stride_rn, stride_rd,
                       stride_ob, stride_oh, stride_on, stride_od,
                       Hq, N, NP, KV_REP, WINDOW, scale, half_corr,
                       HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """O[i] = merge(exact band partial, left partial OL/LL at row i - W, right partial OR/LR at row N-1-W-i).
    LL, LR: contiguous fp32 [B, Hq, NP] natural-log log-sum-exps of the partials (NP = N - W rows)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // KV_REP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    row_ok = offs_m < N
    qmask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qn
                + offs_d[None, :] * stride_qd, mask=qmask, other=0.0)
    qe = tl.load(QE + b.to(tl.int64) * stride_eb + h.to(tl.int64) * stride_eh + offs_m[:, None] * stride_en
                 + offs_d[None, :] * stride_ed, mask=qmask, other=0.0)
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh

    lo = (tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M, N)
    else:
        hi = tl.minimum(m0 + BLOCK_M - 1 + WINDOW, N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kvmask = (offs_n < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kvmask, other=0.0)
        se = tl.dot(q, tl.trans(k)) * scale
        sg = tl.dot(qe, tl.trans(k)) * scale
        dist = offs_m[:, None] - offs_n[None, :]
        band = (dist < WINDOW) & (dist > -WINDOW) & (offs_n < N)[None, :] & row_ok[:, None]
        if CAUSAL:
            band = band & (dist >= 0)
        diff = tl.where(band, sg - se, 0.0)
        sq += tl.sum(diff * diff, 1)
        cnt += tl.sum(band.to(tl.float32), 1)
        s = tl.where(band, se, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(s - m_ref[:, None])
        vt = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kvmask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    delta = half_corr * sq / tl.maximum(cnt, 1.0)
    has_b = l_i > 0
    lse_b = tl.where(has_b, m_i + tl.log(tl.where(has_b, l_i, 1.0)), float("-inf"))
    out_b = acc / tl.where(has_b, l_i, 1.0)[:, None]
    lse_l = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    lse_r = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    rl = offs_m - WINDOW
    ok_l = row_ok & (rl >= 0)
    rr = N - 1 - WINDOW - offs_m
    ok_r = row_ok & (rr >= 0)
    if HAS_LEFT:
        lse_l = tl.load(LL + pid_bh.to(tl.int64) * NP + rl, mask=ok_l, other=float("-inf")) - delta
    if HAS_RIGHT:
        lse_r = tl.load(LR + pid_bh.to(tl.int64) * NP + rr, mask=ok_r, other=float("-inf")) - delta
    mx = tl.maximum(lse_b, tl.maximum(lse_l, lse_r))
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w_b = tl.exp(lse_b - mx)
    w_l = tl.exp(lse_l - mx)
    w_r = tl.exp(lse_r - mx)
    num = out_b * w_b[:, None]
    if HAS_LEFT:
        ol = tl.load(OL + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + rl[:, None] * stride_ln
                     + offs_d[None, :] * stride_ld, mask=ok_l[:, None] & qmask, other=0.0).to(tl.float32)
        num += ol * w_l[:, None]
    if HAS_RIGHT:
        orr = tl.load(OR + b.to(tl.int64) * stride_rb + h.to(tl.int64) * stride_rh + rr[:, None] * stride_rn
                      + offs_d[None, :] * stride_rd, mask=ok_r[:, None] & qmask, other=0.0).to(tl.float32)
        num += orr * w_r[:, None]
    den = w_b + w_l + w_r
    out = num / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_on
             + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=qmask)


def band_merge(q: torch.Tensor, qe: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left, right, *, causal: bool,
               window: int, scale: float, window_correction: float) -> torch.Tensor:
    """The windowed output [B, Hq, N, d] in q's dtype (Triton; CUDA or the interpreter).

    q: the exact queries, qe: Q_eff, both [B, Hq, N, d]; k, v: [B, Hkv, N, d]. left / right: None or
    (out [B, Hq, N - W, d], lse [B, Hq, N - W] natural log) of the grouped partials: left row r is query r + W,
    right row r is query N - 1 - W - r. The grouped partials are lowered by c·σ²/2 here.
    """
    B, Hq, N, d = q.shape
    NP = max(N - window, 0)
    d_pad = triton.next_power_of_2(max(d, 16))
    o = torch.empty_like(q)
    dummy_o, dummy_l = q, q.new_empty(1, dtype=torch.float32)

    def part(p):
        if p is None:
            return dummy_o, dummy_l, (0, 0, 0, 0)
        out, lse = p
        return out, lse.reshape(B, Hq, NP).float().contiguous(), out.stride()

    ol, ll, sl = part(left)
    orr, lr, sr = part(right)
    grid = (triton.cdiv(N, BLOCK_M), B * Hq)
    _band_merge_kernel[grid](
        q, qe, k, v, ol, ll, orr, lr, o,
        *q.stride(), *qe.stride(), *k.stride(), *v.stride(), *sl, *sr, *o.stride(),
        Hq, N, NP, Hq // k.shape[1], window, scale, 0.5 * window_correction,
        HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=bool(causal),
        HAS_LEFT=left is not None, HAS_RIGHT=right is not None, num_warps=4)
    return o


def band_merge_torch(q, qe, k, v, left, right, *, causal: bool, window: int, scale: float,
                     window_correction: float) -> torch.Tensor:
    """``band_merge`` in torch ops, with dense [N, N] scores (the CPU path of small calls; fp32 math)."""
    B, Hq, N, d = q.shape
    rep = Hq // k.shape[1]
    kf, vf = (t.repeat_interleave(rep, dim=1).float() for t in (k, v))
    se = q.float() @ kf.transpose(-1, -2) * scale
    sg = qe.float() @ kf.transpose(-1, -2) * scale
    i = torch.arange(N, device=q.device)
    dist = i[:, None] - i[None, :]
    band = dist.abs() < window
    if causal:
        band = band & (dist >= 0)
    cnt = band.sum(-1).clamp(min=1)
    delta = 0.5 * window_correction * torch.where(band, (sg - se) ** 2, 0.0).sum(-1) / cnt  # [B, Hq, N]
    lse_b = torch.logsumexp(se.masked_fill(~band, float("-inf")), -1)
    out_b = torch.softmax(se.masked_fill(~band, float("-inf")), -1) @ vf
    lses, outs = [lse_b], [out_b]
    NP = max(N - window, 0)
    for p, rows in ((left, i - window), (right, N - 1 - window - i)):
        if p is None:
            continue
        ok = rows >= 0
        idx = rows.clamp(min=0, max=max(NP - 1, 0))
        out_p, lse_p = p
        lse_p = lse_p.reshape(B, Hq, NP).float()[..., idx]
        lses.append(torch.where(ok, lse_p - delta, float("-inf")))
        outs.append(out_p.float()[..., idx, :])
    lse = torch.stack(lses)  # [P, B, Hq, N]
    mx = lse.amax(0).clamp(min=torch.finfo(torch.float32).min)
    w = torch.exp(lse - mx)
    out = sum(wp[..., None] * torch.nan_to_num(op) for wp, op in zip(w, outs)) / w.sum(0).clamp(min=1e-30)[..., None]
    return out.to(q.dtype)
