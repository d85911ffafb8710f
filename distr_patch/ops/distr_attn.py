"""DistrAttention: fused Triton forward kernel, its launcher, and the public ``distr_attention``.

Layout of this file: Triton kernels (score helpers, the inner key loop, the forward
kernel), the host launcher ``_triton_forward``, then ``distr_attention`` which validates,
dispatches (CUDA -> Triton, CPU -> PyTorch reference) and documents the operator.

The grouping (LSH hash, column order) and the fusion weights are computed once per call by the
grouping kernel (``grouping_triton.py``, the same function as the torch definition in ``grouping.py``)
and the attention kernel *loads* them, so the kernel and the reference compute the same function.
The grouped scores Q̃ K̃ᵀ are computed either as Q_eff Kᵀ (``grouped_qk="expanded"``, the default:
Q_eff formed in each program's prologue by ``regroup.fused_query_tile``, or once by a ``regroup.regroup``
launch, then the exact kernel's dot on K's tiles) or with the inner dimension d/G on a K̃ gathered per
key tile (``"reduced"``); ``configs.py`` says which is faster where. K and V tiles come through TMA tensor
descriptors (``kv_descriptors``) where the config asks for them and the strides allow it.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch
import triton
import triton.language as tl

from . import compile_op, configs
from .configs import FwdConfig, fwd_config, interpreting, parse_rescale_slack, tile_order_code
from .grouping import fusion_weights
from . import grouping_triton
from .grouping_triton import group_block, grouping_launch, triton_grouping
from .reference import normalize_mask, reference_distr_attention
from .launch import cdiv, launch, next_power_of_2
from .regroup import fused_query_tile, inverse_groups, regroup
# Every Triton kernel's module is imported with the package (the backward's by ``ops/__init__``, after this
# module): triton.jit reads TRITON_INTERPRET when a kernel is defined, not when it runs.
from . import sdpa_engine
from .validate import check_attention_inputs, check_triton_inputs

try:  # the copy engine's tile descriptors (Triton >= 3.4); the kernels fall back to pointer loads without them
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover
    TensorDescriptor = None

LOG2E = 1.4426950408889634
MASK_NONE, MASK_BOOL, MASK_ADDITIVE = 0, 1, 2

# How the expanded path forms Q_eff where the kernel does not form it in its prologue (``FwdConfig.qeff_prologue``)
# and no groups are given: "one" (default) by the SDPA engine's launch that groups each block and writes its Q_eff
# rows (``grouping_triton.triton_query_effective``), "two" by the grouping launch and then the regroup launch. The
# same Q_eff (tests). With the one launch, Q_eff from memory beat the prologue at 64 < d <= 128, G=2, no window
# (H200, N=4096: rank1 4-7%, mean 0-4% faster; docs/benchmarks.md, "Q_eff by one launch at d=128").
QEFF_LAUNCH = os.environ.get("DISTR_FWD_QEFF_LAUNCH", "one")


# --------------------------------------------------------------------------- kernels
@triton.jit
def _grouped_kt(KG, GRP_B, WB_B, start_n, M, stride_kgn, stride_kgd,
                G: tl.constexpr, DG: tl.constexpr, DG_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                FUSION_MEAN: tl.constexpr, BOUNDS: tl.constexpr, DOT_T: tl.constexpr):
    """K̃ᵀ of one key tile: [DG_PAD, BLOCK_N] in the dot type.

    GRP_B / WB_B point at this query block's sorted column order / key weights (d entries).
    K̃ᵀ[g, n] = Σ_i b K[n, col(g·G+i)] is built from G row-gathers of KG (a [d, M] copy of K,
    or K itself), each a [DG_PAD, BLOCK_N] tile whose rows are contiguous keys when KG is
    the transposed copy.
    """
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_g = tl.arange(0, DG_PAD)
    gmask = offs_g < DG
    ktt = tl.zeros([DG_PAD, BLOCK_N], dtype=tl.float32)
    for i in tl.static_range(G):
        col = tl.load(GRP_B + offs_g * G + i, mask=gmask, other=0)
        ptrs = KG + col.to(tl.int64)[:, None] * stride_kgd + offs_n[None, :] * stride_kgn
        if BOUNDS:
            x = tl.load(ptrs, mask=gmask[:, None] & (offs_n < M)[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=gmask[:, None], other=0.0)
        if FUSION_MEAN:
            ktt += x.to(tl.float32)
        else:
            w = tl.load(WB_B + offs_g * G + i, mask=gmask, other=0.0)
            ktt += x.to(tl.float32) * w[:, None]
    return ktt.to(DOT_T)


@triton.jit
def _load_q_tile(Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, DOT_T: tl.constexpr):
    """The query tile with the full d: [BLOCK_M, D_PAD] (zero rows past N)."""
    offs_d = tl.arange(0, D_PAD)
    qmask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=qmask, other=0.0).to(DOT_T)


@triton.jit
def _load_kt(K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
             BLOCK_N: tl.constexpr, BOUNDS: tl.constexpr, DOT_T: tl.constexpr, TMA_N: tl.constexpr):
    """Kᵀ of one key tile with the full d: [D_PAD, BLOCK_N] in the dot type (zeros past M / d).

    TMA_N == BLOCK_N: through the tensor descriptor KD over K [B, Hkv, M, d] (block [1, 1, TMA_N, D_PAD],
    the copy engine zero-fills past M and d); else pointer loads from K (this (b, kv-head)'s slice)."""
    if TMA_N == BLOCK_N:
        return tl.trans(KD.load([kb, kh, start_n, 0]).reshape([BLOCK_N, D_PAD])).to(DOT_T)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    ptrs = K + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    if BOUNDS:
        kt = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[:, None] & (offs_n < M)[None, :], other=0.0)
    elif D_PAD != HEAD_DIM:
        kt = tl.load(ptrs, mask=(offs_d < HEAD_DIM)[:, None], other=0.0)
    else:
        kt = tl.load(ptrs)
    return kt.to(DOT_T)


@triton.jit
def _exact_qk(q_full, K, KD, kb, kh, start_n, M, stride_kn, stride_kd,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
              BOUNDS: tl.constexpr, DOT_PREC: tl.constexpr, TMA_N: tl.constexpr):
    """Raw exact scores Q Kᵀ of one key tile: fp32 [BLOCK_M, BLOCK_N]."""
    kt = _load_kt(K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N, BOUNDS, q_full.dtype,
                  TMA_N)
    return tl.dot(q_full, kt, input_precision=DOT_PREC)


@triton.jit
def _load_v(V, VD, kb, kh, start_n, M, stride_vn, stride_vd, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
            BLOCK_N: tl.constexpr, BOUNDS: tl.constexpr, DOT_T: tl.constexpr, TMA_N: tl.constexpr):
    """V of one key tile: [BLOCK_N, D_PAD] in the dot type (zeros past M / d); TMA as in ``_load_kt``."""
    if TMA_N == BLOCK_N:
        return VD.load([kb, kh, start_n, 0]).reshape([BLOCK_N, D_PAD]).to(DOT_T)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    vptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if BOUNDS:
        v = tl.load(vptrs, mask=(offs_n < M)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    elif D_PAD != HEAD_DIM:
        v = tl.load(vptrs, mask=(offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        v = tl.load(vptrs)
    return v.to(DOT_T)


@triton.jit
def _allowed(offs_m, offs_n, N, M, MASKP, stride_mn, stride_mm,
             CAUSAL: tl.constexpr, BOUNDS: tl.constexpr, MASK_KIND: tl.constexpr):
    """Which (row, key) pairs may attend: bool [BLOCK_M, BLOCK_N] (bottom-right causal)."""
    ok = (offs_m >= 0)[:, None] & (offs_n >= 0)[None, :]
    if BOUNDS:
        ok = ok & (offs_n < M)[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + (M - N))
    if MASK_KIND == 1:
        mv = tl.load(MASKP + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_mm,
                     mask=(offs_m < N)[:, None] & (offs_n < M)[None, :], other=0)
        ok = ok & (mv != 0)
    return ok


@triton.jit
def _through_scratch(QT, x, pid_bh, offs_m, offs_c, N, BLOCK_M: tl.constexpr, WIDTH: tl.constexpr):
    """x [BLOCK_M, WIDTH] stored to this program's rows of the scratch QT [B·Hq, cdiv(N, BLOCK_M)·BLOCK_M, WIDTH]
    and loaded back after a barrier: a tile computed in registers that a dot then takes from shared memory, as it
    takes a tile loaded from memory."""
    ptrs = QT + (pid_bh.to(tl.int64) * tl.cdiv(N, BLOCK_M) * BLOCK_M + offs_m[:, None]) * WIDTH + offs_c[None, :]
    tl.store(ptrs, x)
    tl.debug_barrier()
    return tl.load(ptrs)


@triton.jit
def _exp2_fma(x):
    """2**x for fp32 x < 128 (the softmax's x <= 0, or <= ``FwdConfig.rescale_slack`` with it) without the MUFU
    unit: x = n + f with n = round(x) (by adding 1.5·2^23), f in
    [-1/2, 1/2]; 2**f by a degree-3 polynomial (relative error <= 7.5e-5, a near-minimax fit), n added to its
    exponent bits. x is clamped at -126, so below it the result is a denormal under 2**-126, not 0, and -inf or
    NaN must not reach it (``_attn_tiles`` uses it only on tiles without masks). For 16-bit calls: P is rounded to
    16 bits for P·V anyway."""
    xc = tl.maximum(x, -126.0)
    t = xc + 12582912.0
    f = xc - (t - 12582912.0)
    p = 0.0551716648042202 * f + 0.2426111251115799
    p = p * f + 0.6932609677314758
    p = p * f + 0.9999280571937561
    return (p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)).to(tl.float32, bitcast=True)


@triton.jit
def _exp2_tile(x, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXP_FMA: tl.constexpr):
    """exp2 of a [BLOCK_M, BLOCK_N] score tile with 1/EXP_FMA of its columns (the last ones) on the FMA pipe
    (``_exp2_fma``: finite x only), the rest on the MUFU unit. EXP_FMA: 0 (all MUFU), 2 or 4. The idea: the MUFU's
    16 exp2 per clock and SM take as many clocks for a 128x64 tile as both of its dots at d=64; measured on the H100
    it made the loop slower (each moved exp2 is ~8 instructions instead of one, and the loop is near issue-bound;
    docs/benchmarks.md, thirty-fourth session), so ``FwdConfig.exp_fma`` is off."""
    if EXP_FMA == 0:
        return tl.math.exp2(x)
    a, b = tl.reshape(x, [BLOCK_M, 2, BLOCK_N // 2]).permute(0, 2, 1).split()
    if EXP_FMA == 2:
        pb = _exp2_fma(b)
    else:
        b0, b1 = tl.reshape(b, [BLOCK_M, 2, BLOCK_N // 4]).permute(0, 2, 1).split()
        pb = tl.reshape(tl.join(tl.math.exp2(b0), _exp2_fma(b1)).permute(0, 2, 1), [BLOCK_M, BLOCK_N // 2])
    return tl.reshape(tl.join(tl.math.exp2(a), pb).permute(0, 2, 1), [BLOCK_M, BLOCK_N])


@triton.jit
def _attn_tiles(acc, m_i, l_i, corr2, qt, lo, hi,
                Q, KG, GRP_B, WB_B, K, V, KD, VD, kb, kh, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn, stride_vd,
                stride_mn, stride_mm,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, DG: tl.constexpr,
                DG_PAD: tl.constexpr, BLOCK_N: tl.constexpr, EXACT: tl.constexpr, FUSION_MEAN: tl.constexpr,
                MIXED: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr, HAS_CORR: tl.constexpr,
                MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr, EXPANDED: tl.constexpr,
                TMA_N: tl.constexpr, WS: tl.constexpr = False, SCALE_AFTER_MAX: tl.constexpr = False,
                EXP_FMA: tl.constexpr = 0, RESCALE_SLACK: tl.constexpr = 0.0, OUTSIDE_BAND: tl.constexpr = False):
    """Online softmax over key tiles [lo, hi): scores in log2 units, exact P·V.

    MIXED: the tiles meet the exact band and compute both products. OUTSIDE_BAND: the tiles meet the band, whose
    entries ran already (``_band_first_tiles``): the grouped scores outside it only. BOUNDS: the tiles need
    the key-range and causal checks. The tensor mask (MASK_KIND) applies everywhere.
    EXPANDED: ``qt`` is Q_eff [BLOCK_M, D_PAD] and the grouped scores are Q_eff Kᵀ on the key
    tile as loaded (one tile serves both products when MIXED); else ``qt`` is Q̃ [BLOCK_M, DG_PAD]
    and K̃ is gathered per tile. K and V tiles of TMA_N keys come through the descriptors KD / VD
    (coordinates [kb, kh, key, 0]), others through pointers (``_load_kt``). WS: the loop is warp-specialised.
    SCALE_AFTER_MAX: where the log2 scores are the raw dot times one scale less a per-row offset (no band, no
    additive mask), the row max is taken on the raw dot and exp2's argument is one FMA per score.
    EXP_FMA: ``_exp2_tile``'s share of the scores' exp2 on the FMA pipe (0: none), on tiles without masks (no -inf).
    RESCALE_SLACK > 0 (log2 units): FlashAttention-4's conditional rescaling. The reference max m_i (and with it
    acc and l_i) moves only on tiles where some row's max passes it by more than the slack, so exp2's arguments stay
    <= the slack (p <= 2**slack) and most tiles skip the multiply of acc. The output is the same function; LSE is
    m_i + log2(l_i) either way. The branch is one for the whole program (a shared-memory reduction and a barrier
    per tile): measured 5-14% slower on the H100, so ``FwdConfig.rescale_slack`` is off.
    """
    if EXACT or MIXED:
        q_full = _load_q_tile(Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM, D_PAD, DOT_T)
    for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        # log2 scores: raw dot · qk_scale2 − the row's correction (+ the additive mask, or the band's exact scores)
        AFFINE: tl.constexpr = SCALE_AFTER_MAX and (not MIXED) and (not OUTSIDE_BAND) and MASK_KIND != 2
        EXP_SPLIT: tl.constexpr = EXP_FMA if not BOUNDS and MASK_KIND == 0 else 0
        if EXACT:
            s = _exact_qk(q_full, K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N,
                          BOUNDS, DOT_PREC, TMA_N)
        elif EXPANDED:
            kt = _load_kt(K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N, BOUNDS, DOT_T,
                          TMA_N)
            s = tl.dot(qt, kt, input_precision=DOT_PREC)
            if MIXED:
                se = tl.dot(q_full, kt, input_precision=DOT_PREC)
        else:
            ktt = _grouped_kt(KG, GRP_B, WB_B, start_n, M, stride_kgn, stride_kgd, G, DG, DG_PAD, BLOCK_N,
                              FUSION_MEAN, BOUNDS, DOT_T)
            s = tl.dot(qt, ktt, input_precision=DOT_PREC)
            if MIXED:
                se = _exact_qk(q_full, K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N,
                               BOUNDS, DOT_PREC, TMA_N)
        if not AFFINE:  # scores in log2 units, element by element
            s = s * qk_scale2
            if HAS_CORR and not EXACT:
                s = s - corr2[:, None]
            if MIXED:
                dist = offs_m[:, None] + (M - N) - offs_n[None, :]
                s = tl.where((dist < WINDOW) & (dist > -WINDOW), se * qk_scale2, s)
            if OUTSIDE_BAND:
                dist = offs_m[:, None] + (M - N) - offs_n[None, :]
                s = tl.where((dist < WINDOW) & (dist > -WINDOW), float("-inf"), s)
            if MASK_KIND == 2:
                mv = tl.load(MASKP + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_mm,
                             mask=(offs_m < N)[:, None] & (offs_n < M)[None, :], other=float("-inf"))
                s = s + mv * 1.4426950408889634
        if BOUNDS or MASK_KIND == 1:
            ok = _allowed(offs_m, offs_n, N, M, MASKP, stride_mn, stride_mm, CAUSAL, BOUNDS, MASK_KIND)
            s = tl.where(ok, s, float("-inf"))
        row_off = tl.zeros_like(m_i)
        if AFFINE:
            if HAS_CORR and not EXACT:
                row_off = corr2
            m_tile = tl.max(s, 1) * qk_scale2 - row_off
        else:
            m_tile = tl.max(s, 1)
        if RESCALE_SLACK > 0:  # the rows' reference max moves only when some row's tile max passes it by the slack
            if tl.max((m_tile > m_i + RESCALE_SLACK).to(tl.int32), 0) > 0:
                m_up = tl.maximum(m_i, m_tile)
                alpha = tl.math.exp2(tl.where(m_i == float("-inf"), 0.0, m_i)
                                     - tl.where(m_up == float("-inf"), 0.0, m_up))
                l_i = l_i * alpha
                acc = acc * alpha[:, None]
                m_i = m_up
            m_new = m_i
            m_use = tl.where(m_i == float("-inf"), 0.0, m_i)
        else:
            m_new = tl.maximum(m_i, m_tile)
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        if AFFINE:
            p = _exp2_tile(s * qk_scale2 - (m_use + row_off)[:, None], s.shape[0], BLOCK_N, EXP_SPLIT)
        else:
            p = _exp2_tile(s - m_use[:, None], s.shape[0], BLOCK_N, EXP_SPLIT)
        if RESCALE_SLACK > 0:
            l_i = l_i + tl.sum(p, 1)
        else:
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
        v = _load_v(V, VD, kb, kh, start_n, M, stride_vn, stride_vd, HEAD_DIM, D_PAD, BLOCK_N, BOUNDS, DOT_T, TMA_N)
        acc = tl.dot(p.to(DOT_T), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _sigma2_start(qt, Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_T: tl.constexpr, EXPANDED: tl.constexpr,
                  SIGMA2_DIFF: tl.constexpr, DEFER_SUMS: tl.constexpr):
    """What a σ² sum over the band starts from: the exact query tile, Q_eff − Q (SIGMA2_DIFF on the expanded path;
    else ``qt``, unused), zero squares ([BLOCK_M, BLOCK_N] with DEFER_SUMS, else [BLOCK_M]) and zero counts."""
    q_full = _load_q_tile(Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM, D_PAD, DOT_T)
    dq = qt
    if EXPANDED and SIGMA2_DIFF:
        dq = (qt.to(tl.float32) - q_full.to(tl.float32)).to(DOT_T)
    if DEFER_SUMS:
        sq = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    else:
        sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    return q_full, dq, sq, tl.zeros([BLOCK_M], dtype=tl.float32)


@triton.jit
def _band_sigma2_tile(sq, cnt, qt, q_full, dq, start_n, KG, GRP_B, WB_B, K, KD, kb, kh, MASKP, offs_m, N, M, WINDOW,
                      scale, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_mn, stride_mm,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, DG: tl.constexpr,
                      DG_PAD: tl.constexpr, BLOCK_N: tl.constexpr, FUSION_MEAN: tl.constexpr, CAUSAL: tl.constexpr,
                      MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr, EXPANDED: tl.constexpr,
                      TMA_N: tl.constexpr, SIGMA2_DIFF: tl.constexpr, DEFER_SUMS: tl.constexpr):
    """One band key tile of a σ² sum: grouped and exact raw scores against the tile, their squared difference (after
    scale) added to ``sq`` over ``sel`` (the band entries the row may attend, tensor mask included), ``sel`` counted
    into ``cnt`` unless the counts are closed-form (DEFER_SUMS without a mask; ``_sigma2_rows``). SIGMA2_DIFF
    (expanded path): the difference by one dot of ``dq`` = Q_eff − Q. Returns (exact raw scores, sel, sq, cnt)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if EXPANDED:  # Q_eff and Q against the same key tile
        kt = _load_kt(K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N, True, DOT_T, TMA_N)
        se = tl.dot(q_full, kt, input_precision=DOT_PREC)
        if SIGMA2_DIFF:
            raw_diff = tl.dot(dq, kt, input_precision=DOT_PREC)
        else:
            raw_diff = tl.dot(qt, kt, input_precision=DOT_PREC) - se
    else:
        sg = tl.dot(qt, _grouped_kt(KG, GRP_B, WB_B, start_n, M, stride_kgn, stride_kgd, G, DG, DG_PAD, BLOCK_N,
                                    FUSION_MEAN, True, DOT_T), input_precision=DOT_PREC)
        se = _exact_qk(q_full, K, KD, kb, kh, start_n, M, stride_kn, stride_kd, HEAD_DIM, D_PAD, BLOCK_N, True,
                       DOT_PREC, TMA_N)
        raw_diff = sg - se
    dist = offs_m[:, None] + (M - N) - offs_n[None, :]
    sel = (dist < WINDOW) & (dist > -WINDOW)
    sel = sel & _allowed(offs_m, offs_n, N, M, MASKP, stride_mn, stride_mm, CAUSAL, True, MASK_KIND)
    if MASK_KIND == 2:
        mv = tl.load(MASKP + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_mm,
                     mask=(offs_m < N)[:, None] & (offs_n < M)[None, :], other=float("-inf"))
        sel = sel & (mv > float("-inf"))
    diff = raw_diff * scale
    if DEFER_SUMS:
        sq += tl.where(sel, diff * diff, 0.0)
    else:
        sq += tl.sum(tl.where(sel, diff * diff, 0.0), 1)
    if not DEFER_SUMS or MASK_KIND != 0:
        cnt += tl.sum(sel.to(tl.float32), 1)
    return se, sel, sq, cnt


@triton.jit
def _band_sigma2(qt, lo, hi, Q, KG, GRP_B, WB_B, K, KD, kb, kh, MASKP, offs_m, N, M, WINDOW, scale,
                 stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_mn, stride_mm,
                 HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, DG: tl.constexpr,
                 DG_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FUSION_MEAN: tl.constexpr,
                 CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr,
                 EXPANDED: tl.constexpr, TMA_N: tl.constexpr, SIGMA2_DIFF: tl.constexpr,
                 DEFER_SUMS: tl.constexpr = False):
    """σ² per row: mean of (grouped − exact)² (after scale) over attendable band entries. With SIGMA2_DIFF (expanded
    path) the difference is one dot, (Q_eff − Q) Kᵀ, instead of two (Q_eff − Q rounded once to the dot type).
    With DEFER_SUMS the squares add up element by element in a [BLOCK_M, BLOCK_N] tile summed over the keys once,
    after the loop, and without a tensor mask each row's count of attendable band keys is closed-form (no row
    reductions inside the loop; with a tensor mask the counts are still summed per key tile); else both are summed
    per key tile."""
    q_full, dq, sq, cnt = _sigma2_start(qt, Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N,
                                        DOT_T, EXPANDED, SIGMA2_DIFF, DEFER_SUMS)
    for start_n in range(lo, hi, BLOCK_N):
        _se, _sel, sq, cnt = _band_sigma2_tile(
            sq, cnt, qt, q_full, dq, start_n, KG, GRP_B, WB_B, K, KD, kb, kh, MASKP, offs_m, N, M, WINDOW, scale,
            stride_kgn, stride_kgd, stride_kn, stride_kd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD,
            BLOCK_N, FUSION_MEAN, CAUSAL, MASK_KIND, DOT_PREC, DOT_T, EXPANDED, TMA_N, SIGMA2_DIFF, DEFER_SUMS)
    return _sigma2_rows(sq, cnt, offs_m, N, M, WINDOW, CAUSAL, MASK_KIND, DEFER_SUMS)


@triton.jit
def _sigma2_rows(sq, cnt, offs_m, N, M, WINDOW, CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr,
                 DEFER_SUMS: tl.constexpr):
    """σ² per row, fp32 [BLOCK_M], from a pass's sums of squared errors ``sq`` ([BLOCK_M, BLOCK_N] with DEFER_SUMS,
    else [BLOCK_M]) and counts ``cnt`` [BLOCK_M]; deferred without a tensor mask the counts are closed-form (keys j
    with |i + M - N - j| < WINDOW in [0, M), and j <= i + M - N with causal masking). 0 for a row with none."""
    if DEFER_SUMS:
        sq_row = tl.sum(sq, 1)
        cnt_row = cnt
        if MASK_KIND == 0:
            diag = offs_m + (M - N)
            last = tl.minimum(diag + WINDOW - 1, M - 1)
            if CAUSAL:
                last = tl.minimum(last, diag)
            cnt_row = tl.maximum(last - tl.maximum(diag - WINDOW + 1, 0) + 1, 0).to(tl.float32)
    else:
        sq_row = sq
        cnt_row = cnt
    return tl.where(cnt_row > 0, sq_row / tl.maximum(cnt_row, 1.0), 0.0)


@triton.jit
def _band_first_tiles(acc, m_i, l_i, qt, lo, hi, Q, KG, GRP_B, WB_B, K, V, KD, VD, kb, kh, MASKP, offs_m, N, M,
                      WINDOW, scale, qk_scale2, stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd,
                      stride_vn, stride_vd, stride_mn, stride_mm,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, DG: tl.constexpr,
                      DG_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FUSION_MEAN: tl.constexpr,
                      CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr,
                      EXPANDED: tl.constexpr, TMA_N: tl.constexpr, DEFER_SUMS: tl.constexpr,
                      SIGMA2_DIFF: tl.constexpr):
    """The band segment's key tiles [lo, hi) with their band entries only, exact, and σ² from the same two products
    (no σ² pass before the keys): online softmax over |i + M - N - j| < WINDOW, the other entries left for a
    second visit of the tiles that have some (``_attn_tiles`` with OUTSIDE_BAND, once σ² is known).
    SIGMA2_DIFF: as in ``_band_sigma2``. Returns (acc, m_i, l_i, σ² per row)."""
    q_full, dq, sq, cnt = _sigma2_start(qt, Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM, D_PAD, BLOCK_M, BLOCK_N,
                                        DOT_T, EXPANDED, SIGMA2_DIFF, DEFER_SUMS)
    for start_n in range(lo, hi, BLOCK_N):
        se, sel, sq, cnt = _band_sigma2_tile(
            sq, cnt, qt, q_full, dq, start_n, KG, GRP_B, WB_B, K, KD, kb, kh, MASKP, offs_m, N, M, WINDOW, scale,
            stride_kgn, stride_kgd, stride_kn, stride_kd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD,
            BLOCK_N, FUSION_MEAN, CAUSAL, MASK_KIND, DOT_PREC, DOT_T, EXPANDED, TMA_N, SIGMA2_DIFF, DEFER_SUMS)
        s = se * qk_scale2
        if MASK_KIND == 2:  # (sel already leaves out the entries the mask sets to -inf)
            offs_n = start_n + tl.arange(0, BLOCK_N)
            s = s + tl.load(MASKP + offs_m[:, None] * stride_mn + offs_n[None, :] * stride_mm,
                            mask=(offs_m < N)[:, None] & (offs_n < M)[None, :], other=0.0) * 1.4426950408889634
        s = tl.where(sel, s, float("-inf"))  # sel: the band entries the row may attend, which σ² averages over
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_v(V, VD, kb, kh, start_n, M, stride_vn, stride_vd, HEAD_DIM, D_PAD, BLOCK_N, True, DOT_T, TMA_N)
        acc = tl.dot(p.to(DOT_T), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i, _sigma2_rows(sq, cnt, offs_m, N, M, WINDOW, CAUSAL, MASK_KIND, DEFER_SUMS)


@triton.jit
def _key_segments(m0, N, M, WINDOW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                  HAS_WINDOW: tl.constexpr):
    """Key ranges of the query tile starting at row m0 (shared by the forward and the dQ backward).

    Returns (hi, seg_a, seg_b, seg_c, band_lo, band_hi): keys [0, hi) may be attended (bottom-right causal);
    [0,a) plain | [a,b) the exact band, mixed and checked | [b,c) plain | [c,hi) checked (tails, diagonal).
    [band_lo, band_hi) are the key tiles that meet the band (0, 0 without a window).
    """
    off = M - N
    hi = M
    if CAUSAL:
        hi = tl.maximum(tl.minimum(M, m0 + BLOCK_M + off), 0)
    mask_start = (M // BLOCK_N) * BLOCK_N
    if CAUSAL:
        mask_start = tl.minimum(mask_start, (tl.maximum(m0 + off + 1, 0) // BLOCK_N) * BLOCK_N)
    seg_a = mask_start
    seg_b = mask_start
    band_lo = 0
    band_hi = 0
    if HAS_WINDOW:
        band_lo = (tl.maximum(m0 + off - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
        band_hi = tl.minimum(hi, tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 + off + WINDOW, 0), BLOCK_N) * BLOCK_N)
        seg_a = tl.minimum(band_lo, mask_start)
        seg_b = tl.maximum(seg_a, band_hi)
    seg_c = tl.maximum(seg_b, mask_start)
    return hi, seg_a, seg_b, seg_c, band_lo, band_hi


@triton.jit
def _inside_band(m0, N, M, WINDOW, seg_a, seg_b, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles of the band segment [seg_a, seg_b) (BLOCK_N-aligned) that lie inside the exact band for every
    row of the query tile at m0: [x_lo, x_hi), BLOCK_N-aligned, empty (x_lo == x_hi) where none does.

    Tile [j, j + BLOCK_N) is inside for rows m0 .. m0 + BLOCK_M - 1 when every |i + M - N - key| < WINDOW, i.e.
    j >= m0 + BLOCK_M + off - WINDOW and j + BLOCK_N <= m0 + off + WINDOW (off = M - N)."""
    off = M - N
    x_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M + off - WINDOW, 0), BLOCK_N) * BLOCK_N
    x_hi = (tl.maximum(m0 + off + WINDOW, 0) // BLOCK_N) * BLOCK_N
    x_lo = tl.minimum(tl.maximum(x_lo, seg_a), seg_b)
    x_hi = tl.maximum(tl.minimum(x_hi, seg_b), x_lo)
    return x_lo, x_hi


@triton.jit
def _distr_fwd_kernel(
    Q, QE, K, KG, V, KD, VD, O, LSE, GRP, INV, WA, WB, MASK, QT, R, QV,
    scale, qk_scale2, half_corr, mean_a, stride_qvb,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_qeb, stride_qeh, stride_qen, stride_qed,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_kgb, stride_kgh, stride_kgn, stride_kgd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_mb, stride_mh, stride_mn, stride_mm,
    Hq, N, M, NB, KV_REP, WINDOW,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, DG: tl.constexpr, DG_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BAND_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CORR: tl.constexpr, MASK_KIND: tl.constexpr,
    EXACT: tl.constexpr, FUSION_MEAN: tl.constexpr, DOT_PREC: tl.constexpr, DOT_T: tl.constexpr,
    STORE_LSE: tl.constexpr, QT_SCRATCH: tl.constexpr,
    FUSED_GROUPING: tl.constexpr, NBITS: tl.constexpr, NBITS_PAD: tl.constexpr, HAS_QV: tl.constexpr,
    RANK1: tl.constexpr, GB_DG: tl.constexpr, GB_CH: tl.constexpr, STEPS: tl.constexpr, U_ZERO: tl.constexpr,
    EXACT_DOT: tl.constexpr, PAIR_GRAM: tl.constexpr, GRAM_F32: tl.constexpr, RANK_ORDER: tl.constexpr,
    GB_PROJ_16BIT: tl.constexpr, EXPANDED: tl.constexpr, TMA_N: tl.constexpr, QE_PROLOGUE: tl.constexpr,
    GROUP_BM: tl.constexpr,
    SPLIT_W: tl.constexpr, STORE_QE: tl.constexpr, GB_GRAM_DOT: tl.constexpr, WS: tl.constexpr = False,
    SCALE_AFTER_MAX: tl.constexpr = False, SIGMA2_DIFF: tl.constexpr = False, TILE_ORDER: tl.constexpr = 0,
    EXP_FMA: tl.constexpr = 0, RESCALE_SLACK: tl.constexpr = 0.0, BAND_EXACT: tl.constexpr = False,
    SIGMA2_DEFER: tl.constexpr = False, BAND_FIRST: tl.constexpr = False,
):
    """One program: one query tile of BLOCK_M rows of one (batch, query head); on the reduced path
    (not EXPANDED) the tile is one grouping block.

    Plain key tiles are BLOCK_N wide; the tiles that meet the exact band (both products, two score
    tiles live) step by BAND_N, a divisor of BLOCK_N, inside the same BLOCK_N-aligned band segment.
    With BAND_EXACT the band segment's BLOCK_N tiles that lie inside the band for every row of the tile
    (``_inside_band``) take the exact product alone. The σ² pass over the band steps by BAND_N; with
    SIGMA2_DEFER it sums over the keys once, after its loop (``_band_sigma2``). With BAND_FIRST (and a correction)
    there is no σ² pass: the band segment's tiles run first, their band entries only, and take σ² from their own
    two products (``_band_first_tiles``); the band tiles with entries outside the band then run again for those
    (OUTSIDE_BAND: grouped, corrected).

    With FUSED_GROUPING the program first computes its block's grouping (and rank1 weights) itself
    (``grouping_triton.group_block``: the same function as the grouping kernel, written to GRP / WB, then
    read back like precomputed groups) instead of a separate launch having done it.

    With EXPANDED the grouped scores are Q_eff Kᵀ (``QE``: Q_eff = Q̃ spread back over the d columns,
    formed per row from its own grouping block by ``regroup``, so BLOCK_M need not equal the grouping
    block_m): the same function as Q̃ K̃ᵀ, on K's tiles as loaded, without the per-tile K̃ gather.

    With QE_PROLOGUE (and EXPANDED) the program forms its tile's Q_eff itself from Q and its grouping blocks'
    fusion matrices (``regroup.fused_query_tile``: INV, WA, WB or the mean weights ``mean_a``, 1), instead of
    loading QE; with STORE_QE it also stores that Q_eff to QE (in QE's dtype) for the backward. TMA_N > 0: K and
    V tiles of TMA_N keys come through the tensor descriptors KD / VD.

    With STORE_LSE, LSE[b, h, i] (fp32, contiguous [B, Hq, N]) receives the row's log-sum-exp in
    log2 units of the scaled, corrected scores (+inf for a fully masked row), for the backward.
    """
    if TILE_ORDER == 2:  # heads on the grid's first axis, the last query tiles (with causal, the heaviest) first
        pid_bh = tl.program_id(0)
        pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    elif TILE_ORDER == 1:  # per head, the last query tiles first
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
        pid_bh = tl.program_id(1)
    else:
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // KV_REP
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + hk.to(tl.int64) * stride_kh
    KG += b.to(tl.int64) * stride_kgb + hk.to(tl.int64) * stride_kgh
    V += b.to(tl.int64) * stride_vb + hk.to(tl.int64) * stride_vh
    O += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    MASKP = MASK
    if MASK_KIND != 0:
        MASKP = MASK + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh
    blk_off = (pid_bh.to(tl.int64) * NB + pid_m) * HEAD_DIM
    GRP_B = GRP + blk_off
    WB_B = WB + blk_off

    if FUSED_GROUPING:  # this block's grouping, here instead of in a launch of its own
        # (EXPANDED: also each column's sorted position, which the Q_eff prologue below reads back)
        group_block(Q, QV + b.to(tl.int64) * stride_qvb, R, GRP_B, WB_B, INV + blk_off if EXPANDED else GRP_B,
                    pid_m, stride_qn, stride_qd, N, HEAD_DIM, D_PAD, BLOCK_M, NBITS, NBITS_PAD, HAS_QV, RANK1, G,
                    GB_DG, GB_CH, STEPS, U_ZERO, EXACT_DOT, PAIR_GRAM, GRAM_F32, RANK_ORDER, EXPANDED, GB_PROJ_16BIT,
                    GB_GRAM_DOT)
        tl.debug_barrier()  # the order, positions and weights are read back below by other threads

    # ---- the tile's fused queries, formed once: Q̃[:, g] = Σ_i a Q[:, col(g·G+i)]
    qt = tl.zeros([BLOCK_M, DG_PAD], dtype=DOT_T)
    if EXPANDED and QE_PROLOGUE:  # Q_eff formed here: one dot per grouping block with its fusion matrix
        qt = fused_query_tile(_load_q_tile(Q, offs_m, N, stride_qn, stride_qd, HEAD_DIM, D_PAD, DOT_T),
                              INV, WA, WB, mean_a, pid_bh, m0, NB, HEAD_DIM, D_PAD, G, GROUP_BM, BLOCK_M,
                              not FUSION_MEAN, SPLIT_W, DOT_T, DOT_PREC)
        if STORE_QE:
            tl.store(QE + b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh + offs_m[:, None] * stride_qen
                     + offs_d[None, :] * stride_qed, qt.to(QE.dtype.element_ty),
                     mask=(offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :])
        if QT_SCRATCH:  # round trip through global memory (the stored Q_eff, else the scratch): the key loop's dot
            # then takes Q_eff from shared memory; from registers, the layout change Triton places inside the loop
            # made ptxas serialise every wgmma of the kernel (C7513)
            if STORE_QE:
                tl.debug_barrier()
                qt = _load_q_tile(QE + b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh, offs_m, N,
                                  stride_qen, stride_qed, HEAD_DIM, D_PAD, DOT_T)
            else:
                qt = _through_scratch(QT, qt, pid_bh, offs_m, offs_d, N, BLOCK_M, D_PAD)
    elif EXPANDED:  # Q_eff, formed before the launch
        qt = _load_q_tile(QE + b.to(tl.int64) * stride_qeb + h.to(tl.int64) * stride_qeh, offs_m, N,
                          stride_qen, stride_qed, HEAD_DIM, D_PAD, DOT_T)
    elif not EXACT:
        offs_g = tl.arange(0, DG_PAD)
        gmask = offs_g < DG
        qacc = tl.zeros([BLOCK_M, DG_PAD], dtype=tl.float32)
        for i in tl.static_range(G):
            col = tl.load(GRP_B + offs_g * G + i, mask=gmask, other=0)
            x = tl.load(Q + offs_m[:, None] * stride_qn + col.to(tl.int64)[None, :] * stride_qd,
                        mask=(offs_m < N)[:, None] & gmask[None, :], other=0.0).to(tl.float32)
            if FUSION_MEAN:
                qacc += x
            else:
                qacc += x * tl.load(WA + blk_off + offs_g * G + i, mask=gmask, other=0.0)[None, :]
        if FUSION_MEAN:
            qacc = qacc * (1.0 / G)
        qt = qacc.to(DOT_T)
        if QT_SCRATCH:  # round trip through global memory: the dot then takes Q̃ from shared memory
            qt = _through_scratch(QT, qt, pid_bh, offs_m, offs_g, N, BLOCK_M, DG_PAD)

    # ---- key ranges: [0,a) plain | [a,b) band: exact+grouped, checked | [b,c) plain | [c,hi) checked
    hi, seg_a, seg_b, seg_c, _bl, _bh = _key_segments(m0, N, M, WINDOW, BLOCK_M, BLOCK_N, CAUSAL, HAS_WINDOW)

    BAND_DONE: tl.constexpr = HAS_CORR and BAND_FIRST  # the band segment ran first (σ² from its own products)
    corr2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    if BAND_DONE:
        acc, m_i, l_i, sigma2 = _band_first_tiles(
            acc, m_i, l_i, qt, seg_a, tl.minimum(seg_b, hi), Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m,
            N, M, WINDOW, scale, qk_scale2, stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd,
            stride_vn, stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BLOCK_M, BAND_N, FUSION_MEAN,
            CAUSAL, MASK_KIND, DOT_PREC, DOT_T, EXPANDED, TMA_N, SIGMA2_DEFER, SIGMA2_DIFF)
        corr2 = half_corr * sigma2 * 1.4426950408889634
        # the band's tiles again where some row has keys outside the band: those entries, grouped and corrected
        x_lo, x_hi = _inside_band(m0, N, M, WINDOW, seg_a, seg_b, BLOCK_M, BAND_N)
        acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, seg_a, tl.minimum(x_lo, hi),
                                    Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                    stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                    stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BAND_N,
                                    EXACT, FUSION_MEAN, False, True, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                    EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK, True)
        acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, x_hi, tl.minimum(seg_b, hi),
                                    Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                    stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                    stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BAND_N,
                                    EXACT, FUSION_MEAN, False, True, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                    EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK, True)
    elif HAS_CORR:  # σ² first, from the band tiles, so every grouped score can be corrected
        _h, _a, _b, _c, band_lo, band_hi = _key_segments(m0, N, M, WINDOW, BLOCK_M, BAND_N, CAUSAL, HAS_WINDOW)
        sigma2 = _band_sigma2(qt, band_lo, band_hi, Q, KG, GRP_B, WB_B, K, KD, b, hk, MASKP, offs_m, N, M, WINDOW,
                              scale, stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_mn,
                              stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BLOCK_M, BAND_N, FUSION_MEAN, CAUSAL,
                              MASK_KIND, DOT_PREC, DOT_T, EXPANDED, TMA_N, SIGMA2_DIFF, SIGMA2_DEFER)
        corr2 = half_corr * sigma2 * 1.4426950408889634

    acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, 0, tl.minimum(seg_a, hi),
                                Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BLOCK_N, EXACT,
                                FUSION_MEAN, False, False, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                EXPANDED, TMA_N, WS, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK)
    if HAS_WINDOW and not BAND_DONE:
        # the band segment [a, b): with BAND_EXACT its key tiles [x_lo, x_hi) that lie inside the band for every
        # row of the tile take the exact product alone (one dot, one score tile), the rest both products
        x_lo = seg_b
        x_hi = seg_b
        if BAND_EXACT:
            x_lo, x_hi = _inside_band(m0, N, M, WINDOW, seg_a, seg_b, BLOCK_M, BLOCK_N)
        acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, seg_a, tl.minimum(x_lo, hi),
                                    Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                    stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                    stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BAND_N,
                                    EXACT, FUSION_MEAN, True, True, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                    EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK)
        if BAND_EXACT:
            acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, x_lo, tl.minimum(x_hi, hi),
                                        Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW,
                                        qk_scale2, stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn,
                                        stride_kd, stride_vn, stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG,
                                        DG_PAD, BLOCK_N, True, FUSION_MEAN, False, True, CAUSAL, HAS_CORR,
                                        MASK_KIND, DOT_PREC, DOT_T, EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA,
                                        RESCALE_SLACK)
            acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, x_hi, tl.minimum(seg_b, hi),
                                        Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW,
                                        qk_scale2, stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn,
                                        stride_kd, stride_vn, stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG,
                                        DG_PAD, BAND_N, EXACT, FUSION_MEAN, True, True, CAUSAL, HAS_CORR, MASK_KIND,
                                        DOT_PREC, DOT_T, EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA,
                                        RESCALE_SLACK)
    if HAS_WINDOW:
        acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, seg_b, tl.minimum(seg_c, hi),
                                    Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                    stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                    stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BLOCK_N,
                                    EXACT, FUSION_MEAN, False, False, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                    EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK)
    acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, corr2, qt, seg_c, hi,
                                Q, KG, GRP_B, WB_B, K, V, KD, VD, b, hk, MASKP, offs_m, N, M, WINDOW, qk_scale2,
                                stride_qn, stride_qd, stride_kgn, stride_kgd, stride_kn, stride_kd, stride_vn,
                                stride_vd, stride_mn, stride_mm, HEAD_DIM, D_PAD, G, DG, DG_PAD, BLOCK_N, EXACT,
                                FUSION_MEAN, False, True, CAUSAL, HAS_CORR, MASK_KIND, DOT_PREC, DOT_T,
                                EXPANDED, TMA_N, False, SCALE_AFTER_MAX, EXP_FMA, RESCALE_SLACK)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    omask = (offs_m < N)[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty), mask=omask)
    if STORE_LSE:
        lse2 = tl.where(l_i > 0, m_i + tl.math.log2(tl.where(l_i > 0, l_i, 1.0)), float("inf"))
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse2, mask=offs_m < N)


@triton.jit
def _transpose_keys_kernel(K, KT, stride_kb, stride_kh, stride_kn, stride_kd, Hkv, M,
                           HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """KT[b, h] = K[b, h]ᵀ: [M, d] -> contiguous [d, M], one BLOCK_N-key tile per program."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hkv
    h = pid_bh % Hkv
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    msk = (offs_n < M)[:, None] & (offs_d < HEAD_DIM)[None, :]
    x = tl.load(K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :] * stride_kd, mask=msk, other=0.0)
    out = KT + pid_bh.to(tl.int64) * HEAD_DIM * M
    tl.store(out + offs_d[:, None] * M + offs_n[None, :], tl.trans(x), mask=tl.trans(msk))


# --------------------------------------------------------------------------- launcher
def transpose_keys(k: torch.Tensor) -> torch.Tensor:
    """[B, Hkv, M, d] (any strides) -> contiguous [B, Hkv, d, M] copy, one pass."""
    B, H, M, d = k.shape
    kt = torch.empty(B, H, d, M, device=k.device, dtype=k.dtype)
    launch(_transpose_keys_kernel, (cdiv(M, 64), B * H), k, kt, *k.stride(), H, M, HEAD_DIM=d,
           D_PAD=next_power_of_2(d), BLOCK_N=64, num_warps=4)
    return kt


def _dot_dtype(dtype: torch.dtype):
    """Operand type of the kernel's dots: the input dtype on the GPU. The Triton
    interpreter (CPU tests) computes bf16 dots wrongly, so there they run in fp32."""
    if dtype == torch.float32 or (dtype == torch.bfloat16 and interpreting()):
        return tl.float32
    return tl.bfloat16 if dtype == torch.bfloat16 else tl.float16


def _mask_operand(attention_mask, B, Hq, N, M, device):
    """(kind, tensor, strides[4]) for the kernel; broadcast dims get stride 0."""
    allowed, additive = normalize_mask(attention_mask)
    if allowed is None:
        return MASK_NONE, torch.empty(1, device=device, dtype=torch.float32), (0, 0, 0, 0)
    if additive is None:
        t = allowed.view(torch.uint8) if allowed.dtype == torch.bool else allowed
        kind = MASK_BOOL
    else:
        t = torch.where(allowed, additive, torch.full((), float("-inf"), device=device))
        kind = MASK_ADDITIVE
    t = t.expand(B, Hq, N, M) if t.dim() == 4 else t
    strides = tuple(0 if t.shape[i] == 1 and (B, Hq, N, M)[i] != 1 else t.stride(i) for i in range(4))
    return kind, t, strides


@functools.lru_cache(maxsize=None)
def _major_capability(index: int | None) -> int:
    """The CUDA device's compute capability major (cached: ``kv_descriptors`` runs on every call)."""
    return torch.cuda.get_device_capability(index)[0]


def tile_descriptors(tensors, block_rows: int, d_pad: int):
    """Tensor descriptors (the copy engine's tile loads) over [B, H, rows, d] tensors with [1, 1, block_rows, d_pad]
    blocks, or None where they do not apply: no ``TensorDescriptor`` in this Triton, a GPU before Hopper,
    strides / addresses that are not 16-byte aligned with a unit stride along d, or a broadcast (stride-0)
    dimension, such as the expanded gradient of ``out.sum()``, which the copy engine's descriptors cannot
    express (then the kernels load by pointers, the same function)."""
    if TensorDescriptor is None or (tensors[0].is_cuda and _major_capability(tensors[0].device.index) < 9):
        return None
    for t in tensors:
        size = t.element_size()
        lead = t.stride()[:-1]
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any((st * size) % 16 or st == 0 for st in lead):
            return None
    block = [1, 1, block_rows, d_pad]
    return tuple(TensorDescriptor(t, list(t.shape), list(t.stride()), block) for t in tensors)


def kv_descriptors(k: torch.Tensor, v: torch.Tensor, block_n: int, d_pad: int):
    """``tile_descriptors`` over k, v [B, Hkv, M, d] with [1, 1, block_n, d_pad] blocks (or None)."""
    return tile_descriptors((k, v), block_n, d_pad)


def _fused_grouping_meta(gl) -> dict:
    """The attention kernel's constexprs for its fused-grouping prologue (placeholders when off)."""
    if gl is None:
        return dict(FUSED_GROUPING=False, NBITS=16, NBITS_PAD=16, HAS_QV=False, RANK1=False, GB_DG=16, GB_CH=32,
                    STEPS=1, U_ZERO=1.0, EXACT_DOT=False, PAIR_GRAM=False, GRAM_F32=False, RANK_ORDER=False,
                    GB_PROJ_16BIT=False, GB_GRAM_DOT=False)
    m = gl.meta
    return dict(FUSED_GROUPING=True, NBITS=m["NBITS"], NBITS_PAD=m["NBITS_PAD"], HAS_QV=m["HAS_QV"],
                RANK1=m["RANK1"], GB_DG=m["DG"], GB_CH=m["CH"], STEPS=m["STEPS"], U_ZERO=m["U_ZERO"],
                EXACT_DOT=m["EXACT_DOT"], PAIR_GRAM=m["PAIR_GRAM"], GRAM_F32=m["GRAM_F32"],
                RANK_ORDER=m["RANK_ORDER"], GB_PROJ_16BIT=m["PROJ_16BIT"], GB_GRAM_DOT=m["GRAM_DOT"])


def _triton_forward(q, k, v, *, group_size, block_m, fusion, exact_window, window_correction, causal,
                    attention_mask, scale, num_hash_bits, seed, query_valid, groups,
                    config: FwdConfig | None = None, return_lse: bool = False, keep_qeff: bool = False):
    """Launch the fused forward. q [B,Hq,N,d], k/v [B,Hkv,M,d] -> out [B,Hq,N,d] (q's dtype).

    With ``return_lse``: (out, lse, groups, wa, wb): lse [B,Hq,N] fp32 in log2 units of the
    scaled scores (+inf for fully masked rows); groups int32 [B,Hq,NB,d] (None for G=1) and
    the fusion weights (None for mean fusion) the kernel used, for the backward. With ``keep_qeff`` too,
    two more: the Q_eff the kernel used [B,Hq,N,d] (q's dtype; the prologue stores it) and the column ->
    position map int32 [B,Hq,NB,d], both None where the path has none (G=1, grouped_qk="reduced").
    """
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    G = group_size
    exact = G == 1
    cfg = config or fwd_config(d, G, block_m, exact_window=exact_window, fp32=q.dtype == torch.float32,
                              masked=attention_mask is not None)
    expanded = not exact and cfg.grouped_qk == "expanded"
    if cfg.grouped_qk not in ("reduced", "expanded"):
        raise ValueError(f"config.grouped_qk must be 'reduced' or 'expanded', got {cfg.grouped_qk!r}")
    if cfg.k_layout not in ("transposed", "natural"):
        raise ValueError(f"config.k_layout must be 'transposed' or 'natural', got {cfg.k_layout!r}")
    if not exact and not expanded and cfg.block_m != block_m:
        raise ValueError(f"kernel tile {cfg.block_m} must equal the grouping block_m={block_m}")
    if expanded and cfg.fused_grouping and not (cfg.qeff_prologue and cfg.block_m == block_m):
        raise ValueError(f"config.fused_grouping with grouped_qk='expanded' needs qeff_prologue=True and "
                         f"config.block_m equal to the grouping block_m={block_m} (one grouping block per "
                         f"program), got qeff_prologue={cfg.qeff_prologue}, block_m={cfg.block_m}")
    band_n = cfg.band_block_n or cfg.block_n
    if cfg.block_n % band_n or band_n < 16:  # the band segment is BLOCK_N-aligned; sub-tiles must fit it
        raise ValueError(f"config.band_block_n={band_n} must divide block_n={cfg.block_n} and be >= 16")
    if cfg.maxnreg is not None and not 24 <= cfg.maxnreg <= 255:  # what ptxas accepts for .maxnreg
        raise ValueError(f"config.maxnreg must be None or in [24, 255] registers per thread, got {cfg.maxnreg}")
    if cfg.exp_fma not in (0, 2, 4):  # (key tiles of >= 16 keys split into halves and quarters)
        raise ValueError(f"config.exp_fma must be 0, 2 or 4, got {cfg.exp_fma!r}")
    slack = parse_rescale_slack(cfg.rescale_slack)
    inv = None  # column -> sorted position (the Q_eff prologue's map), from the grouping launch or torch below
    if exact:
        grp = wa = wb = torch.empty(1, device=q.device, dtype=torch.float32)
        nb = 1
    fused = not exact and groups is None and cfg.fused_grouping
    gl = None
    if fused:  # the attention kernel computes the grouping in its prologue
        gl = grouping_launch(q, group_size=G, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed,
                             query_valid=query_valid, fusion=fusion, positions=expanded)
        grp, wa, wb = gl.groups, gl.w, gl.w  # mean: w is groups, a dummy the kernel never reads
        inv = gl.inv if expanded else None
        nb = grp.shape[2]
    if QEFF_LAUNCH not in ("one", "two"):
        raise ValueError(f"distr_attn.QEFF_LAUNCH (environment variable DISTR_FWD_QEFF_LAUNCH) must be 'one' or "
                         f"'two', got {QEFF_LAUNCH!r}")
    qe_formed = None
    if not fused and not exact and groups is None and expanded and not cfg.qeff_prologue and QEFF_LAUNCH == "one":
        qe_formed, grp, wa, wb, inv = grouping_triton.triton_query_effective(
            q, group_size=G, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid,
            fusion=fusion)
        if wa is None:
            wa = wb = grp
        nb = grp.shape[2]
    elif not exact and not fused:
        if groups is None:
            kernel_inv = expanded and cfg.qeff_prologue and grouping_triton.POSITIONS == "kernel"
            grp, wa, wb, *kinv = triton_grouping(q, group_size=G, block_m=block_m, num_hash_bits=num_hash_bits,
                                                 seed=seed, query_valid=query_valid, fusion=fusion,
                                                 positions=kernel_inv)
            inv = kinv[0] if kinv else None
        else:
            grp = groups.to(torch.int32).contiguous()
            wa = wb = None
            if fusion != "mean":
                wa, wb = fusion_weights(q, groups, group_size=G, block_m=block_m, fusion=fusion,
                                        query_valid=query_valid)
        if wa is None:  # mean: the kernel folds in a = 1/G, b = 1
            wa = wb = grp
        nb = grp.shape[2]
    prologue = expanded and cfg.qeff_prologue
    store_qe = prologue and keep_qeff and return_lse
    qe = q
    if prologue:  # each program forms its tile's Q_eff (fused_query_tile) from the column -> position map
        inv = inverse_groups(grp) if inv is None else inv
        if store_qe:  # ... and stores it for the backward
            qe = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    elif expanded and qe_formed is not None:
        qe = qe_formed
    elif expanded:  # Q_eff[:, j] = b_j Q̃[:, group(j)], per row from its own grouping block. A separate launch:
        # writing Q_eff from the grouping kernel measured slower (docs/benchmarks.md, "grouped scores as Q_eff Kᵀ")
        mean = wa is grp
        qe = regroup(q, grp, None if mean else wa, None if mean else wb, group_size=G, block_m=block_m,
                     out_dtype=q.dtype, mean_weights=(1.0 / G, 1.0) if mean else None)
    if not exact and not expanded and cfg.k_layout == "transposed":
        kg = transpose_keys(k)  # [B, Hkv, d, M]
        kg_strides = (kg.stride(0), kg.stride(1), kg.stride(3), kg.stride(2))
    else:
        kg = k
        kg_strides = k.stride()
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    d_pad = next_power_of_2(d)
    dg = d // G
    dg_pad = max(16, next_power_of_2(dg))
    qt_scratch = not exact and cfg.qt_scratch and (not expanded or prologue)
    qt_buf = (torch.empty((B * Hq, cdiv(N, cfg.block_m) * cfg.block_m, d_pad if expanded else dg_pad),
                          device=q.device, dtype=torch.float32 if _dot_dtype(q.dtype) == tl.float32 else q.dtype)
              if qt_scratch and not store_qe else out)  # Q̃ / Q_eff in the dot's operand type
    lse = torch.empty((B, Hq, N), device=q.device, dtype=torch.float32) if return_lse else out
    kind, mask_t, mstr = _mask_operand(attention_mask, B, Hq, N, M, q.device)
    window = int(exact_window) if not exact else 0
    has_corr = window > 0 and window_correction > 0
    sm_scale = d ** -0.5 if scale is None else float(scale)
    order = tile_order_code(cfg.tile_order, bool(causal))
    grid = (B * Hq, cdiv(N, cfg.block_m)) if order == 2 else (cdiv(N, cfg.block_m), B * Hq)
    if grid[1] > MAX_GRID_Y:  # (distr_attention slices such batches; this is for direct calls)
        what = "query tiles" if order == 2 else "batch x query heads"
        raise ValueError(f"q: {grid[1]} {what} exceed the {MAX_GRID_Y} programs a CUDA grid's second axis holds "
                         f"(q.shape={tuple(q.shape)}, config.tile_order={cfg.tile_order!r}); split the batch")
    descs = kv_descriptors(k, v, cfg.block_n, d_pad) if cfg.kv_tma and (exact or expanded) else None
    kd, vd = descs or (k, v)
    launch(_distr_fwd_kernel, grid,
        q, qe, k, kg, v, kd, vd, out, lse, grp, grp if inv is None else inv, wa, wb, mask_t, qt_buf,
        gl.r if fused else out, gl.qv if fused else out, sm_scale, sm_scale * LOG2E, 0.5 * float(window_correction),
        1.0 / G, gl.qv_stride if fused else 0,
        *q.stride(), *qe.stride(), *k.stride(), *kg_strides, *v.stride(), *out.stride(), *mstr,
        Hq, N, M, nb, Hq // Hkv, window,
        HEAD_DIM=d, D_PAD=d_pad, G=G, DG=dg, DG_PAD=dg_pad,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BAND_N=band_n,
        CAUSAL=bool(causal), HAS_WINDOW=window > 0, HAS_CORR=has_corr, MASK_KIND=kind, EXACT=exact,
        FUSION_MEAN=fusion == "mean",
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_T=_dot_dtype(q.dtype), STORE_LSE=return_lse, QT_SCRATCH=qt_scratch, EXPANDED=expanded,
        TMA_N=cfg.block_n if descs else 0, QE_PROLOGUE=prologue, GROUP_BM=block_m,
        SPLIT_W=prologue and wa is not grp and _dot_dtype(q.dtype) != tl.float32, STORE_QE=store_qe,
        WS=cfg.warp_specialize and not interpreting(), SCALE_AFTER_MAX=cfg.scale_after_max,
        SIGMA2_DIFF=cfg.sigma2_diff and expanded, TILE_ORDER=order,
        EXP_FMA=cfg.exp_fma, RESCALE_SLACK=slack, BAND_EXACT=cfg.band_exact_tiles,
        SIGMA2_DEFER=cfg.sigma2_deferred_sums, BAND_FIRST=cfg.band_first,
        **_fused_grouping_meta(gl),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **({"maxnreg": cfg.maxnreg} if cfg.maxnreg else {}),
    )
    if not return_lse:
        return out
    kept = (qe if expanded and (store_qe or not prologue) else None, inv) if keep_qeff else ()
    if exact:
        return (out, lse, None, None, None, *kept)
    return (out, lse, grp, (None if wa is grp else wa), (None if wb is grp else wb), *kept)


# --------------------------------------------------------------------------- public API
_warned_autograd = False
# CUDA's limit on a grid's second axis, where every launch puts its (batch, head) pairs: calls with more batch x query
# heads run in batch slices (``_in_batch_chunks``)
MAX_GRID_Y = 65535


def _in_batch_chunks(q, k, v, kwargs: dict, backend: str) -> torch.Tensor:
    """``distr_attention`` over slices of at most MAX_GRID_Y // Hq sequences, concatenated along the batch: the same
    result (each (batch, head) pair is computed on its own), in launches that fit the grid. The batch dim of
    attention_mask (when it has one), query_valid and groups is sliced with q's."""
    B, Hq = q.shape[:2]
    if Hq > MAX_GRID_Y:
        raise ValueError(f"q: {Hq} query heads exceed the {MAX_GRID_Y} (batch, head) pairs one kernel launch holds")
    step = MAX_GRID_Y // Hq
    mask = kwargs["attention_mask"]
    sliced_mask = mask is not None and mask.dim() == 4 and mask.shape[0] == B
    outs = []
    for start in range(0, B, step):
        rows = slice(start, start + step)
        kw = dict(kwargs, attention_mask=mask[rows] if sliced_mask else mask)
        for name in ("query_valid", "groups"):
            kw[name] = None if kwargs[name] is None else kwargs[name][rows]
        outs.append(distr_attention(q[rows], k[rows], v[rows], backend=backend, **kw))
    return torch.cat(outs)


BACKENDS = ("auto", "triton", "reference", "sdpa")


def distr_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    group_size: int = 2,
    block_m: int = 128,
    fusion: str = "mean",
    exact_window: int = 0,
    window_correction: float = 0.0,
    causal: bool = False,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    num_hash_bits: int = 16,
    seed: int = 0,
    query_valid: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """DistrAttention: attention whose QKᵀ runs with inner dimension d/G.

    Args:
        q: [B, Hq, N, d] queries. k, v: [B, Hkv, M, d] with Hq a multiple of Hkv (GQA/MQA).
            Any strides; fp16/bf16/fp32 (fp32 is computed in fp32).
        group_size: G in {1, 2, 4, 8}, dividing d. G=1 is exact attention.
        block_m: query rows per grouping block, in {32, 64, 128}.
        fusion: "mean" (the paper: Q̃ = mean, K̃ = sum of each group's columns) or
            "rank1" (both projected on the group's top eigenvector u of XᵀX).
        exact_window: W >= 0; scores with |i + M - N - j| < W use the full d.
        window_correction: c >= 0; grouped scores outside the band are lowered by
            c·σ²/2, σ² the row's mean squared grouped-vs-exact error on its attendable band entries.
        causal: bool; bottom-right aligned (query i sees keys j <= i + M - N).
        attention_mask: bool (True = attend) or additive float, broadcastable to [B, Hq, N, M]; additive
            entries that are -inf or <= half the dtype's most negative value mask their key. Fully masked rows
            give zeros. Each row's additive values are taken less their largest (the same softmax; fp32 then
            keeps the scores beside values such as -1e9, which it would otherwise round away).
        scale: score scale, a positive finite float; default d ** -0.5.
        num_hash_bits, seed: the LSH; projections come from a generator seeded by ``seed``.
        query_valid: bool [B, N]; False rows (padding) count as zeros in the grouping.
        groups: precomputed ``compute_groups`` output [B, Hq, ceil(N/block_m), d].
        backend: "auto", "triton", "reference" or "sdpa". "sdpa": Q_eff by one launch that groups each block
            and writes its Q_eff rows (``DISTR_QEFF_LAUNCH=separate``: the grouping and the regroup launches),
            then torch's scaled_dot_product_attention on (Q_eff, k, v): the same function on whichever exact kernel
            PyTorch picks, cuDNN on Hopper (``sdpa_engine.py``). With an exact window (N == M, no tensor mask,
            forward only): grouped SDPA calls beside the band and our band-and-merge kernel (``window_merge.py``).
            "triton": the fused kernel (on CPU tensors it needs TRITON_INTERPRET=1, the Triton interpreter).
            "auto": CPU -> reference, CUDA -> the fused kernel (with DISTR_AUTO_SDPA=1: "sdpa" for calls without
            an exact window or a tensor mask, and N == M when causal; ``configs.auto_runs_sdpa``).

    Returns:
        [B, Hq, N, d] in q's dtype. On the kernels' paths a call with more than 65535 batch x query head pairs
        (a CUDA grid's limit) runs in batch slices, with the same result.

    Autograd: differentiable in q, k, v on both paths. The Triton path has a
    FlashAttention-2-style Triton backward (``distr_bwd.py``) with O(N·d) extra memory that
    recomputes the scores from the forward's row log-sum-exp; the grouping, the fusion
    weights, ``query_valid`` and the mask are constants, and it is not twice differentiable.
    Both paths give the gradient with the grouping and rank1's direction u held at their
    forward values: u's own derivative in q has 1/(λ1 − λ2) terms that blow up where a
    group's top two Gram eigenvalues meet, so it is left out (mean fusion's weights are
    constants anyway).
    A mask that itself requires grad sends the call to the reference (O(N·M) memory, warns
    once). ``backend="reference"`` is plain autograd through the definition.
    """
    as_op = compile_op.runs_as_custom_op(q, k, v, backend, attention_mask, group_size=group_size,
                                         exact_window=exact_window, causal=causal)
    if as_op == "train" and q.shape[0] * q.shape[1] > MAX_GRID_Y:
        as_op = None  # (the batch slices below: traced)
    # groups' values are read where a trace cannot: inside the custom operators (the SDPA engine's traced call forms
    # Q_eff by one, ``sdpa_engine.query_effective``)
    values_inside = as_op is not None or (backend == "sdpa" and group_size > 1 and torch.compiler.is_compiling()
                                          and (q.is_cuda or interpreting()))
    check_attention_inputs(q, k, v, group_size=group_size, block_m=block_m, fusion=fusion,
                           exact_window=exact_window, window_correction=window_correction,
                           num_hash_bits=num_hash_bits, query_valid=query_valid, attention_mask=attention_mask,
                           groups=groups, scale=scale, seed=seed, causal=causal, check_values=not values_inside)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    # |i + M - N - j| < max(N, M) holds for every score, so a wider window is the same function; the kernels add W
    # to row and key indices in 32-bit arithmetic, which a window near 2**31 would overflow
    exact_window = min(int(exact_window), max(q.shape[2], k.shape[2]))
    if as_op is not None:  # torch.compile: one opaque call (ops/compile_op.py)
        c, sc = float(window_correction), None if scale is None else float(scale)
        if as_op == "forward":  # the eager operator runs inside, validating everything
            return compile_op.distr_attention_op(q, k, v, attention_mask, query_valid, groups, group_size, block_m,
                                                 fusion, exact_window, c, bool(causal), sc, num_hash_bits, seed,
                                                 backend)
        check_triton_inputs(q)
        mask = None if attention_mask is None else attention_mask.detach()
        return compile_op.distr_attention_train_op(q, k, v, mask, query_valid, groups, group_size, block_m, fusion,
                                                   exact_window, c, bool(causal), sc, num_hash_bits, seed)[0]
    kwargs = dict(group_size=group_size, block_m=block_m, fusion=fusion, exact_window=exact_window,
                  window_correction=window_correction, causal=causal, attention_mask=attention_mask, scale=scale,
                  num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid, groups=groups)
    if q.shape[0] * q.shape[1] > MAX_GRID_Y and backend != "reference" and (backend != "auto" or q.is_cuda):
        return _in_batch_chunks(q, k, v, kwargs, backend)
    if backend == "sdpa" or (backend == "auto" and q.is_cuda and configs.auto_runs_sdpa(
            group_size, exact_window, attention_mask, causal, q.shape[2], k.shape[2])):
        return sdpa_engine.sdpa_distr_attention(q, k, v, **kwargs)
    use_triton = backend == "triton" or (backend == "auto" and q.is_cuda)
    if use_triton:
        check_triton_inputs(q)
        needs_grad = torch.is_grad_enabled() and (any(t.requires_grad for t in (q, k, v)) or (
            attention_mask is not None and attention_mask.requires_grad))
        if needs_grad:
            if attention_mask is not None and attention_mask.requires_grad:
                global _warned_autograd  # the Triton backward gives the mask no gradient: reference
                if not _warned_autograd:
                    warnings.warn("distr_attention: an attention_mask that requires grad runs the PyTorch "
                                  "reference (O(N*M) memory); the Triton backward treats the mask as a constant",
                                  stacklevel=2)
                    _warned_autograd = True
                return reference_distr_attention(q, k, v, **kwargs)
            from .distr_autograd import distr_attention_autograd

            return distr_attention_autograd(q, k, v, **kwargs)
        return _triton_forward(q, k, v, **kwargs)
    return reference_distr_attention(q, k, v, **kwargs)
