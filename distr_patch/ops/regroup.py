"""Q_eff and its adjoint: per grouping block, a column regroup by the block's fusion matrix.

The grouped scores of DistrAttention are ``Q̃ K̃ᵀ = Q_eff Kᵀ`` with ``Q_eff[:, j] = b_j Q̃[:, group(j)]``:
Q̃ spread back over the d columns. The forward's ``grouped_qk="expanded"`` path and the backward
form Q_eff with ``regroup(q, groups, a, b)``; the backward maps dQ_eff back with the swapped weights.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import cdiv, launch, next_power_of_2


@triton.jit
def _regroup_kernel(X, Y, ADD, INV, W1, W2, w1c, w2c,
                    stride_xb, stride_xh, stride_xn, stride_xd,
                    stride_yb, stride_yh, stride_yn, stride_yd,
                    stride_ab, stride_ah, stride_an, stride_ad,
                    Hq, N, NB, GROUP_BLOCK,
                    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr, CB: tl.constexpr,
                    ROWS: tl.constexpr, WEIGHTED: tl.constexpr, HAS_ADD: tl.constexpr, DOT_PREC: tl.constexpr):
    """Y = X·W (+ ADD) for ROWS rows of one grouping block of one (batch, head), with the block's
    fusion matrix W[c, c'] = w1(c)·w2(c') if columns c and c' share a group, else 0 (so
    Y[:, c'] = w2(c') Σ_{c in group(c')} w1(c) X[:, c]). INV: each column's sorted position
    (group = position // G); W1 / W2 per sorted position, or the scalars w1c / w2c. One dense
    [ROWS, D_PAD] x [D_PAD, CB] dot per chunk of CB output columns: X and Y move as contiguous
    rows (a column gather here ran at a fraction of the memory bandwidth)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    X += b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    Y += b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
    ADD += b.to(tl.int64) * stride_ab + h.to(tl.int64) * stride_ah
    blk = (pid_bh.to(tl.int64) * NB + (pid_m * ROWS) // GROUP_BLOCK) * HEAD_DIM
    offs_m = pid_m * ROWS + tl.arange(0, ROWS)
    offs_c = tl.arange(0, D_PAD)
    cmask = offs_c < HEAD_DIM
    rmask = offs_m < N
    x = tl.load(X + offs_m[:, None] * stride_xn + offs_c[None, :] * stride_xd,
                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    gid, w1 = _column_slots(INV + blk, W1 + blk, w1c, offs_c, HEAD_DIM, G, WEIGHTED)
    for j in tl.static_range(0, D_PAD, CB):
        offs_o = j + tl.arange(0, CB)
        gid_o, w2 = _column_slots(INV + blk, W2 + blk, w2c, offs_o, HEAD_DIM, G, WEIGHTED)
        wm = tl.where(gid[:, None] == gid_o[None, :], w1[:, None] * w2[None, :], 0.0)  # [D_PAD, CB]
        y = tl.dot(x, wm, input_precision=DOT_PREC)
        optr = offs_m[:, None] * stride_yn + offs_o[None, :] * stride_yd
        smask = rmask[:, None] & (offs_o < HEAD_DIM)[None, :]
        if HAS_ADD:
            y += tl.load(ADD + offs_m[:, None] * stride_an + offs_o[None, :] * stride_ad, mask=smask, other=0.0)
        tl.store(Y + optr, y.to(Y.dtype.element_ty), mask=smask)


@triton.jit
def _column_slots(INV_B, W_B, wc, offs, HEAD_DIM: tl.constexpr, G: tl.constexpr, WEIGHTED: tl.constexpr):
    """(group id, weight) of columns ``offs`` of one grouping block: the group is the sorted position // G,
    the weight W_B[position] (or the scalar wc); columns past d get group -1 and weight 0."""
    valid = offs < HEAD_DIM
    pos = tl.load(INV_B + offs, mask=valid, other=0)
    if WEIGHTED:
        w = tl.load(W_B + pos, mask=valid, other=0.0)
    else:
        w = tl.where(valid, wc, 0.0)
    return tl.where(valid, pos // G, -1), w


@triton.jit
def _fusion_slice(INV, W1, W2, w1c, pid_bh, blk, NB, offs_in, offs_out, HEAD_DIM: tl.constexpr, G: tl.constexpr,
                  WEIGHTED: tl.constexpr):
    """Rows ``offs_in`` x columns ``offs_out`` of grouping block ``blk``'s fusion matrix (of (batch·head) pid_bh,
    NB blocks each): W[c, c'] = w1(c)·w2(c') where c and c' share a group, else 0; fp32."""
    base = (pid_bh.to(tl.int64) * NB + blk) * HEAD_DIM
    gid, w1 = _column_slots(INV + base, W1 + base, w1c, offs_in, HEAD_DIM, G, WEIGHTED)
    gid_o, w2 = _column_slots(INV + base, W2 + base, 1.0, offs_out, HEAD_DIM, G, WEIGHTED)
    return tl.where(gid[:, None] == gid_o[None, :], w1[:, None] * w2[None, :], 0.0)


@triton.jit
def fused_query_tile(x, INV, WA, WB, mean_a, pid_bh, m0, NB, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                     G: tl.constexpr, GROUP_BM: tl.constexpr, BLOCK_M: tl.constexpr, WEIGHTED: tl.constexpr,
                     SPLIT_W: tl.constexpr, DOT_T: tl.constexpr, DOT_PREC: tl.constexpr):
    """Q_eff of one query tile, in the attention kernel's prologue: ``regroup``'s function, row by row.

    x: the tile's queries [BLOCK_M, D_PAD] in DOT_T (rows m0..m0+BLOCK_M of (batch·head) ``pid_bh``).
    Each grouping block of GROUP_BM rows that the tile meets takes one [D_PAD, D_PAD] dot with its fusion
    matrix W[c, c'] = a(c)·b(c') on shared groups (INV: column -> sorted position; WA / WB per position, or
    mean weights ``mean_a``, 1). SPLIT_W: W goes in as two 16-bit parts (hi + lo) so that rank1 weights keep
    ~16 bits; mean weights (powers of two) are exact in one. fp32 (DOT_PREC "ieee") multiplies in full fp32:
    tf32 there moved a 2-layer fp32 model's later groupings off the reference's. Returns [BLOCK_M, D_PAD]
    in DOT_T.
    """
    offs_c = tl.arange(0, D_PAD)
    SUB: tl.constexpr = GROUP_BM if GROUP_BM < BLOCK_M else BLOCK_M  # rows per grouping block in the tile
    rows = tl.arange(0, BLOCK_M)
    y = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for s in tl.static_range(BLOCK_M // SUB):
        blk = tl.minimum((m0 + s * SUB) // GROUP_BM, NB - 1)  # a tail tile's rows past N are zeros anyway
        wm = _fusion_slice(INV, WA, WB, mean_a, pid_bh, blk, NB, offs_c, offs_c, HEAD_DIM, G, WEIGHTED)
        hi = wm.to(DOT_T)
        ys = tl.dot(x, hi, input_precision=DOT_PREC)
        if SPLIT_W:
            ys = tl.dot(x, (wm - hi.to(tl.float32)).to(DOT_T), ys, input_precision=DOT_PREC)
        if BLOCK_M // SUB > 1:
            y = tl.where((rows // SUB == s)[:, None], ys, y)
        else:
            y = ys
    return y.to(DOT_T)


@triton.jit
def fusion_dot(x, wm, WEIGHTED: tl.constexpr, DOT_PREC: tl.constexpr):
    """x [rows, D_PAD] times a fusion matrix slice wm [D_PAD, cols] (fp32) -> fp32 [rows, cols]. fp32 x: one dot at
    DOT_PREC. 16-bit x: wm in x's dtype, as two parts (hi + lo, ~16 bits) when WEIGHTED and in one when not (mean
    weights 1/G are exact), each product exact in the fp32 accumulator."""
    if x.dtype == tl.float32:
        y = tl.dot(x, wm, input_precision=DOT_PREC)
    else:
        hi = wm.to(x.dtype)
        y = tl.dot(x, hi)
        if WEIGHTED:
            y = tl.dot(x, (wm - hi.to(tl.float32)).to(x.dtype), y)
    return y


@triton.jit
def regroup_tile_store(x, Y, ADD, offs_m, N, stride_yn, stride_yd, stride_an, stride_ad, INV, W1, W2, w1c,
                       pid_bh, m0, NB, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, G: tl.constexpr,
                       GROUP_BM: tl.constexpr, BLOCK_M: tl.constexpr, CB: tl.constexpr, WEIGHTED: tl.constexpr,
                       HAS_ADD: tl.constexpr, DOT_PREC: tl.constexpr):
    """``regroup``'s function for one tile already in registers, stored: Y[rows] = x·W (+ ADD[rows]).

    x: [BLOCK_M, D_PAD] fp32, rows ``offs_m`` (= m0 + arange) of (batch·head) ``pid_bh``; Y and ADD point at
    that (batch, head). Each grouping block of GROUP_BM rows that the tile meets has its fusion matrix
    W[c, c'] = w1(c)·w2(c') on shared groups (INV: column -> sorted position; W1 / W2 per position, or the
    scalars w1c, 1). One [BLOCK_M, D_PAD] x [D_PAD, CB] dot per chunk of CB output columns, at ``regroup``'s
    precision (fp32 operands: tf32 for 16-bit outputs, "ieee" for fp32). The backward's dQ kernel maps dQ_eff
    back with it in its epilogue (w1 = b, w2 = a: the adjoint) instead of a launch of its own.

    x may instead be 16-bit (bf16/fp16): then W goes in as x's dtype (``fusion_dot``), and mean fusion gives tf32's
    result bit for bit."""
    offs_c = tl.arange(0, D_PAD)
    SUB: tl.constexpr = GROUP_BM if GROUP_BM < BLOCK_M else BLOCK_M  # rows per grouping block in the tile
    rows = tl.arange(0, BLOCK_M)
    rmask = offs_m < N
    for j in tl.static_range(0, D_PAD, CB):
        offs_o = j + tl.arange(0, CB)
        y = tl.zeros([BLOCK_M, CB], dtype=tl.float32)
        for s in tl.static_range(BLOCK_M // SUB):
            blk = tl.minimum((m0 + s * SUB) // GROUP_BM, NB - 1)  # a tail tile's rows past N are not stored
            wm = _fusion_slice(INV, W1, W2, w1c, pid_bh, blk, NB, offs_c, offs_o, HEAD_DIM, G, WEIGHTED)
            ys = fusion_dot(x, wm, WEIGHTED, DOT_PREC)
            if BLOCK_M // SUB > 1:
                y = tl.where((rows // SUB == s)[:, None], ys, y)
            else:
                y = ys
        smask = rmask[:, None] & (offs_o < HEAD_DIM)[None, :]
        if HAS_ADD:
            y += tl.load(ADD + offs_m[:, None] * stride_an + offs_o[None, :] * stride_ad, mask=smask, other=0.0)
        tl.store(Y + offs_m[:, None] * stride_yn + offs_o[None, :] * stride_yd, y.to(Y.dtype.element_ty),
                 mask=smask)


# (num_warps, output columns per dot) of the regroup launch. Compiled for sm_90 (scripts/kernel_resources.py's
# approach), (4, 64) takes 255 registers and spills 456-636 B at d=128 while (8, 32) takes 128-158 without spills;
# whether that is faster has not been timed (scripts/bench_regroup.py), so the timed tiles stay.
REGROUP_TILES = (4, 64)


def inverse_groups(groups: torch.Tensor) -> torch.Tensor:
    """groups int [B,H,nb,d] (sorted position -> column) -> int32 [B,H,nb,d] (column -> sorted position)."""
    pos = torch.arange(groups.shape[-1], device=groups.device, dtype=torch.int32).expand(groups.shape)
    return torch.empty_like(pos).scatter_(-1, groups.long(), pos).contiguous()


def regroup(x: torch.Tensor, groups: torch.Tensor, w1: torch.Tensor | None, w2: torch.Tensor | None, *,
            group_size: int, block_m: int, out_dtype: torch.dtype, add: torch.Tensor | None = None,
            mean_weights: tuple[float, float] | None = None, inv: torch.Tensor | None = None,
            tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """Y[:, col(p)] = w2_p Σ_{p'∈group(p)} w1_p' X[:, col(p')] (+ add) per grouping block.

    ``regroup(q, groups, a, b)`` is ``fused_queries`` (Q_eff); ``regroup(dq_eff, groups, b, a)``
    its adjoint. x [B,H,N,d] any strides; groups int32 [B,H,nb,d] contiguous (``inv``: its
    ``inverse_groups``, computed here if not given); w1/w2 fp32 like groups, or None with
    ``mean_weights = (w1, w2)`` scalars. Returns a contiguous tensor.

    ``tiles``: (num_warps, output columns per dot[, rows per program]) instead of ``REGROUP_TILES`` (for
    side-by-side timing, ``scripts/bench_regroup.py``). Rows per program default to min(32, block_m); a program's
    rows stay inside one grouping block, so they must divide block_m.

    The product runs as a dot with the block's [d, d] fusion matrix: fp32 operands at tf32
    precision when the output is 16-bit (the weights' 2^-11 rounding is below the output's
    2^-9; mean weights and bf16/fp16 inputs are exact in tf32), fp32 ("ieee") for fp32 outputs.
    """
    B, H, N, d = x.shape
    G = group_size
    y = torch.empty((B, H, N, d), device=x.device, dtype=out_dtype)
    nb = groups.shape[2]
    inv = inverse_groups(groups) if inv is None else inv
    weighted = w1 is not None
    if not weighted:
        w1 = w2 = inv
    w1c, w2c = mean_weights if mean_weights is not None else (1.0, 1.0)
    add_t = add if add is not None else y
    d_pad = next_power_of_2(d)
    warps, cb, *rows = tiles or REGROUP_TILES
    rows = rows[0] if rows else min(32, block_m)
    if warps not in (1, 2, 4, 8, 16) or cb < 16 or cb & (cb - 1) or rows < 16 or block_m % rows:
        raise ValueError(f"tiles must be (num_warps in 1/2/4/8/16, output columns: a power of two >= 16[, rows per "
                         f"program: >= 16, dividing block_m={block_m}]), got {tiles}")
    launch(_regroup_kernel, (cdiv(N, rows), B * H),
        x, y, add_t, inv, w1, w2, float(w1c), float(w2c),
        *x.stride(), *y.stride(), *add_t.stride(), H, N, nb, block_m,
        HEAD_DIM=d, D_PAD=d_pad, G=G, CB=min(d_pad, cb), ROWS=rows, WEIGHTED=weighted,
        HAS_ADD=add is not None, DOT_PREC="ieee" if out_dtype == torch.float32 else "tf32", num_warps=warps,
    )
    return y
