"""The exact window on top of exact-attention engines: the band's exact part and the merge of partial attentions.

``backend="sdpa"`` runs DistrAttention with an exact window W (N == M, no tensor mask, forward only) in pieces:
- the keys left of the band, j <= i - W, grouped: top-left causal attention of Q_eff[W:] on K[:N-W], one SDPA call
  that also returns each row's log-sum-exp (partial row r is query r + W);
- not causal, the keys right of it, j >= i + W: the same call on the reversed sequences (partial row r is query
  N - 1 - W - r);
- this module's kernel: for each query tile the band's exact and grouped scores. σ², the row's mean squared
  grouped-vs-exact error over its band keys, gives δ = c·σ²/2, which lowers every grouped score of the row, so each
  grouped partial is weighted by exp(its log-sum-exp - δ); the band's exact softmax partial joins them.
The result is the fused kernel's function: one softmax over exact band scores and corrected grouped scores.
The pieces are sums over disjoint key sets, so nothing is subtracted. (Taking the band's grouped part back out of
one full grouped call would save a call, but where grouped scores overshoot in the band, the remainder is a
small difference of large sums: on heavy-tailed inputs that lost 4 digits in fp32, all of them in bf16.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import BandConfig, band_config, interpreting
from .launch import cdiv, launch, next_power_of_2

LOG2E = 1.4426950408889634


@triton.jit
def _grouped_partial(LP, OP, pid_bh, b, h, rows, ok, NP, stride_pb, stride_ph, stride_pn, stride_pd, offs_d, qmask):
    """A grouped partial's rows: its log-sum-exp (log2 units; -inf where not ok) and its output (its dtype)."""
    lse = tl.load(LP + pid_bh.to(tl.int64) * NP + rows, mask=ok, other=float("-inf"))
    out = tl.load(OP + b.to(tl.int64) * stride_pb + h.to(tl.int64) * stride_ph + rows[:, None] * stride_pn
                  + offs_d[None, :] * stride_pd, mask=ok[:, None] & qmask, other=0.0)
    return lse, out


@triton.jit
def _grouped_partials(LL, OL, LR, OR, pid_bh, b, h, offs_m, row_ok, N, NP, WINDOW,
                      stride_lb, stride_lh, stride_ln, stride_ld, stride_rb, stride_rh, stride_rn, stride_rd,
                      offs_d, qmask, BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, HAS_LEFT: tl.constexpr,
                      HAS_RIGHT: tl.constexpr):
    """Both grouped partials' rows for the tile's queries (a missing one: -inf and zeros)."""
    lse_l = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    lse_r = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    out_l = tl.zeros([BLOCK_M, D_PAD], dtype=OL.dtype.element_ty)
    out_r = tl.zeros([BLOCK_M, D_PAD], dtype=OR.dtype.element_ty)
    if HAS_LEFT:  # left partial row r is query r + W
        rows = offs_m - WINDOW
        lse_l, out_l = _grouped_partial(LL, OL, pid_bh, b, h, rows, row_ok & (rows >= 0), NP,
                                        stride_lb, stride_lh, stride_ln, stride_ld, offs_d, qmask)
    if HAS_RIGHT:  # right partial row r is query N - 1 - W - r
        rows = N - 1 - WINDOW - offs_m
        lse_r, out_r = _grouped_partial(LR, OR, pid_bh, b, h, rows, row_ok & (rows >= 0), NP,
                                        stride_rb, stride_rh, stride_rn, stride_rd, offs_d, qmask)
    return lse_l, out_l, lse_r, out_r


@triton.jit
def _band_tile(q, qe, K, V, start_n, offs_m, offs_d, m_i, l_i, acc, sq, N, WINDOW, qk_scale2,
               stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr, DEFER: tl.constexpr, F32_DOTS: tl.constexpr):
    """One key tile of the band: the exact scores into the online softmax (m_i, l_i, acc), the squared
    grouped-minus-exact scores into sq (per row [BLOCK_M], or with DEFER per entry [BLOCK_M, BLOCK_N], summed over
    the keys after the loop); keys outside a row's band (or past N) are left out."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    kvmask = (offs_n < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kvmask, other=0.0)
    vt = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kvmask, other=0.0)
    if F32_DOTS:  # (q and qe come converted)
        k = k.to(tl.float32)
        vt = vt.to(tl.float32)
    se = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
    sg = tl.dot(qe, tl.trans(k), input_precision=DOT_PREC) * qk_scale2
    dist = offs_m[:, None] - offs_n[None, :]
    band = (dist < WINDOW) & (dist > -WINDOW) & (offs_n < N)[None, :]
    if CAUSAL:
        band = band & (dist >= 0)
    diff = tl.where(band, sg - se, 0.0)
    s = tl.where(band, se, float("-inf"))
    if DEFER:
        sq += diff * diff
    else:
        sq += tl.sum(diff * diff, 1)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_ref)
    p = tl.math.exp2(s - m_ref[:, None])
    acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PREC)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc, sq


@triton.jit
def _band_merge_kernel(Q, QE, K, V, OL, LL, OR, LR, O,
                       stride_qb, stride_qh, stride_qn, stride_qd,
                       stride_eb, stride_eh, stride_en, stride_ed,
                       stride_kb, stride_kh, stride_kn, stride_kd,
                       stride_vb, stride_vh, stride_vn, stride_vd,
                       stride_lb, stride_lh, stride_ln, stride_ld,
                       stride_rb, stride_rh, stride_rn, stride_rd,
                       stride_ob, stride_oh, stride_on, stride_od,
                       Hq, N, NP, KV_REP, WINDOW, qk_scale2, half_corr2,
                       HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       CAUSAL: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                       DOT_PREC: tl.constexpr, DEFER: tl.constexpr, F32_DOTS: tl.constexpr):
    """One program: BLOCK_M query rows of one (batch, head). Scores in log2 units (qk_scale2 = scale·log2 e).
    OL / OR [B, Hq, NP, d] and LL / LR fp32 contiguous [B, Hq, NP] (log2 units): the grouped partials left and
    right of the band and their log-sum-exps, loaded after the band loop."""
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
    if F32_DOTS:  # the interpreter's bf16 dots are wrong: fp32 operands there (band_merge)
        q = q.to(tl.float32)
        qe = qe.to(tl.float32)
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh

    # the band of rows [m0, m0 + BLOCK_M): keys |i - j| < W (and j <= i when causal)
    lo = (tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(m0 + BLOCK_M, N)
    else:
        hi = tl.minimum(m0 + BLOCK_M - 1 + WINDOW, N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    if DEFER:  # BandConfig.deferred_sums
        sq = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    # the row's band keys, counted: [max(i - W + 1, 0), min(i + W - 1, N - 1)] (causal: up to i)
    if CAUSAL:
        cnt = (offs_m - tl.maximum(offs_m - WINDOW + 1, 0) + 1).to(tl.float32)
    else:
        cnt = (tl.minimum(offs_m + WINDOW - 1, N - 1) - tl.maximum(offs_m - WINDOW + 1, 0) + 1).to(tl.float32)
    for start_n in tl.range(lo, hi, BLOCK_N):
        m_i, l_i, acc, sq = _band_tile(q, qe, K, V, start_n, offs_m, offs_d, m_i, l_i, acc, sq, N, WINDOW,
                                       qk_scale2, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, BLOCK_N,
                                       CAUSAL, DOT_PREC, DEFER, F32_DOTS)
    if DEFER:
        sq = tl.sum(sq, 1)

    # δ in log2 units: half_corr2 = (c / 2)·log2 e; σ² from scores in log2 units, divided by (log2 e)²
    delta = half_corr2 * sq / tl.maximum(cnt, 1.0) * (1.0 / (1.4426950408889634 * 1.4426950408889634))
    lse_b = tl.where(l_i > 0, m_i + tl.math.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    out_b = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    lse_l, out_l, lse_r, out_r = _grouped_partials(
        LL, OL, LR, OR, pid_bh, b, h, offs_m, row_ok, N, NP, WINDOW, stride_lb, stride_lh, stride_ln, stride_ld,
        stride_rb, stride_rh, stride_rn, stride_rd, offs_d, qmask, BLOCK_M, D_PAD, HAS_LEFT, HAS_RIGHT)
    if HAS_LEFT:  # each grouped score of the row is lowered by δ
        lse_l = lse_l - delta
    if HAS_RIGHT:
        lse_r = lse_r - delta
    mx = tl.maximum(lse_b, tl.maximum(lse_l, lse_r))
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    w_b = tl.math.exp2(lse_b - mx)
    w_l = tl.math.exp2(lse_l - mx)
    w_r = tl.math.exp2(lse_r - mx)
    den = w_b + w_l + w_r
    out = (out_b * w_b[:, None] + out_l.to(tl.float32) * w_l[:, None] + out_r.to(tl.float32) * w_r[:, None]) \
        / tl.where(den > 0, den, 1.0)[:, None]
    tl.store(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_on
             + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=qmask)


def band_merge(q: torch.Tensor, qe: torch.Tensor, k: torch.Tensor, v: torch.Tensor, left, right, *, causal: bool,
               window: int, scale: float, window_correction: float, config: BandConfig | None = None) -> torch.Tensor:
    """The windowed output [B, Hq, N, d] in q's dtype (Triton; CUDA or the interpreter).

    q: the exact queries, qe: Q_eff, both [B, Hq, N, d]; k, v: [B, Hkv, N, d]. left / right: None or
    (out [B, Hq, N - W, d], lse [B, Hq, N - W] natural log), the grouped partials (uncorrected) left and right of
    the band, rows as in the module docstring. config: the tiles (default ``configs.band_config``).
    """
    B, Hq, N, d = q.shape
    NP = max(N - window, 0)
    cfg = config or band_config(causal)
    o = torch.empty_like(q)

    def part(p):
        if p is None:
            return q, q.new_empty(1, dtype=torch.float32), (0, 0, 0, 0)
        out, lse = p
        return out, (lse.reshape(B, Hq, NP).float() * LOG2E).contiguous(), out.stride()

    ol, ll, sl = part(left)
    orr, lr, sr = part(right)
    grid = (cdiv(N, cfg.block_m), B * Hq)
    f32_dots = q.dtype == torch.bfloat16 and interpreting()  # as distr_attn._dot_dtype: the interpreter's bf16 dots
    launch(_band_merge_kernel, grid,
        q, qe, k, v, ol, ll, orr, lr, o,
        *q.stride(), *qe.stride(), *k.stride(), *v.stride(), *sl, *sr, *o.stride(),
        Hq, N, NP, Hq // k.shape[1], window, scale * LOG2E, 0.5 * window_correction * LOG2E,
        HEAD_DIM=d, D_PAD=next_power_of_2(max(d, 16)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        CAUSAL=bool(causal), HAS_LEFT=left is not None, HAS_RIGHT=right is not None,
        DOT_PREC="ieee" if q.dtype == torch.float32 or f32_dots else "tf32", DEFER=bool(cfg.deferred_sums),
        F32_DOTS=f32_dots, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return o


def band_merge_torch(q, qe, k, v, left, right, *, causal: bool, window: int, scale: float,
                     window_correction: float, block: int = 128) -> torch.Tensor:
    """``band_merge`` in torch ops (the CPU path; fp32 math), ``block`` query rows at a time, each against the keys of
    its band only: O(block·(block + 2W)) scores per (batch, head), not O(N²)."""
    B, Hq, N, d = q.shape
    rep = Hq // k.shape[1]
    kf, vf = (t.repeat_interleave(rep, dim=1).float() for t in (k, v))
    NP = max(N - window, 0)
    parts = [(p[0].float(), p[1].reshape(B, Hq, NP).float(), rows_of)
             for p, rows_of in ((left, lambda i: i - window), (right, lambda i: N - 1 - window - i)) if p is not None]
    out = torch.empty(B, Hq, N, d, dtype=q.dtype, device=q.device)
    for m0 in range(0, N, block):
        i = torch.arange(m0, min(m0 + block, N), device=q.device)
        lo, hi = max(m0 - window + 1, 0), min(int(i[-1]) + (1 if causal else window), N)
        j = torch.arange(lo, hi, device=q.device)
        se = q[:, :, i].float() @ kf[:, :, lo:hi].transpose(-1, -2) * scale
        sg = qe[:, :, i].float() @ kf[:, :, lo:hi].transpose(-1, -2) * scale
        dist = i[:, None] - j[None, :]
        band = dist.abs() < window
        if causal:
            band = band & (dist >= 0)
        delta = 0.5 * window_correction * torch.where(band, (sg - se) ** 2, 0.0).sum(-1) / band.sum(-1).clamp(min=1)
        se = se.masked_fill(~band, float("-inf"))
        lses = [torch.logsumexp(se, -1)]  # [B, Hq, rows] each
        outs = [torch.nan_to_num(torch.softmax(se, -1)) @ vf[:, :, lo:hi]]
        for out_p, lse_p, rows_of in parts:
            rows = rows_of(i)
            idx = rows.clamp(min=0, max=max(NP - 1, 0))
            lses.append(torch.where(rows >= 0, lse_p[..., idx] - delta, float("-inf")))
            outs.append(out_p[..., idx, :])
        lse = torch.stack(lses)  # [pieces, B, Hq, rows]
        w = torch.exp(lse - lse.amax(0).clamp(min=torch.finfo(torch.float32).min))
        num = sum(wp[..., None] * op for wp, op in zip(w, outs))
        out[:, :, i] = (num / w.sum(0).clamp(min=1e-30)[..., None]).to(q.dtype)
    return out
