"""Backward of DistrAttention: FlashAttention-2-style Triton kernels, O(N·d) extra memory.

The grouped scores are ``S_g = scale · Q̃ K̃ᵀ = scale · Q_eff Kᵀ`` with
``Q_eff[:, j] = b_j Q̃[:, group(j)]`` (per grouping block of ``block_m`` query rows; see
``grouping.fused_queries``). Q_eff is formed once (``_regroup_kernel``); the grouping and the
fusion weights are constants. The backward is then the FA2 backward over the scores

    s_ij = scale·e_ij            in the exact band |i + M - N - j| < W      (e = q_i·k_j)
    s_ij = scale·g_ij - (c/2)σ²_i  elsewhere                                (g = q_eff_i·k_j)

(plus the additive mask and the masks), recomputing ``P = exp2(s·log2e - lse)`` tile by tile
from the forward's row log-sum-exp (log2 units). With ``dS = P∘(dO Vᵀ - Δ)``,
``Δ = rowsum(dO∘O)``:

- dV = Pᵀ dO;
- out of the band, dS flows to the grouped scores; in the band, to the exact ones;
- the correction: σ²_i is the mean of (g - e)² (scaled) over A_i, the row's attendable band
  entries (n_i of them). ρ_i = dL/dσ²_i = -(c/2)·Σ_{j∉band} dS_ij = (c/2)·Σ_{j∈band} dS_ij
  (rows of dS sum to 0), so with κ_i = 2ρ_i/n_i the grouped scores also get κ_i·(g - e)
  on A_i and the exact ones -κ_i·(g - e) there (g, e scaled);
- dK = scale·(dGᵀ Q_eff + dEᵀ Q), dQ_eff = scale·dG K, dQ_exact = scale·dE K, and finally
  dQ̃[:, g] = Σ_{j∈g} b_j dQ_eff[:, j], dQ[:, i] = a_i dQ̃[:, group(i)] + dQ_exact[:, i]
  (``_regroup_kernel`` again, with a and b swapped: the map is Q -> Q W, its adjoint Q -> Q Wᵀ).

Kernels: a per-row preprocess (Δ; with c > 0 also σ² and κ, from the band tiles only), a
dK/dV kernel (one program per (batch, kv head, key tile), looping over the kv head's query
heads (GQA) and their query tiles, skipping the tiles causality masks out) and a dQ kernel
(one program per query tile, looping over key tiles). With an exact window only the tiles
that meet the band are "mixed" (both products, two score tiles, plus dQ_exact in the dQ
kernel); they step in sub-tiles of the plain ones (``BwdConfig.kv_band_m`` query rows,
``q_band_n`` keys, also the preprocess's band tiles), every other tile runs at the no-window
tiles. The dQ kernel does the band first and stores dQ_exact before the plain key tiles, so
only one [BM, d] accumulator stays live there (H200, N=4096: the window's forward+backward 6–13%
faster at d=128; docs/benchmarks.md, "exact window: band sub-tiles").
Masks follow the forward: bottom-right causal, bool / additive tensor masks broadcast to
[B, Hq, N, M], key/query tails, fully masked rows (lse = +inf, so P = 0 and their gradient is 0).
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl

from .configs import DQ_TILE_ORDERS, TILE_ORDERS, BwdConfig, bwd_config, tile_order_code
from .distr_attn import LOG2E, _dot_dtype, _key_segments, _mask_operand, tile_descriptors
from .launch import cdiv, launch, next_power_of_2
from .regroup import inverse_groups, regroup, regroup_tile_store


# --------------------------------------------------------------------------- helpers
@triton.jit
def _ok2(mi, nj, N, M, MASKP, stride_mn, stride_mm,
         CAUSAL: tl.constexpr, CHECK: tl.constexpr, MASK_KIND: tl.constexpr):
    """Which (row, key) pairs may attend, but for an additive mask's -inf entries (the caller
    has the mask's values). mi / nj: row and key indices as broadcastable 2-D tensors
    ([BM, 1] and [1, BN], or transposed), so one helper serves both orientations."""
    ok = (mi >= 0) & (nj >= 0)
    if CHECK:
        ok = ok & (nj < M)
        if CAUSAL:
            ok = ok & (nj <= mi + (M - N))
    if MASK_KIND == 1:
        mv = tl.load(MASKP + mi * stride_mn + nj * stride_mm, mask=(mi < N) & (nj < M), other=0)
        ok = ok & (mv != 0)
    return ok


@triton.jit
def _load_2d(P, r, c, R, C, stride_r, stride_c):
    """P[r, c] for broadcastable 2-D index tensors r, c; zeros where r >= R or c >= C."""
    return tl.load(P + r * stride_r + c * stride_c, mask=(r < R) & (c < C), other=0.0)


@triton.jit
def _scores2(gdot, edot, kappa, corr2, mi, nj, N, M, WINDOW, scale, qk_scale2, MASKP, stride_mn, stride_mm,
             CAUSAL: tl.constexpr, CHECK: tl.constexpr, MIXED: tl.constexpr, HAS_CORR: tl.constexpr,
             MASK_KIND: tl.constexpr):
    """Final scores in log2 units (-inf where not allowed), the band selector and, for the
    correction, the term κ·(g - e) on A (band ∩ attendable), all in the tile's orientation.

    gdot = Q_eff·K (the exact product for G = 1), edot = Q·K (used when MIXED).
    """
    s = gdot * qk_scale2
    if HAS_CORR:
        s = s - corr2
    inb = (mi < 0)  # all False
    t = gdot * 0.0
    if MIXED:
        dist = mi + (M - N) - nj
        inb = (dist < WINDOW) & (dist > -WINDOW)
        s = tl.where(inb, edot * qk_scale2, s)
    if CHECK or MASK_KIND == 1:
        ok = _ok2(mi, nj, N, M, MASKP, stride_mn, stride_mm, CAUSAL, CHECK, MASK_KIND)
    else:
        ok = (mi >= 0) & (nj >= 0)
    if MASK_KIND == 2:
        mv = tl.load(MASKP + mi * stride_mn + nj * stride_mm, mask=(mi < N) & (nj < M), other=float("-inf"))
        s = s + mv * 1.4426950408889634
        ok = ok & (mv > float("-inf"))
    if CHECK or MASK_KIND != 0:
        s = tl.where(ok, s, float("-inf"))
        if MIXED and HAS_CORR:
            t = tl.where(inb & ok, kappa * ((gdot - edot) * scale), 0.0)
    elif MIXED and HAS_CORR:
        t = tl.where(inb, kappa * ((gdot - edot) * scale), 0.0)
    return s, inb, t


# --------------------------------------------------------------------------- preprocess
@triton.jit
def _bwd_preprocess_kernel(
    O, DO, QE, Q, K, V, LSE, DELTA, CORR, KAPPA, MASK,
    scale, qk_scale2, half_corr, corr_c,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_qeb, stride_qeh, stride_qen, stride_qed,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_mb, stride_mh, stride_mn, stride_mm,
    Hq, N, M, KV_REP, WINDOW,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BAND_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_CORR: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PREC: tl.constexpr, DOT_T: tl.constexpr,
):
    """Per query tile: Δ = rowsum(dO∘O); with the correction also σ² (stored as the log2-unit
    shift (c/2)·σ²·log2e) and κ = c·Σ_{band} dS / n, from the band's BAND_N-key tiles only."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // KV_REP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mi = offs_m[:, None]
    dcol = offs_d[None, :]
    o = _load_2d(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh, mi, dcol, N, HEAD_DIM,
                 stride_on, stride_od).to(tl.float32)
    do = _load_2d(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh, mi, dcol, N, HEAD_DIM,
                  stride_don, stride_dod).to(tl.float32)
    delta = tl.sum(o * do, 1)
    row = pid_bh.to(tl.int64) * N + offs_m
    tl.store(DELTA + row, delta, mask=offs_m < N)
    if HAS_CORR:
        QE += b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh
        Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
        V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
        MASKP = MASK
        if MASK_KIND != 0:
            MASKP = MASK + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
        qe = _load_2d(QE, mi, dcol, N, HEAD_DIM, stride_qen, stride_qed).to(DOT_T)
        q = _load_2d(Q, mi, dcol, N, HEAD_DIM, stride_qn, stride_qd).to(DOT_T)
        do_t = do.to(DOT_T)
        lse = tl.load(LSE + row, mask=offs_m < N, other=float("inf"))
        off = M - N
        hi, _a, _b, _c, band_lo, band_hi = _key_segments(m0, N, M, WINDOW, BLOCK_M, BAND_N, CAUSAL, True)
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
        cnt = tl.zeros([BLOCK_M], dtype=tl.float32)
        sds = tl.zeros([BLOCK_M], dtype=tl.float32)
        dtr = offs_d[:, None]
        for start_n in range(band_lo, band_hi, BAND_N):
            offs_n = start_n + tl.arange(0, BAND_N)
            nj = offs_n[None, :]
            kt = _load_2d(K, nj, dtr, M, HEAD_DIM, stride_kn, stride_kd).to(DOT_T)  # [D_PAD, BN]
            vt = _load_2d(V, nj, dtr, M, HEAD_DIM, stride_vn, stride_vd).to(DOT_T)
            gdot = tl.dot(qe, kt, input_precision=DOT_PREC)
            edot = tl.dot(q, kt, input_precision=DOT_PREC)
            dist = mi + off - nj
            sel = (dist < WINDOW) & (dist > -WINDOW)
            sel = sel & _ok2(mi, nj, N, M, MASKP, stride_mn, stride_mm, CAUSAL, True, MASK_KIND)
            s = edot * qk_scale2
            if MASK_KIND == 2:
                mv = tl.load(MASKP + mi * stride_mn + nj * stride_mm, mask=(mi < N) & (nj < M),
                             other=float("-inf"))
                sel = sel & (mv > float("-inf"))
                s = s + tl.where(sel, mv, 0.0) * 1.4426950408889634
            p = tl.where(sel, tl.math.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do_t, vt, input_precision=DOT_PREC)
            sds += tl.sum(p * (dp - delta[:, None]), 1)
            diff = (gdot - edot) * scale
            sq += tl.sum(tl.where(sel, diff * diff, 0.0), 1)
            cnt += tl.sum(sel.to(tl.float32), 1)
        sigma2 = tl.where(cnt > 0, sq / tl.maximum(cnt, 1.0), 0.0)
        kappa = tl.where(cnt > 0, corr_c * sds / tl.maximum(cnt, 1.0), 0.0)
        tl.store(CORR + row, half_corr * sigma2 * 1.4426950408889634, mask=offs_m < N)
        tl.store(KAPPA + row, kappa, mask=offs_m < N)


# --------------------------------------------------------------------------- dK / dV
@triton.jit
def _dkdv_tiles(dk, dv, k, v, lo, hi, QE, Q, DO, QED, DOD, kb, h, LSE, DELTA, CORR, KAPPA, MASKP, DQA, offs_n, N,
                M, WINDOW, scale, qk_scale2,
                stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn, stride_mm,
                stride_dqan,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                CAUSAL: tl.constexpr, CHECK: tl.constexpr, MIXED: tl.constexpr, HAS_CORR: tl.constexpr,
                MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                TMA: tl.constexpr):
    """Query tiles [lo, hi) against one key tile, transposed orientation ([BN, BM] scores).
    With TMA (plain tiles only) the Q_eff and dO tiles of (batch kb, query head h) come through the tensor
    descriptors QED / DOD (blocks [1, 1, BLOCK_M, D_PAD], zero-filled past N and d) instead of pointer loads.
    With ATOMIC_DQ (no band tiles) each query tile's scale·dS K is also added to the fp32 dQ_eff
    buffer DQA ([N, d] rows of stride ``stride_dqan``) with atomics."""
    tl.static_assert(not (ATOMIC_DQ and MIXED), "atomic dQ is for calls without an exact window")
    tl.static_assert(not (TMA and MIXED), "descriptor loads are for the plain tiles")
    offs_d = tl.arange(0, D_PAD)
    nj = offs_n[:, None]
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mi = offs_m[None, :]
        rmask = offs_m < N
        if TMA:
            qet = tl.trans(QED.load([kb, h, start_m, 0]).reshape([BLOCK_M, D_PAD])).to(DOT_T)
        else:
            qet = _load_2d(QE, mi, offs_d[:, None], N, HEAD_DIM, stride_qen, stride_qed).to(DOT_T)  # [D_PAD, BM]
        gdot = tl.dot(k, qet, input_precision=DOT_PREC)  # [BN, BM]
        edot = gdot
        qt = qet
        if MIXED:
            qt = _load_2d(Q, mi, offs_d[:, None], N, HEAD_DIM, stride_qn, stride_qd).to(DOT_T)
            edot = tl.dot(k, qt, input_precision=DOT_PREC)
        corr2 = tl.zeros([1, BLOCK_M], dtype=tl.float32)
        kappa = tl.zeros([1, BLOCK_M], dtype=tl.float32)
        if HAS_CORR:
            corr2 = tl.load(CORR + offs_m, mask=rmask, other=0.0)[None, :]
            if MIXED:
                kappa = tl.load(KAPPA + offs_m, mask=rmask, other=0.0)[None, :]
        s, inb, t = _scores2(gdot, edot, kappa, corr2, mi, nj, N, M, WINDOW, scale, qk_scale2, MASKP,
                             stride_mn, stride_mm, CAUSAL, CHECK, MIXED, HAS_CORR, MASK_KIND)
        lse = tl.load(LSE + offs_m, mask=rmask, other=float("inf"))
        p = tl.math.exp2(s - lse[None, :])  # Pᵀ
        if TMA:
            do = DOD.load([kb, h, start_m, 0]).reshape([BLOCK_M, D_PAD]).to(DOT_T)
        else:
            do = _load_2d(DO, offs_m[:, None], offs_d[None, :], N, HEAD_DIM, stride_don, stride_dod).to(DOT_T)
        dv = tl.dot(p.to(DOT_T), do, dv, input_precision=DOT_PREC)
        dp = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)  # (dO Vᵀ)ᵀ
        delta = tl.load(DELTA + offs_m, mask=rmask, other=0.0)
        ds = p * (dp - delta[None, :])
        if MIXED:
            dg = tl.where(inb, t, ds)
            de = tl.where(inb, ds - t, 0.0)
            dk = tl.dot(dg.to(DOT_T), tl.trans(qet), dk, input_precision=DOT_PREC)
            dk = tl.dot(de.to(DOT_T), tl.trans(qt), dk, input_precision=DOT_PREC)
        else:
            ds_t = ds.to(DOT_T)
            dk = tl.dot(ds_t, tl.trans(qet), dk, input_precision=DOT_PREC)
            if ATOMIC_DQ:  # dQ_eff rows of this query tile: (dSᵀ K)·scale, summed over key tiles in L2
                dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PREC) * scale  # [BM, D_PAD]
                tl.atomic_add(DQA + offs_m[:, None] * stride_dqan + offs_d[None, :], dq,
                              mask=rmask[:, None] & (offs_d < HEAD_DIM)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    QE, Q, K, V, DO, DK, DV, LSE, DELTA, CORR, KAPPA, MASK, DQA, QED, DOD,
    scale, qk_scale2,
    stride_qeb, stride_qeh, stride_qen, stride_qed,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dks, stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvs, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mb, stride_mh, stride_mn, stride_mm,
    stride_dqab, stride_dqah, stride_dqan,
    Hq, Hkv, N, M, KV_REP, REP_PER, SPLIT, WINDOW,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BAND_M: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CORR: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PREC: tl.constexpr, DOT_T: tl.constexpr, ATOMIC_DQ: tl.constexpr, TMA: tl.constexpr,
):
    """One program: one key tile of one (batch, kv head); sums over REP_PER of its KV_REP query
    heads (all of them unless SPLIT > 1: then part `split` of SPLIT, written at DK + split·stride_dks).
    Query rows stream in BLOCK_M tiles, the band's (mixed) rows in BAND_M tiles (BAND_M | BLOCK_M).
    With ATOMIC_DQ (no window) it also adds scale·dS K into the fp32 dQ_eff buffer DQA [B, Hq, N, d]. With TMA the
    plain tiles load Q_eff and dO through the descriptors QED / DOD over QE and DO ([1, 1, BLOCK_M, D_PAD] blocks)."""
    pid_n = tl.program_id(0)
    pid_bhs = tl.program_id(1)
    split = pid_bhs % SPLIT
    pid_bh = pid_bhs // SPLIT
    b = pid_bh // Hkv
    hk = pid_bh % Hkv
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    k = _load_2d(K, offs_n[:, None], offs_d[None, :], M, HEAD_DIM, stride_kn, stride_kd).to(DOT_T)
    v = _load_2d(V, offs_n[:, None], offs_d[None, :], M, HEAD_DIM, stride_vn, stride_vd).to(DOT_T)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)

    # ---- query ranges (rows): [start, A) checked | [A, bl) plain | [bl, C) band: mixed, checked | [C, N) plain.
    # All four bounds are multiples of BLOCK_M (hence of BAND_M), so the band's sub-tiles fit exactly.
    off = M - N
    start = 0
    e_chk = 0
    if CAUSAL:  # rows before start see none of these keys; rows before e_chk see only some
        start = (tl.maximum(n0 - off, 0) // BLOCK_M) * BLOCK_M
        e_chk = tl.maximum(start, tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - off, 0), BLOCK_M) * BLOCK_M)
    seg_a = e_chk
    bl = e_chk
    seg_c = e_chk
    if HAS_WINDOW:
        bl = tl.maximum((tl.maximum(n0 - off - WINDOW + 1, 0) // BLOCK_M) * BLOCK_M, start)
        bh = tl.maximum(tl.cdiv(tl.maximum(n0 + BLOCK_N - 1 - off + WINDOW, 0), BLOCK_M) * BLOCK_M, bl)
        seg_a = tl.minimum(bl, e_chk)
        seg_c = tl.maximum(bh, e_chk)

    for r in range(split * REP_PER, split * REP_PER + REP_PER):
        h = hk * KV_REP + r
        bh_q = b * Hq + h
        QEh = QE + b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh
        Qh = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        DOh = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        rowb = bh_q.to(tl.int64) * N
        MASKP = MASK
        if MASK_KIND != 0:
            MASKP = MASK + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
        DQAh = DQA + b.to(tl.int64) * stride_dqab + h.to(tl.int64) * stride_dqah
        dk, dv = _dkdv_tiles(dk, dv, k, v, start, tl.minimum(seg_a, N), QEh, Qh, DOh, QED, DOD, b, h,
                             LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                             scale, qk_scale2,
                             stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                             stride_mm, stride_dqan, HEAD_DIM, D_PAD, BLOCK_M, CAUSAL, True, False, HAS_CORR,
                             MASK_KIND, DOT_PREC, DOT_T, ATOMIC_DQ, TMA)
        if HAS_WINDOW:
            dk, dv = _dkdv_tiles(dk, dv, k, v, seg_a, tl.minimum(bl, N), QEh, Qh, DOh, QED, DOD, b, h,
                                 LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                                 scale, qk_scale2,
                                 stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                                 stride_mm, stride_dqan, HEAD_DIM, D_PAD, BLOCK_M, CAUSAL, False, False, HAS_CORR,
                                 MASK_KIND, DOT_PREC, DOT_T, ATOMIC_DQ, TMA)
            dk, dv = _dkdv_tiles(dk, dv, k, v, bl, tl.minimum(seg_c, N), QEh, Qh, DOh, QED, DOD, b, h,
                                 LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                                 scale, qk_scale2,
                                 stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                                 stride_mm, stride_dqan, HEAD_DIM, D_PAD, BAND_M, CAUSAL, True, True, HAS_CORR,
                                 MASK_KIND, DOT_PREC, DOT_T, False, False)
        if ATOMIC_DQ and not CAUSAL and not HAS_WINDOW:
            # every row sees every key: start at this key tile's own row tile and wrap, so that the programs of one
            # head add into different dQ rows at a time instead of all into the first ones
            rot = ((n0 // BLOCK_M) % tl.cdiv(N, BLOCK_M)) * BLOCK_M
            dk, dv = _dkdv_tiles(dk, dv, k, v, rot, N, QEh, Qh, DOh, QED, DOD, b, h,
                                 LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                                 scale, qk_scale2,
                                 stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                                 stride_mm, stride_dqan, HEAD_DIM, D_PAD, BLOCK_M, CAUSAL, False, False, HAS_CORR,
                                 MASK_KIND, DOT_PREC, DOT_T, ATOMIC_DQ, TMA)
            dk, dv = _dkdv_tiles(dk, dv, k, v, 0, rot, QEh, Qh, DOh, QED, DOD, b, h,
                                 LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                                 scale, qk_scale2,
                                 stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                                 stride_mm, stride_dqan, HEAD_DIM, D_PAD, BLOCK_M, CAUSAL, False, False, HAS_CORR,
                                 MASK_KIND, DOT_PREC, DOT_T, ATOMIC_DQ, TMA)
        else:
            dk, dv = _dkdv_tiles(dk, dv, k, v, seg_c, N, QEh, Qh, DOh, QED, DOD, b, h,
                                 LSE + rowb, DELTA + rowb, CORR + rowb, KAPPA + rowb, MASKP, DQAh, offs_n, N, M, WINDOW,
                                 scale, qk_scale2,
                                 stride_qen, stride_qed, stride_qn, stride_qd, stride_don, stride_dod, stride_mn,
                                 stride_mm, stride_dqan, HEAD_DIM, D_PAD, BLOCK_M, CAUSAL, False, False, HAS_CORR,
                                 MASK_KIND, DOT_PREC, DOT_T, ATOMIC_DQ, TMA)
    omask = (offs_n < M)[:, None] & (offs_d < HEAD_DIM)[None, :]
    DK += split.to(tl.int64) * stride_dks + b.to(tl.int64) * stride_dkb + hk.to(tl.int64) * stride_dkh
    DV += split.to(tl.int64) * stride_dvs + b.to(tl.int64) * stride_dvb + hk.to(tl.int64) * stride_dvh
    tl.store(DK + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, (dk * scale).to(DK.dtype.element_ty),
             mask=omask)
    tl.store(DV + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv.to(DV.dtype.element_ty), mask=omask)


# --------------------------------------------------------------------------- dQ
@triton.jit
def _dq_tiles(dqe, dqx, qe, q, do, lse, delta, corr2, kappa, lo, hi, K, V, KD, VD, kb, kh, MASKP, offs_m, N, M,
              WINDOW, scale, qk_scale2, stride_kn, stride_kd, stride_vn, stride_vd, stride_mn, stride_mm,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              CAUSAL: tl.constexpr, CHECK: tl.constexpr, MIXED: tl.constexpr, HAS_CORR: tl.constexpr,
              MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr, TMA: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N-key tiles for one query tile ([BM, BN] scores). Returns dqe, and
    with MIXED (dqe, dqx); dqx is not used otherwise (None). With TMA (plain tiles only) the K and V tiles of
    (batch kb, kv head kh) come through the descriptors KD / VD ([1, 1, BLOCK_N, D_PAD] blocks)."""
    tl.static_assert(not (TMA and MIXED), "descriptor loads are for the plain tiles")
    offs_d = tl.arange(0, D_PAD)
    mi = offs_m[:, None]
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        nj = offs_n[None, :]
        if TMA:
            kt = tl.trans(KD.load([kb, kh, start_n, 0]).reshape([BLOCK_N, D_PAD])).to(DOT_T)
            vt = tl.trans(VD.load([kb, kh, start_n, 0]).reshape([BLOCK_N, D_PAD])).to(DOT_T)
        else:
            kt = _load_2d(K, nj, offs_d[:, None], M, HEAD_DIM, stride_kn, stride_kd).to(DOT_T)  # [D_PAD, BN]
            vt = _load_2d(V, nj, offs_d[:, None], M, HEAD_DIM, stride_vn, stride_vd).to(DOT_T)
        gdot = tl.dot(qe, kt, input_precision=DOT_PREC)
        edot = gdot
        if MIXED:
            edot = tl.dot(q, kt, input_precision=DOT_PREC)
        s, inb, t = _scores2(gdot, edot, kappa, corr2, mi, nj, N, M, WINDOW, scale, qk_scale2, MASKP,
                             stride_mn, stride_mm, CAUSAL, CHECK, MIXED, HAS_CORR, MASK_KIND)
        p = tl.math.exp2(s - lse)
        dp = tl.dot(do, vt, input_precision=DOT_PREC)
        ds = p * (dp - delta)
        if MIXED:
            dg = tl.where(inb, t, ds)
            de = tl.where(inb, ds - t, 0.0)
            dqe = tl.dot(dg.to(DOT_T), tl.trans(kt), dqe, input_precision=DOT_PREC)
            dqx = tl.dot(de.to(DOT_T), tl.trans(kt), dqx, input_precision=DOT_PREC)
        else:
            dqe = tl.dot(ds.to(DOT_T), tl.trans(kt), dqe, input_precision=DOT_PREC)
    if MIXED:
        return dqe, dqx
    else:
        return dqe


@triton.jit
def _bwd_dq_kernel(
    QE, Q, K, V, DO, DQE, DQX, LSE, DELTA, CORR, KAPPA, MASK, INV, W1, W2, w1c, KD, VD,
    scale, qk_scale2,
    stride_qeb, stride_qeh, stride_qen, stride_qed,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    stride_mb, stride_mh, stride_mn, stride_mm,
    Hq, N, M, KV_REP, WINDOW, NB,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BAND_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CORR: tl.constexpr, MASK_KIND: tl.constexpr,
    DOT_PREC: tl.constexpr, DOT_T: tl.constexpr,
    ADJOINT: tl.constexpr, G: tl.constexpr, GROUP_BM: tl.constexpr, ADJ_CB: tl.constexpr,
    WEIGHTED: tl.constexpr, ADJ_PREC: tl.constexpr, TMA: tl.constexpr, REVERSED: tl.constexpr = False,
):
    """One program: one query tile of one (batch, query head); with REVERSED the last tiles start first. DQE
    receives scale·dG K (the gradient of Q_eff; dQ itself for G = 1), DQX (with a window) scale·dE K, both [B,Hq,N,d]
    (every row written: zeros where no band key is). Keys stream in BLOCK_N tiles, the band's
    (mixed) keys in BAND_N tiles (BAND_N | BLOCK_N).

    With ADJOINT (G > 1) the epilogue maps dQ_eff back itself and DQE receives dQ = dQ_eff Wᵀ (+ DQX):
    ``regroup.regroup_tile_store`` with the swapped weights (W1 = b, W2 = a per sorted position, or the
    scalar w1c for mean fusion; INV: column -> sorted position, NB grouping blocks of GROUP_BM rows). With TMA the
    plain key tiles load K and V through the descriptors KD / VD ([1, 1, BLOCK_N, D_PAD] blocks)."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0) if REVERSED else tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // KV_REP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mi = offs_m[:, None]
    dcol = offs_d[None, :]
    rmask = offs_m < N
    QE += b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    MASKP = MASK
    if MASK_KIND != 0:
        MASKP = MASK + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    row = pid_bh.to(tl.int64) * N + offs_m
    qe = _load_2d(QE, mi, dcol, N, HEAD_DIM, stride_qen, stride_qed).to(DOT_T)
    q = qe
    if HAS_WINDOW:
        q = _load_2d(Q, mi, dcol, N, HEAD_DIM, stride_qn, stride_qd).to(DOT_T)
    do = _load_2d(DO, mi, dcol, N, HEAD_DIM, stride_don, stride_dod).to(DOT_T)
    lse = tl.load(LSE + row, mask=rmask, other=float("inf"))[:, None]
    delta = tl.load(DELTA + row, mask=rmask, other=0.0)[:, None]
    corr2 = tl.zeros([BLOCK_M, 1], dtype=tl.float32)
    kappa = tl.zeros([BLOCK_M, 1], dtype=tl.float32)
    if HAS_CORR:
        corr2 = tl.load(CORR + row, mask=rmask, other=0.0)[:, None]
        kappa = tl.load(KAPPA + row, mask=rmask, other=0.0)[:, None]

    # ---- key ranges, as the forward
    hi, seg_a, seg_b, seg_c, band_lo, band_hi = _key_segments(m0, N, M, WINDOW, BLOCK_M, BLOCK_N, CAUSAL,
                                                               HAS_WINDOW)
    omask = rmask[:, None] & (offs_d < HEAD_DIM)[None, :]
    optr = b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + mi * stride_dqn + dcol * stride_dqd

    dqe = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    if HAS_WINDOW:  # the band first, in BAND_N-key sub-tiles; dQ_exact is stored (and its registers freed) here
        dqx = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        dqe, dqx = _dq_tiles(dqe, dqx, qe, q, do, lse, delta, corr2, kappa, seg_a, tl.minimum(seg_b, hi), K, V,
                             KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, scale, qk_scale2, stride_kn, stride_kd,
                             stride_vn, stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, BAND_N, CAUSAL, True, True,
                             HAS_CORR, MASK_KIND, DOT_PREC, DOT_T, False)
        tl.store(DQX + optr, (dqx * scale).to(DQX.dtype.element_ty), mask=omask)
    # the plain tiles, BLOCK_N keys each (seg_b is a multiple of BLOCK_N or >= hi)
    dqe = _dq_tiles(dqe, None, qe, q, do, lse, delta, corr2, kappa, 0, tl.minimum(seg_a, hi), K, V, KD, VD, b, hk,
                    MASKP, offs_m, N, M, WINDOW, scale, qk_scale2, stride_kn, stride_kd, stride_vn, stride_vd,
                    stride_mn, stride_mm, HEAD_DIM, D_PAD, BLOCK_N, CAUSAL, False, False, HAS_CORR, MASK_KIND,
                    DOT_PREC, DOT_T, TMA)
    if HAS_WINDOW:
        dqe = _dq_tiles(dqe, None, qe, q, do, lse, delta, corr2, kappa, seg_b, tl.minimum(seg_c, hi), K, V,
                        KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, scale, qk_scale2, stride_kn, stride_kd,
                        stride_vn, stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, BLOCK_N, CAUSAL, False, False,
                        HAS_CORR, MASK_KIND, DOT_PREC, DOT_T, TMA)
    dqe = _dq_tiles(dqe, None, qe, q, do, lse, delta, corr2, kappa, seg_c, hi, K, V, KD, VD, b, hk, MASKP,
                    offs_m, N, M, WINDOW, scale, qk_scale2, stride_kn, stride_kd, stride_vn, stride_vd,
                    stride_mn, stride_mm, HEAD_DIM, D_PAD, BLOCK_N, CAUSAL, True, False, HAS_CORR, MASK_KIND,
                    DOT_PREC, DOT_T, TMA)
    if ADJOINT:  # dQ = dQ_eff Wᵀ (+ the band's dQ_exact), in q's dtype: no regroup launch after the kernel
        if HAS_WINDOW:
            tl.debug_barrier()  # dQ_exact was stored above, by other threads of this program
        obase = b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
        regroup_tile_store(dqe * scale, DQE + obase, DQX + obase, offs_m, N, stride_dqn, stride_dqd, stride_dqn,
                           stride_dqd, INV, W1, W2, w1c, pid_bh, m0, NB, HEAD_DIM, D_PAD, G, GROUP_BM, BLOCK_M,
                           ADJ_CB, WEIGHTED, HAS_WINDOW, ADJ_PREC)
    else:
        tl.store(DQE + optr, (dqe * scale).to(DQE.dtype.element_ty), mask=omask)


# --------------------------------------------------------------------------- launchers
def _kv_split(rep: int, programs: int, device) -> int:
    """How many programs share one kv head's query heads: doubles (dividing rep) while the
    dK/dV grid has fewer than two programs per SM. 1 off the GPU."""
    if device.type != "cuda" or rep == 1:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split = 1
    while rep % (2 * split) == 0 and programs * split < 2 * sms:
        split *= 2
    return split


# ptxas (Triton 3.6, sm_90a) crashed compiling some descriptor-load builds of the dK/dV kernel (without causal
# masking at d = 128, with tensor masks at d = 64 / 80): those specialisations fall back to pointer loads, the same
# function, and are remembered here so that a failing build is attempted once per process
_COMPILE_ERRORS = (getattr(triton.runtime.errors, "PTXASError", RuntimeError),)
_NO_TMA: set = set()


def _launch_tma_or_pointers(launch, key, make_descs, use_tma: bool):
    """``launch(descs)`` with the tensor descriptors ``make_descs()`` (None: pointer loads) when ``use_tma``; if that
    build fails to compile, again with pointer loads (nothing was written: compilation precedes the launch)."""
    descs = make_descs() if use_tma and key not in _NO_TMA else None
    if descs is None:
        return launch(None)
    try:
        return launch(descs)
    except _COMPILE_ERRORS as e:
        _NO_TMA.add(key)
        warnings.warn(f"distr_attention backward: the descriptor-load build of {key[0]} failed to compile "
                      f"({type(e).__name__}); using pointer loads for this specialisation", RuntimeWarning,
                      stacklevel=3)
        return launch(None)


def _triton_backward(do, q, k, v, out, lse, groups, wa, wb, *, group_size, block_m, fusion, exact_window,
                     window_correction, causal, attention_mask, scale, need_dq=True, need_dkdv=True,
                     qeff=None, inv=None, config: BwdConfig | None = None):
    """Gradients (dq, dk, dv) of ``_triton_forward`` at (q, k, v) for the output gradient ``do``.

    ``out``, ``lse``, ``groups``, ``wa``, ``wb`` are what ``_triton_forward(..., return_lse=True)``
    returned; ``qeff`` and ``inv`` what it kept with ``keep_qeff=True`` (the forward's Q_eff and the column ->
    position map; None: formed here, a regroup launch and a scatter). dq is None unless ``need_dq``; dk, dv
    None unless ``need_dkdv``.
    """
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = group_size
    exact = G == 1
    cfg = config or bwd_config(d, G, exact_window, causal=bool(causal), keys=M, fp32=q.dtype == torch.float32,
                               masked=attention_mask is not None)
    if cfg.kv_block_m % cfg.band_m or cfg.q_block_n % cfg.band_n or min(cfg.band_m, cfg.band_n) < 16:
        raise ValueError(f"band sub-tiles must divide their block tiles and be >= 16: {cfg}")
    dev = q.device
    kind, mask_t, mstr = _mask_operand(attention_mask, B, Hq, N, M, dev)
    sm_scale = d ** -0.5 if scale is None else float(scale)
    window = int(exact_window) if not exact else 0
    has_corr = window > 0 and window_correction > 0
    d_pad = next_power_of_2(d)
    dot_t = _dot_dtype(q.dtype)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    rep = Hq // Hkv
    mean = fusion == "mean" or wa is None

    if exact:
        qe = q
    else:
        inv = inverse_groups(groups) if inv is None else inv
        qe = qeff if qeff is not None else regroup(
            q, groups, None if mean else wa, None if mean else wb, group_size=G, block_m=block_m,
            out_dtype=q.dtype, mean_weights=(1.0 / G, 1.0) if mean else None, inv=inv)
    lse = lse.contiguous()
    f32 = dict(device=dev, dtype=torch.float32)
    delta = torch.empty((B, Hq, N), **f32)
    corr = torch.empty((B, Hq, N), **f32) if has_corr else delta
    kappa = torch.empty((B, Hq, N), **f32) if has_corr else delta
    common = dict(HEAD_DIM=d, D_PAD=d_pad, CAUSAL=bool(causal), HAS_CORR=has_corr, MASK_KIND=kind,
                  DOT_PREC=prec, DOT_T=dot_t)
    launch(_bwd_preprocess_kernel, (cdiv(N, cfg.q_block_m), B * Hq),
        out, do, qe, q, k, v, lse, delta, corr, kappa, mask_t,
        sm_scale, sm_scale * LOG2E, 0.5 * float(window_correction), float(window_correction),
        *out.stride(), *do.stride(), *qe.stride(), *q.stride(), *k.stride(), *v.stride(), *mstr,
        Hq, N, M, rep, window, BLOCK_M=cfg.q_block_m, BAND_N=cfg.band_n,
        num_warps=cfg.q_warps, num_stages=1, **common,
    )
    common["HAS_WINDOW"] = window > 0
    dq = dk = dv = None
    # dQ by atomics in the dK/dV kernel (BwdConfig.dq_atomic): only without a window, when both are wanted
    atomic = (cfg.dq_atomic and window == 0 and need_dq and need_dkdv
              and not torch.are_deterministic_algorithms_enabled())
    dqa = torch.zeros(q.shape, **f32) if atomic else delta
    dqa_s = dqa.stride()[:3] if atomic else (0, 0, 0)
    if need_dkdv:
        n_tiles = cdiv(M, cfg.kv_block_n)
        split = cfg.kv_split or _kv_split(rep, n_tiles * B * Hkv, dev)
        if split == 1:
            dk = torch.empty(k.shape, device=dev, dtype=k.dtype)
            dv = torch.empty(v.shape, device=dev, dtype=v.dtype)
            dk_s, dv_s = (0, *dk.stride()), (0, *dv.stride())
        else:  # partial sums over query-head subsets, added below
            dk = torch.empty((split, *k.shape), **f32)
            dv = torch.empty((split, *v.shape), **f32)
            dk_s, dv_s = dk.stride(), dv.stride()
        def dkdv(descs):
            launch(_bwd_dkdv_kernel, (n_tiles, B * Hkv * split),
                qe, q, k, v, do, dk, dv, lse, delta, corr, kappa, mask_t, dqa, *(descs or (qe, do)),
                sm_scale, sm_scale * LOG2E,
                *qe.stride(), *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk_s, *dv_s, *mstr, *dqa_s,
                Hq, Hkv, N, M, rep, rep // split, split, window, BLOCK_M=cfg.kv_block_m, BLOCK_N=cfg.kv_block_n,
                BAND_M=cfg.band_m, num_warps=cfg.kv_warps, num_stages=cfg.kv_stages, ATOMIC_DQ=atomic,
                TMA=descs is not None, **common,
            )
        _launch_tma_or_pointers(dkdv, ("the dK/dV kernel", d, q.dtype, kind, atomic, split > 1, cfg, *common.values()),
                                lambda: tile_descriptors((qe, do), cfg.kv_block_m, d_pad), cfg.kv_tma)
        if split > 1:
            dk = dk.sum(0).to(k.dtype)
            dv = dv.sum(0).to(v.dtype)
    if atomic:  # dQ_eff is summed: dQ = dQ_eff (G = 1) or dQ_eff Wᵀ (the regroup with a and b swapped)
        dq = dqa.to(q.dtype) if exact else regroup(
            dqa, groups, None if mean else wb, None if mean else wa, group_size=G, block_m=block_m,
            out_dtype=q.dtype, mean_weights=(1.0, 1.0 / G) if mean else None, inv=inv)
        return dq, dk, dv
    if need_dq:
        # the dQ kernel maps dQ_eff back in its epilogue (dq_epilogue) or a regroup launch does it after
        adjoint = not exact and cfg.dq_epilogue
        dqe = torch.empty(q.shape, device=dev, dtype=q.dtype if exact or adjoint else torch.float32)
        dqx = torch.empty(q.shape, **f32) if window > 0 else dqe
        inv_t, w1, w2 = (delta, delta, delta) if exact else (inv, inv if mean else wb, inv if mean else wa)
        if cfg.dq_tile_order not in DQ_TILE_ORDERS:
            raise ValueError(f"config.dq_tile_order must be one of {DQ_TILE_ORDERS}, got {cfg.dq_tile_order!r}")
        dq_reversed = tile_order_code(cfg.dq_tile_order, bool(causal)) == TILE_ORDERS["reversed"]

        def dq_kernel(descs):
            launch(_bwd_dq_kernel, (cdiv(N, cfg.q_block_m), B * Hq),
                qe, q, k, v, do, dqe, dqx, lse, delta, corr, kappa, mask_t, inv_t, w1, w2, 1.0 / G, *(descs or (k, v)),
                sm_scale, sm_scale * LOG2E,
                *qe.stride(), *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dqe.stride(), *mstr,
                Hq, N, M, rep, window, 1 if exact else groups.shape[2],
                BLOCK_M=cfg.q_block_m, BLOCK_N=cfg.q_block_n, BAND_N=cfg.band_n,
                # 16 output columns per epilogue dot: compiled for sm_90 (scripts/kernel_resources.py --backward) the
                # dQ kernel keeps the registers it takes without the epilogue (122 at d=64, 163-167 at d=128, so 4 / 3
                # programs per SM); 64 columns took 150-212 (one program per SM fewer)
                ADJOINT=adjoint, G=G, GROUP_BM=block_m, ADJ_CB=min(d_pad, 16), WEIGHTED=not mean,
                ADJ_PREC="ieee" if q.dtype == torch.float32 else "tf32", TMA=descs is not None,
                REVERSED=dq_reversed, num_warps=cfg.q_warps, num_stages=cfg.q_stages, **common,
            )
        _launch_tma_or_pointers(dq_kernel, ("the dQ kernel", d, q.dtype, kind, adjoint, cfg, *common.values()),
                                lambda: tile_descriptors((k, v), cfg.q_block_n, d_pad), cfg.q_tma)
        if exact or adjoint:
            dq = dqe
        else:  # dQ = dQ_eff Wᵀ (+ the exact band's part): the regroup with a and b swapped
            dq = regroup(dqe, groups, None if mean else wb, None if mean else wa, group_size=G, block_m=block_m,
                         out_dtype=q.dtype, add=dqx if window > 0 else None,
                         mean_weights=(1.0, 1.0 / G) if mean else None, inv=inv)
    return dq, dk, dv
