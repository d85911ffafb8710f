"""Triton kernel for the grouping: LSH hash, column order and rank1 fusion weights in one pass.

One program per (batch·head, query block): it reads the block's Q [BM, d] into
registers, projects its d columns on the seeded directions (fp32 sums: 16-bit Q by one 16-bit tensor-core
dot, exact products since the directions are 16-bit values, ``PROJECTION``; fp32 Q by an fp32 dot), orders
the columns by (code, index) and writes the permutation (``COLUMN_ORDER``: by counting each column's smaller keys,
the default, or by ``tl.sort``). For rank1 fusion it then computes each group's
G×G Gram matrix XᵀX (fp32; see below) and writes the group's top eigenvector: closed form
for G=2, ``POWER_ITERATION_STEPS`` normalised power steps from the largest-diagonal column
for G=4 and 8 (tail and invalid rows count as zeros; sign so that Σu >= 0; an all-zero
group gets u = 1/sqrt(G)).

It computes the same function as ``grouping.compute_groups_torch`` /
``fusion_weights_torch``; a projection within rounding of zero may hash differently
(tests check that only such near-ties differ), and the weights agree to fp32 rounding
(the Gram and power-step sums are taken in another order; groups whose top eigenvalues
nearly coincide may settle on another, equally valid, eigenvector).

How the Gram is formed (docs/benchmarks.md, "rank1 weights in the grouping kernel").
G=2 (``PAIR_WEIGHTS``): by default each pair's three entries are picked from the block's full XᵀX, one
tensor-core dot of the tile in registers (16-bit products are exact in its fp32 accumulator); "gather"
re-reads Q by the pair's columns (L1/L2 hits): 5x slower as a launch on the H200 (0.42 against 0.08-0.10 ms);
"regs" picks the partner's entries by masks on the sorted positions instead of reading the order and a scratch back
(what the fused Q_eff launch's register path uses; the same weights).
G>=4: the columns are put in sorted order by a dot of the block's registers with the one-hot
permutation matrix, CH sorted positions at a time (``power_chunk``: 128 at D_PAD = 128, else 64; [D_PAD, CH]
per chunk). One 1.0 per column and fp32 accumulation make it exact (16-bit Q in its own dtype; fp32 Q takes an fp32
dot). The groups' G×G Grams (``POWER_GRAMS``): by default the chunk's whole Gram [CH, CH] by one more tensor-core
dot, each group's block picked from it by a mask; "rows" reshapes the chunk to [BM, CH/G, G] and forms each
member's Gram column by multiply-adds summed over the rows (as a launch 2.3-3.2x slower at d=64 and 2.2-3.5x at
d=128 than the default with its chunks, on the H200; docs/benchmarks.md, "G≥4 rank1: the groups' Grams by one
dot"). (Tried during development and dropped as slower, timings not kept: the one-hot route for G=2, and a
``tl.gather`` along the column axis, slower at d=128.)

rank1 weights satisfy a = b, so the kernel writes one tensor and returns it as both.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from .configs import interpreting
from .grouping import POWER_ITERATION_STEPS, fusion_weights_torch, hash_projections
from .launch import launch, next_power_of_2
from .regroup import fusion_dot, regroup_tile_store


@triton.jit
def _grouping_kernel(Q, QV, R, GRP, W, INV,
                     stride_qb, stride_qh, stride_qn, stride_qd, stride_qvb,
                     Hq, N, NB,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BM: tl.constexpr, NBITS: tl.constexpr,
                     NBITS_PAD: tl.constexpr, HAS_QV: tl.constexpr, RANK1: tl.constexpr, G: tl.constexpr,
                     DG: tl.constexpr, CH: tl.constexpr, STEPS: tl.constexpr, U_ZERO: tl.constexpr,
                     EXACT_DOT: tl.constexpr, PAIR_GRAM: tl.constexpr, GRAM_F32: tl.constexpr,
                     RANK_ORDER: tl.constexpr, STORE_INV: tl.constexpr, PROJ_16BIT: tl.constexpr,
                     GRAM_DOT: tl.constexpr):
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    out = (pid_bh.to(tl.int64) * NB + pid_blk) * HEAD_DIM
    group_block(Q, QV + b.to(tl.int64) * stride_qvb, R, GRP + out, W + out, INV + out, pid_blk, stride_qn,
                stride_qd, N, HEAD_DIM, D_PAD, BM, NBITS, NBITS_PAD, HAS_QV, RANK1, G, DG, CH, STEPS, U_ZERO,
                EXACT_DOT, PAIR_GRAM, GRAM_F32, RANK_ORDER, STORE_INV, PROJ_16BIT, GRAM_DOT)


@triton.jit
def _grouping_qeff_kernel(Q, QV, R, GRP, W, INV, Y, w1c,
                          stride_qb, stride_qh, stride_qn, stride_qd, stride_qvb,
                          stride_yb, stride_yh, stride_yn, stride_yd,
                          Hq, N, NB,
                          HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BM: tl.constexpr, NBITS: tl.constexpr,
                          NBITS_PAD: tl.constexpr, HAS_QV: tl.constexpr, RANK1: tl.constexpr, G: tl.constexpr,
                          DG: tl.constexpr, CH: tl.constexpr, STEPS: tl.constexpr, U_ZERO: tl.constexpr,
                          EXACT_DOT: tl.constexpr, PAIR_GRAM: tl.constexpr, GRAM_F32: tl.constexpr,
                          RANK_ORDER: tl.constexpr, PROJ_16BIT: tl.constexpr, GROUP_SIZE: tl.constexpr,
                          ROWS: tl.constexpr, CB: tl.constexpr, DOT_PREC: tl.constexpr, GATHER: tl.constexpr,
                          DOT16: tl.constexpr, FUSION_REGS: tl.constexpr, PAIR: tl.constexpr,
                          GRAM_DOT: tl.constexpr):
    """The grouping of one query block (``group_block``: order, positions, rank1 weights), then its Q_eff rows
    (``regroup.regroup_tile_store``, ROWS rows at a time): one launch instead of the grouping launch and the regroup
    launch, and the block's Q is read from memory once: with ROWS = BM (no query_valid) Q_eff comes from the tile
    in registers, otherwise from a second read after the barrier (cache hits).

    GATHER: each Q_eff column as the weighted sum of its group's G columns, read by column index (cache hits), in
    fp32 multiply-adds, instead of the dot with the [d, d] fusion matrix (which holds a [d, CB] tile in registers).
    DOT16: that dot takes the tile in Q's 16-bit dtype and the fusion matrix in two 16-bit parts (one for mean)
    instead of both in fp32 at tf32 precision (``regroup_tile_store``).
    FUSION_REGS (mean, or G=2 rank1 with its pair weights in registers; CB = D_PAD): the fusion matrix is built from
    the positions and weights ``group_block`` returns in registers, so nothing is read back and no barrier waits.
    PAIR (G = 2, with FUSION_REGS): no fusion matrix; each column's partner column comes from one dot with the
    one-hot partner matrix (exact: one 1.0 per column), and Q_eff[:, c] = w1(c)w2(c)·x_c + w1(p)w2(c)·x_p in fp32."""
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    Y += b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
    out = (pid_bh.to(tl.int64) * NB + pid_blk) * HEAD_DIM
    xq, pos, wcol = group_block(Q, QV + b.to(tl.int64) * stride_qvb, R, GRP + out, W + out, INV + out, pid_blk,
                                stride_qn, stride_qd, N, HEAD_DIM, D_PAD, BM, NBITS, NBITS_PAD, HAS_QV, RANK1, G, DG,
                                CH, STEPS, U_ZERO, EXACT_DOT, PAIR_GRAM, GRAM_F32, RANK_ORDER, True, PROJ_16BIT,
                                GRAM_DOT)
    if not FUSION_REGS:  # the other ways read the positions and weights this program stored back
        tl.debug_barrier()
    if FUSION_REGS:
        cols = tl.arange(0, D_PAD)
        real = cols < HEAD_DIM
        gid = tl.where(real, pos // GROUP_SIZE, -1)
        w1 = tl.where(real, wcol if RANK1 else w1c, 0.0)  # W[c, c'] = w1(c)·w2(c') on shared groups
        w2 = tl.where(real, wcol if RANK1 else 1.0, 0.0)
        if PAIR:  # partner[c', c]: c' is c's partner (the other column of its pair); its weights by the same mask
            partner = (pos[:, None] == (pos ^ 1)[None, :]) & real[:, None] & real[None, :]
            wself = w1 * w2
            wpart = tl.sum(tl.where(partner, w1[:, None], 0.0), axis=0) * w2
        else:
            wm = tl.where(gid[:, None] == gid[None, :], w1[:, None] * w2[None, :], 0.0)  # [D_PAD, D_PAD] fp32
        for r0 in tl.static_range(0, BM, ROWS):
            offs_m = pid_blk * BM + r0 + tl.arange(0, ROWS)
            if ROWS == BM and not HAS_QV:  # the tile in registers (invalid rows were zeroed there)
                x = xq
            else:  # re-read (cache hits): invalid rows get their Q_eff too, as in ``regroup``
                x = tl.load(Q + offs_m[:, None] * stride_qn + cols[None, :] * stride_qd,
                            mask=(offs_m < N)[:, None] & real[None, :], other=0.0)
            if PAIR:
                if DOT16:
                    xp = tl.dot(x, partner.to(x.dtype))
                else:
                    xp = tl.dot(x.to(tl.float32), partner.to(tl.float32), input_precision="ieee")
                y = wself[None, :] * x.to(tl.float32) + wpart[None, :] * xp
            else:
                y = fusion_dot(x if DOT16 else x.to(tl.float32), wm, RANK1, DOT_PREC)
            tl.store(Y + offs_m[:, None] * stride_yn + cols[None, :] * stride_yd, y.to(Y.dtype.element_ty),
                     mask=(offs_m < N)[:, None] & real[None, :])
    elif GATHER:
        cols = tl.arange(0, D_PAD)
        cvalid = cols < HEAD_DIM
        pos = tl.load(INV + out + cols, mask=cvalid, other=0)  # each column's sorted position
        first = (pos // GROUP_SIZE) * GROUP_SIZE  # its group's first sorted position
        if RANK1:
            wb = tl.load(W + out + pos, mask=cvalid, other=0.0)  # b = u at the column's own position
        for r0 in tl.static_range(0, BM, ROWS):
            offs_m = pid_blk * BM + r0 + tl.arange(0, ROWS)
            lmask = (offs_m < N)[:, None] & cvalid[None, :]
            y = tl.zeros([ROWS, D_PAD], dtype=tl.float32)
            for j in tl.static_range(GROUP_SIZE):  # member j of each column's group, and its weight a
                mj = tl.load(GRP + out + first + j, mask=cvalid, other=0)
                xj = tl.load(Q + offs_m[:, None] * stride_qn + mj[None, :] * stride_qd, mask=lmask,
                             other=0.0).to(tl.float32)
                if RANK1:
                    y += tl.load(W + out + first + j, mask=cvalid, other=0.0)[None, :] * xj
                else:
                    y += xj
            y = y * (wb[None, :] if RANK1 else w1c)
            tl.store(Y + offs_m[:, None] * stride_yn + cols[None, :] * stride_yd, y.to(Y.dtype.element_ty),
                     mask=lmask)
    elif ROWS == BM and not HAS_QV:  # the whole block at once, from the registers (invalid rows were zeroed there)
        offs_m = pid_blk * BM + tl.arange(0, BM)
        regroup_tile_store(xq if DOT16 else xq.to(tl.float32), Y, Y, offs_m, N, stride_yn, stride_yd, 0, 0, INV, W, W,
                           w1c, pid_bh, pid_blk * BM, NB, HEAD_DIM, D_PAD, GROUP_SIZE, BM, BM, CB, RANK1, False,
                           DOT_PREC)
    else:  # ROWS at a time, re-read (cache hits): invalid rows get their Q_eff too, as in ``regroup``
        cols = tl.arange(0, D_PAD)
        for r0 in tl.static_range(0, BM, ROWS):
            offs_m = pid_blk * BM + r0 + tl.arange(0, ROWS)
            x = tl.load(Q + offs_m[:, None] * stride_qn + cols[None, :] * stride_qd,
                        mask=(offs_m < N)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
            regroup_tile_store(x if DOT16 else x.to(tl.float32), Y, Y, offs_m, N, stride_yn, stride_yd, 0, 0, INV, W,
                               W, w1c, pid_bh, pid_blk * BM + r0, NB, HEAD_DIM, D_PAD, GROUP_SIZE, BM, ROWS, CB, RANK1,
                               False, DOT_PREC)


@triton.jit
def group_block(Q, QV_B, R, GRP_B, W_B, INV_B, pid_blk, stride_qn, stride_qd, N,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BM: tl.constexpr, NBITS: tl.constexpr,
                NBITS_PAD: tl.constexpr, HAS_QV: tl.constexpr, RANK1: tl.constexpr, G: tl.constexpr,
                DG: tl.constexpr, CH: tl.constexpr, STEPS: tl.constexpr, U_ZERO: tl.constexpr,
                EXACT_DOT: tl.constexpr, PAIR_GRAM: tl.constexpr, GRAM_F32: tl.constexpr,
                RANK_ORDER: tl.constexpr, STORE_INV: tl.constexpr, PROJ_16BIT: tl.constexpr,
                GRAM_DOT: tl.constexpr):
    """The grouping of one query block: Q points at its (batch, head) [N, d] rows, QV_B at its batch's
    query_valid row (if HAS_QV); writes the sorted column order to GRP_B[0:d], with RANK1 the weights
    u to W_B[0:d], and with STORE_INV each column's sorted position to INV_B[0:d] (``regroup.inverse_groups``
    of the order, which the attention kernel's Q_eff prologue reads). Returns the block's tile [BM, D_PAD] in Q's
    dtype (zeros for tail and invalid rows), each column's sorted position [D_PAD] (padded columns last) and, with
    G=2 rank1 pair weights in registers (PAIR_GRAM = 2), each column's weight u [D_PAD] (zeros otherwise). Shared
    by ``_grouping_kernel``, ``_grouping_qeff_kernel`` and the attention kernel's fused-grouping prologue.

    R: the zero-padded directions [BM, NBITS_PAD], fp32 (an fp32 FMA dot), or with PROJ_16BIT in Q's dtype
    (``projections_16bit``; exact, as ``hash_projections`` draws 16-bit values): one tensor-core dot of the 16-bit
    tile, whose products are exact in the fp32 accumulator."""
    rows = pid_blk * BM + tl.arange(0, BM)
    cols = tl.arange(0, D_PAD)
    rvalid = rows < N
    if HAS_QV:
        rvalid = rvalid & (tl.load(QV_B + rows, mask=rows < N, other=0) != 0)
    # the block's tile in Q's dtype; tail rows, invalid rows and padded columns are zeros
    xq = tl.load(Q + rows[:, None] * stride_qn + cols[None, :] * stride_qd,
                 mask=rvalid[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
    x = xq.to(tl.float32)
    kb = tl.arange(0, NBITS_PAD)
    r_offs = tl.arange(0, BM)[:, None] * NBITS_PAD + kb[None, :]  # zero-padded bits
    r = tl.load(R + r_offs)  # a load of its own: inside the fp32 dot, Triton spilled 4.7 KB here (sm_90)
    if PROJ_16BIT:  # each product is exact, the sums are fp32
        proj = tl.dot(tl.trans(xq), r)  # [D_PAD, NBITS_PAD]
    else:
        proj = tl.dot(tl.trans(x), r, input_precision="ieee")
    if NBITS <= 22:  # (code, index) keys below 2^31 (D_PAD <= 256): int32 compares
        bit = tl.where(kb < NBITS, tl.full([NBITS_PAD], 1, tl.int32) << kb, 0)
    else:
        bit = tl.where(kb < NBITS, tl.full([NBITS_PAD], 1, tl.int64) << kb.to(tl.int64), 0)
    code = tl.sum(tl.where(proj > 0, bit[None, :], 0), axis=1)  # [D_PAD]
    big = (1 << NBITS) * D_PAD
    key = tl.where(cols < HEAD_DIM, code * D_PAD + cols, big + cols)  # padded columns sort last
    if RANK_ORDER:  # each column's sorted position = how many keys are smaller (keys are distinct)
        pos = tl.sum((key[None, :] < key[:, None]).to(tl.int32), axis=1)
        tl.store(GRP_B + pos, cols, mask=cols < HEAD_DIM)  # padded columns have the largest keys
    else:
        perm = (tl.sort(key) % D_PAD).to(tl.int32)
        tl.store(GRP_B + cols, perm, mask=cols < HEAD_DIM)
        pos = tl.sum(tl.where(perm[None, :] == cols[:, None], cols[None, :], 0), axis=1)  # column -> position
    if STORE_INV:
        tl.store(INV_B + cols, pos.to(tl.int32), mask=cols < HEAD_DIM)
    wcol = tl.zeros([D_PAD], dtype=tl.float32)  # each column's rank1 weight, where computed in registers
    if RANK1:
        if not (G == 2 and PAIR_GRAM == 2):
            tl.debug_barrier()  # the permutation is re-read from memory in plain layouts
        if G == 2 and PAIR_GRAM > 0:
            if GRAM_F32:  # fp32 q, or the interpreter (whose 16-bit dots are not exact)
                gram = tl.dot(tl.trans(x), x, input_precision="ieee")
            else:  # 16-bit products are exact in the fp32 accumulator
                gram = tl.dot(tl.trans(xq), xq)
            if PAIR_GRAM == 2:
                wcol = _pair_weights_regs(gram, pos, W_B, HEAD_DIM, D_PAD)
            else:
                _pair_weights_gram(gram, pos, GRP_B, W_B, HEAD_DIM, D_PAD)
        elif G == 2:
            _pair_weights(Q, QV_B, GRP_B, W_B, pid_blk, stride_qn, stride_qd, N, HEAD_DIM, D_PAD, BM, HAS_QV, 32)
        else:
            # Columns in sorted order from the registers: the tile times the one-hot permutation
            # (module docstring), CH sorted positions at a time. G divides HEAD_DIM and CH, so a
            # group holds either real columns only or padded (zero) columns only, in one chunk.
            for j0 in tl.static_range(0, D_PAD, CH):
                pj = j0 + tl.arange(0, CH)
                perm_j = tl.load(GRP_B + pj, mask=pj < HEAD_DIM, other=D_PAD)  # padded: no column
                onehot = cols[:, None] == perm_j[None, :]  # [column, sorted position]
                # one 1.0 per column, so each output is one exact product: fp32 Q (and the interpreter) in fp32
                # ("ieee") or tf32, 16-bit Q in its own dtype (no fp32 copy of the tile)
                if GRAM_F32:
                    xs = tl.dot(x, onehot.to(tl.float32), input_precision="ieee" if EXACT_DOT else "tf32")
                else:
                    xs = tl.dot(xq, onehot.to(xq.dtype))
                if GRAM_DOT:  # the chunk's groups' Grams from one dot (xs holds Q's values exactly)
                    gram = _group_grams_dot(xs if GRAM_F32 else xs.to(xq.dtype), G, DG, CH, GRAM_F32)
                else:
                    gram = _group_grams_rows(xs, BM, G, DG)
                w = _power_weights(gram, G, DG, CH, STEPS, U_ZERO)
                tl.store(W_B + pj, w, mask=pj < HEAD_DIM)
    return xq, pos, wcol


@triton.jit
def _pair_weights(Q, QV_B, GRP_B, W_B, pid_blk, stride_qn, stride_qd, N,
                  HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BM: tl.constexpr, HAS_QV: tl.constexpr,
                  ROW_CHUNK: tl.constexpr):
    """G=2: each pair's Gram [[a, b], [b, c]] from Q re-read by the pair's columns (row chunks),
    then its closed-form top eigenvector (grouping._top_eigvec_2), written at W_B."""
    g = tl.arange(0, D_PAD // 2)
    gvalid = g < HEAD_DIM // 2
    c0 = tl.load(GRP_B + 2 * g, mask=gvalid, other=0).to(tl.int64)
    c1 = tl.load(GRP_B + 2 * g + 1, mask=gvalid, other=0).to(tl.int64)
    a = tl.zeros([D_PAD // 2], dtype=tl.float32)
    bb = tl.zeros([D_PAD // 2], dtype=tl.float32)
    c = tl.zeros([D_PAD // 2], dtype=tl.float32)
    for r0 in tl.static_range(0, BM, ROW_CHUNK):
        rr = pid_blk * BM + r0 + tl.arange(0, ROW_CHUNK)
        rv = rr < N
        if HAS_QV:
            rv = rv & (tl.load(QV_B + rr, mask=rr < N, other=0) != 0)
        lm = rv[:, None] & gvalid[None, :]
        x0 = tl.load(Q + rr[:, None] * stride_qn + c0[None, :] * stride_qd, mask=lm, other=0.0).to(tl.float32)
        x1 = tl.load(Q + rr[:, None] * stride_qn + c1[None, :] * stride_qd, mask=lm, other=0.0).to(tl.float32)
        a += tl.sum(x0 * x0, 0)
        bb += tl.sum(x0 * x1, 0)
        c += tl.sum(x1 * x1, 0)
    ua, ub = _top_eigvec_2(a, bb, c)
    tl.store(W_B + 2 * g, ua, mask=gvalid)
    tl.store(W_B + 2 * g + 1, ub, mask=gvalid)


@triton.jit
def _pair_weights_gram(gram, pos, GRP_B, W_B, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    """G=2 from the block's full Gram matrix gram = XᵀX [D_PAD, D_PAD] (one dot) and each column's sorted
    position pos [D_PAD]: each column's diagonal and pair entries are picked from gram by masks (no second read
    of Q); the partner's column and diagonal entry are read back through memory (GRP_B, which holds the order,
    and W_B as a scratch), which costs less than two more [D_PAD, D_PAD] selections. Writes u at each column's
    sorted position in W_B."""
    cols = tl.arange(0, D_PAD)
    real = cols < HEAD_DIM  # padded columns have padded positions (HEAD_DIM is even): pairs of their own
    partner = tl.load(GRP_B + (pos ^ 1), mask=real, other=0)  # the pair's other column
    diag = tl.sum(tl.where(cols[None, :] == cols[:, None], gram, 0.0), axis=1)
    off = tl.sum(tl.where(cols[None, :] == partner[:, None], gram, 0.0), axis=1)  # gram[c, partner(c)]
    tl.store(W_B + cols, diag, mask=real)  # scratch: diag by column
    tl.debug_barrier()
    dpart = tl.load(W_B + partner, mask=real, other=0.0)
    tl.debug_barrier()  # every read of the scratch precedes the stores of u below
    first = (pos % 2) == 0  # c is the pair's first member (sorted position 2g)
    ua, ub = _top_eigvec_2(tl.where(first, diag, dpart), off, tl.where(first, dpart, diag))
    tl.store(W_B + pos, tl.where(first, ua, ub), mask=real)


@triton.jit
def _pair_weights_regs(gram, pos, W_B, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    """G=2 as ``_pair_weights_gram``, all in registers: the partner of column c is the column at sorted position
    pos(c) ^ 1, so a [D_PAD, D_PAD] mask on the positions picks its pair entry and its diagonal entry (no reads of
    the order or a scratch back from memory, no barriers). Writes u at each column's sorted position in W_B and
    returns each column's u [D_PAD] (padded columns: pairs of their own, weights unused)."""
    cols = tl.arange(0, D_PAD)
    real = cols < HEAD_DIM
    diag = tl.sum(tl.where(cols[None, :] == cols[:, None], gram, 0.0), axis=1)
    mate = pos[None, :] == (pos ^ 1)[:, None]  # [c, c']: c' is c's partner
    off = tl.sum(tl.where(mate, gram, 0.0), axis=1)  # gram[c, partner(c)]
    dpart = tl.sum(tl.where(mate, diag[None, :], 0.0), axis=1)  # gram[partner(c), partner(c)]
    first = (pos % 2) == 0  # c is the pair's first member (sorted position 2g)
    ua, ub = _top_eigvec_2(tl.where(first, diag, dpart), off, tl.where(first, dpart, diag))
    wcol = tl.where(first, ua, ub).to(tl.float32)  # fp32 already (a guard: an fp64 weight fails the dot on the GPU)
    tl.store(W_B + pos, wcol, mask=real)
    return wcol


@triton.jit
def _top_eigvec_2(a, bb, c):
    """Closed-form top eigenvector (ua, ub) of [[a, bb], [bb, c]] (grouping._top_eigvec_2): the larger
    of the two candidate vectors, normalised, 1/sqrt(2) each for a zero matrix, sign so ua + ub >= 0."""
    lam = 0.5 * (a + c) + tl.sqrt((0.5 * (a - c)) * (0.5 * (a - c)) + bb * bb)
    v1a, v1b = lam - c, bb
    v2a, v2b = bb, lam - a
    n1 = v1a * v1a + v1b * v1b
    n2 = v2a * v2a + v2b * v2b
    use1 = n1 >= n2
    va = tl.where(use1, v1a, v2a)
    vb = tl.where(use1, v1b, v2b)
    n = tl.where(use1, n1, n2)
    inv = 1.0 / tl.sqrt(tl.maximum(n, 1.1754943508222875e-38))  # 2**-126: an fp32 constant (1e-38 made it fp64)
    ua = tl.where(n > 0, va * inv, 0.7071067811865476)
    ub = tl.where(n > 0, vb * inv, 0.7071067811865476)
    flip = (ua + ub) < 0
    return tl.where(flip, -ua, ua), tl.where(flip, -ub, ub)


@triton.jit
def _power_weights(gram, G: tl.constexpr, DG: tl.constexpr, CH: tl.constexpr, STEPS: tl.constexpr,
                   U_ZERO: tl.constexpr):
    """G>=4: the Grams [DG, G, G] of DG = CH/G whole groups (sorted positions) -> u per position [CH]
    (grouping._top_eigvec_power)."""
    gi = tl.arange(0, G)
    sel_j = gi[None, None, :]  # member axis of [DG, G, G]
    # grouping._top_eigvec_power: start from the column with the largest diagonal
    # entry (first one on ties, as torch.argmax), STEPS normalised power steps
    diag = tl.sum(tl.where(gi[None, :, None] == sel_j, gram, 0.0), axis=2)  # [DG, G]
    start = tl.argmax(diag, axis=1, tie_break_left=True)  # [DG]
    v = tl.sum(tl.where(sel_j == start[:, None, None], gram, 0.0), axis=2)  # gram[:, :, start]
    for _ in tl.static_range(STEPS):
        v = tl.sum(gram * v[:, None, :], axis=2)
        nrm = tl.sqrt(tl.sum(v * v, axis=1))
        v = tl.where(nrm[:, None] > 0, v / tl.maximum(nrm, 1e-30)[:, None], v)
    nv = tl.sum(v * v, axis=1)
    u = tl.where(nv[:, None] > 0, v, U_ZERO)  # all-zero group: 1/sqrt(G)
    u = tl.where(tl.sum(u, axis=1)[:, None] < 0, -u, u)  # grouping._fix_sign
    w = tl.reshape(u, [CH])  # sorted position g*G + i
    return w


@triton.jit
def _group_grams_rows(xs, BM: tl.constexpr, G: tl.constexpr, DG: tl.constexpr):
    """The groups' Grams [DG, G, G] (fp32) of xs [BM, CH] (sorted columns): per member j, its column picked from
    each group and multiplied into the group's columns, summed over the BM rows (CUDA-core reductions)."""
    xs3 = tl.reshape(xs, [BM, DG, G])  # [row, group, member]
    sel_j = tl.arange(0, G)[None, None, :]  # member axis of [DG, G, G] / [BM, DG, G]
    gram = tl.zeros([DG, G, G], dtype=tl.float32)
    for j in tl.static_range(G):
        xj = tl.sum(tl.where(sel_j == j, xs3, 0.0), axis=2)  # member j of each group [BM, DG]
        colj = tl.sum(xs3 * xj[:, :, None], axis=0)  # [DG, G]: gram[:, i, j]
        gram = tl.where(sel_j == j, colj[:, :, None], gram)
    return gram


@triton.jit
def _group_grams_dot(xs, G: tl.constexpr, DG: tl.constexpr, CH: tl.constexpr, GRAM_F32: tl.constexpr):
    """The groups' Grams [DG, G, G] (fp32) of xs [BM, CH] (sorted columns) from the chunk's whole Gram xsᵀxs
    [CH, CH], one tensor-core dot: xs is Q's 16-bit values (a one-hot permutation of them, exact), so the
    products are exact in the dot's fp32 accumulator; with GRAM_F32 (fp32 Q, the interpreter) xs is fp32 and the
    dot an fp32 one. Each position's row of its own group's block is then picked by a mask over [CH, DG, G]."""
    if GRAM_F32:
        full = tl.dot(tl.trans(xs), xs, input_precision="ieee")  # [CH, CH]
    else:
        full = tl.dot(tl.trans(xs), xs)
    rows3 = tl.reshape(full, [CH, DG, G])  # [position, group, member]
    own = (tl.arange(0, CH) // G)[:, None, None] == tl.arange(0, DG)[None, :, None]  # the position's own group
    mine = tl.sum(tl.where(own, rows3, 0.0), axis=1)  # [CH, G]: gram[p // G][p % G, j]
    return tl.reshape(mine, [DG, G, G])


# G=2 rank1 pair Grams: "gram" (default) picks them from the block's full XᵀX (one dot of the tile
# already in registers); "gather" re-reads Q by each pair's columns; "regs" is "gram" with the partner's entries
# picked in registers (``_pair_weights_regs``). All compute the same weights (tests); "gram" made the whole G2 rank1
# call ~10% faster than "gather" on the H200 at N=4096 (docs/benchmarks.md); "regs" made the grouping launch slower
# (0.084 / 0.111 ms against 0.080 / 0.099 at d=64 / 128: the extra [d, d] selection costs more than the read back),
# so only the fused Q_eff launch's register path uses it, where it also saves the fusion matrix's read back.
PAIR_WEIGHTS = os.environ.get("DISTR_PAIR_WEIGHTS", "gram")
PAIR_WAYS = ("gather", "gram", "regs")  # group_block's PAIR_GRAM is the index
# The columns' sorted order: "rank" counts, for each column, the smaller (code, index) keys (d² compares,
# one reduction); "sort" runs tl.sort on the keys (a bitonic network of shuffles). The same permutation.
COLUMN_ORDER = os.environ.get("DISTR_COLUMN_ORDER", "rank")
# Each column's sorted position (the Q_eff prologue's column -> position map): "torch" scatters it from the
# order after the launch (``regroup.inverse_groups``: two small launches); "kernel" has the grouping kernel
# store the positions it already holds. The same map (tests); "kernel" (default) made the G2 calls up to 6%
# faster on the H200 at N=4096 (docs/benchmarks.md, "Register caps and kernel-stored positions").
POSITIONS = os.environ.get("DISTR_GROUPING_POSITIONS", "kernel")
# The hash projection Qᵀ R of a 16-bit Q: "16bit" (default) runs one tensor-core dot of the 16-bit tile with R
# in Q's dtype (``projections_16bit``; exact products, since ``hash_projections`` draws 16-bit values; fp32 sums);
# "fp32" converts the tile to fp32 for one FMA dot (what fp32 Q always takes, and bf16 Q in the interpreter, whose
# bf16 dots are not exact). Both give the same codes up to projections within rounding of zero (tests). Before the
# directions were 16-bit values, "16bit" took three dots against R cut into three 16-bit parts: one dot made the
# launch 14-26% faster on the H200 (docs/benchmarks.md, "One projection dot").
PROJECTION = os.environ.get("DISTR_GROUPING_PROJECTION", "16bit")
# G>=4 rank1: how each group's G×G Gram is formed from the block's columns in sorted order (CH at a time). "dot"
# (default): the chunk's whole Gram by one tensor-core dot, each group's block picked from it by a mask
# (``_group_grams_dot``); "rows": per member, multiply-adds over the block's rows and a reduction across the warps
# (``_group_grams_rows``). The same groups and, to fp32 rounding, weights (tests). "dot" made the G=4 / G=8 launch
# 2.3 / 3.2x faster at d=64 and (with 128-position chunks) 2.2 / 3.5x at d=128, and whole G=4 rank1 calls 4-15% faster
# (H200, N=4096; docs/benchmarks.md, "G≥4 rank1: the groups' Grams by one dot"). fp32 Q (whose fp32 dots run as FMA
# loops, in 64-position chunks) takes "rows" at d <= 64 only, timed on one H100 (forty-sixth session, 8x(2048/d)x4096,
# Triton 3.6): d=64 "rows" 11.2 / 12.1 ms against "dot" 16.0 / 15.8 (G=4 / G=8); d=128 "dot" 5.1 / 5.3 against
# 21.8 / 21.7; d=256 G=4 "dot" 10.7 against 68.0 (rows spills 356 KB there), G=8 "dot" 11.0 against 10.4 (rows 6%
# faster, left to the dot for one rule). (The eighteenth session's d=128 "dot", 1.5x slower than "rows", ran at
# 128-position chunks, which spill 130 KB.) None: by q's dtype and head dim.
POWER_GRAMS = os.environ.get("DISTR_POWER_GRAMS") or None


def power_grams(dtype: torch.dtype, d_pad: int) -> str:
    """How the G>=4 rank1 launch forms the groups' Grams for a ``dtype`` Q at padded head dim ``d_pad``:
    ``POWER_GRAMS`` where set, else "dot" for 16-bit Q and for fp32 Q at d_pad > 64, "rows" for fp32 Q at
    d_pad <= 64."""
    return POWER_GRAMS or ("rows" if dtype == torch.float32 and d_pad <= 64 else "dot")
# G>=4 rank1: sorted positions per chunk, CH = min(D_PAD, POWER_CHUNK) (16, 32, 64 or 128); None: 128
# at D_PAD = 128 (the G=4 / G=8 launch 25 / 30% faster than 64 at d=128 on the H200; 32 slower than the chosen chunk
# at both head dims), else 64 (d=256 untimed: its [d, CH] one-hot would take 64 KB of shared memory at 128).
# docs/benchmarks.md, "G≥4 rank1: the groups' Grams by one dot".
_POWER_CHUNK_ENV = os.environ.get("DISTR_POWER_CHUNK") or None
POWER_CHUNK = int(_POWER_CHUNK_ENV) if _POWER_CHUNK_ENV and _POWER_CHUNK_ENV.isdigit() else _POWER_CHUNK_ENV


def power_chunk(d_pad: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """CH, the sorted positions per chunk of the G>=4 rank1 weights at padded head dim ``d_pad`` for a ``dtype`` Q
    (fp32: 64, as timed with both ways; 128 spilled 130 KB at d=128)."""
    return min(d_pad, POWER_CHUNK or (128 if d_pad == 128 and dtype != torch.float32 else 64))


def grouping_warps(head_dim: int, rank1: bool = False, group_size: int = 2, proj_16bit: bool = True) -> int:
    """Warps of one grouping program (one block of block_m query rows). Timed on the H200 at N=4096 with
    ``scripts/bench_grouping.py --warps`` (docs/benchmarks.md, "The grouping launch"), for the 16-bit projection
    (``proj_16bit``; then three dots): without weights 2 warps (d=64: 0.060 ms against 0.072 with 4; d=128: 0.066
    against 0.074 with 8); G=2 rank1 4 warps (0.080 / 0.099 ms, the fastest at both). Re-timed with one dot
    ("One projection dot"): d=64 mean 0.049 / 0.053 / 0.050 ms at 2 / 4 / 8 warps, rank1 0.075 / 0.058 / 0.085;
    d=128 mean 0.053 / 0.057 / 0.051, rank1 2.75 (spills) / 0.079 / 0.080: the rule stands. The fp32 projection (fp32 Q), G>=4 rank1 and
    d > 128 keep the earlier rule (4 warps at d <= 64, else 8): at 2 warps the fp32 projection spills 15-25 KB
    (``scripts/kernel_resources.py --grouping``). G>=4 rank1 re-timed with its Grams by one dot (eighteenth session):
    d=64 4 warps fastest (G=4 0.097 ms; 2 warps 0.124), d=128 4 and 8 warps within 1% (0.141 / 0.142), so it stands."""
    if head_dim > 128 or (rank1 and group_size > 2) or not proj_16bit:
        return 4 if head_dim <= 64 else 8
    return 4 if rank1 else 2


def _made_outside_graph_pools(make, device: torch.device) -> torch.Tensor:
    """``make()`` for a tensor that a cache keeps for the life of the process: on CUDA it runs in a short-lived
    thread of its own, so that its memory never comes from a CUDA-graph memory pool. torch.compile(mode=
    "reduce-overhead") runs the first calls with the calling thread's allocations going to such a pool (its warm-up),
    and a cached tensor there is a live allocation the graphs do not own: cudagraph trees stop with "tensor(s) in the
    cudagraph pool not tracked as outputs". During a capture the cache must already be warm (a capture cannot copy
    from the host): the error says to call the operator once first."""
    if device.type != "cuda":
        return make()
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("DistrAttention makes its hash directions on the first call on a device; run the operator "
                           "once (same block_m, num_hash_bits, seed, dtype) before capturing a CUDA graph")
    index = device.index if device.index is not None else torch.cuda.current_device()
    result: dict = {}

    def work():
        try:
            with torch.cuda.device(index):
                result["out"] = make()
                torch.cuda.current_stream().synchronize()  # ready before any stream of the caller reads it
        except BaseException as exc:  # noqa: BLE001  re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name="distr-patch-device-constants")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["out"]


@lru_cache(maxsize=None)  # never evicted: a freed block could be reused while another stream still reads it
def _padded_projections(block_m: int, num_hash_bits: int, nbits_pad: int, seed: int, device: torch.device):
    """The hash directions zero-padded to [block_m, nbits_pad] fp32 on ``device``, made once per key (outside any
    CUDA-graph pool): a call then copies nothing from the host (at batch 1 the host side of a call is most of its
    time)."""
    def make():
        r = torch.zeros(block_m, nbits_pad, device=device, dtype=torch.float32)
        r[:, :num_hash_bits] = hash_projections(block_m, num_hash_bits, seed, device=device)
        return r

    return _made_outside_graph_pools(make, device)


@lru_cache(maxsize=None)
def projections_16bit(block_m: int, num_hash_bits: int, nbits_pad: int, seed: int, device: torch.device,
                      dtype: torch.dtype) -> torch.Tensor:
    """The padded directions in ``dtype`` (bf16 or fp16), [block_m, nbits_pad]: the fp32 directions exactly."""
    r = _padded_projections(block_m, num_hash_bits, nbits_pad, seed, device)
    r16 = _made_outside_graph_pools(lambda: r.to(dtype), device)
    if not torch.equal(r16.float(), r):  # hash_projections draws values exact in both 16-bit types
        raise AssertionError(f"hash directions not exact in {dtype}")
    return r16


def projection_16bit(dtype: torch.dtype) -> bool:
    """Whether the hash projection of a ``dtype`` Q is one 16-bit tensor-core dot in the kernel (else fp32)."""
    if PROJECTION not in ("16bit", "fp32"):
        raise ValueError(f"grouping_triton.PROJECTION (environment variable DISTR_GROUPING_PROJECTION) must be "
                         f"'16bit' or 'fp32', got {PROJECTION!r}")
    return PROJECTION == "16bit" and _exact_16bit_dots(dtype)


def _exact_16bit_dots(dtype: torch.dtype) -> bool:
    """Whether tl.dot of ``dtype`` tiles gives exact products in fp32: fp16 and bf16 on a GPU, fp16 only in the
    interpreter (its bf16 dots are wrong)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not interpreting())


@dataclass
class GroupingLaunch:
    """What a grouping launch needs besides q: output buffers, the directions and the constexprs of
    ``group_block`` (``_grouping_kernel`` and the attention kernel's fused prologue take the same)."""
    groups: torch.Tensor  # int32 [B, H, nb, d]
    inv: torch.Tensor  # int32 [B, H, nb, d] column -> sorted position, when asked for; ``groups`` otherwise
    w: torch.Tensor  # fp32 [B, H, nb, d] rank1 weights (a = b = u); ``groups`` itself when unused
    qv: torch.Tensor  # uint8 view of query_valid [B, N]; ``groups`` when None
    qv_stride: int
    r: torch.Tensor  # zero-padded directions [block_m, NBITS_PAD]: fp32, or in Q's dtype with PROJ_16BIT
    rank1: bool
    meta: dict  # group_block's constexprs


def grouping_launch(q: torch.Tensor, *, group_size: int, block_m: int, num_hash_bits: int, seed: int,
                    query_valid: torch.Tensor | None, fusion: str, positions: bool = False) -> GroupingLaunch:
    if PAIR_WEIGHTS not in PAIR_WAYS:
        raise ValueError(f"grouping_triton.PAIR_WEIGHTS (environment variable DISTR_PAIR_WEIGHTS) must be one of "
                         f"{PAIR_WAYS}, got {PAIR_WEIGHTS!r}")
    if POSITIONS not in ("torch", "kernel"):
        raise ValueError(f"grouping_triton.POSITIONS (environment variable DISTR_GROUPING_POSITIONS) must be 'torch' "
                         f"or 'kernel', got {POSITIONS!r}")
    if POWER_GRAMS not in (None, "rows", "dot"):
        raise ValueError(f"grouping_triton.POWER_GRAMS (environment variable DISTR_POWER_GRAMS) must be 'rows' or "
                         f"'dot', got {POWER_GRAMS!r}")
    if POWER_CHUNK not in (None, 16, 32, 64, 128):  # 256 (only d=256 would use it) was never run on a GPU
        raise ValueError(f"grouping_triton.POWER_CHUNK (environment variable DISTR_POWER_CHUNK) must be 16, 32, 64 or "
                         f"128, got {POWER_CHUNK!r}")
    if COLUMN_ORDER not in ("rank", "sort"):
        raise ValueError(f"grouping_triton.COLUMN_ORDER (environment variable DISTR_COLUMN_ORDER) must be 'rank' "
                         f"or 'sort', got {COLUMN_ORDER!r}")
    B, H, N, d = q.shape
    nb = max(1, math.ceil(N / block_m))
    d_pad = next_power_of_2(d)
    nbits_pad = max(16, next_power_of_2(num_hash_bits))
    groups = torch.empty(B, H, nb, d, device=q.device, dtype=torch.int32)
    inv = torch.empty(B, H, nb, d, device=q.device, dtype=torch.int32) if positions else groups
    rank1 = fusion == "rank1" and group_size > 1
    w = torch.empty(B, H, nb, d, device=q.device, dtype=torch.float32) if rank1 else groups
    qv = query_valid.view(torch.uint8) if query_valid is not None else groups
    g = group_size if rank1 else 2  # (G, DG = D_PAD/G) only matter for rank1
    meta = dict(HEAD_DIM=d, D_PAD=d_pad, BM=block_m, NBITS=num_hash_bits, NBITS_PAD=nbits_pad,
                HAS_QV=query_valid is not None, RANK1=rank1, G=g, DG=power_chunk(d_pad, q.dtype) // g,
                CH=power_chunk(d_pad, q.dtype),
                STEPS=POWER_ITERATION_STEPS, U_ZERO=1.0 / math.sqrt(group_size) if rank1 else 1.0,
                EXACT_DOT=q.dtype == torch.float32, PAIR_GRAM=PAIR_WAYS.index(PAIR_WEIGHTS),
                GRAM_F32=q.dtype == torch.float32 or interpreting(), RANK_ORDER=COLUMN_ORDER == "rank",
                PROJ_16BIT=projection_16bit(q.dtype), GRAM_DOT=power_grams(q.dtype, d_pad) == "dot")
    r = (projections_16bit(block_m, num_hash_bits, nbits_pad, seed, q.device, q.dtype) if meta["PROJ_16BIT"]
         else _padded_projections(block_m, num_hash_bits, nbits_pad, seed, q.device))
    return GroupingLaunch(groups, inv, w, qv, qv.stride(0) if query_valid is not None else 0, r, rank1, meta)


def triton_grouping(q: torch.Tensor, *, group_size: int, block_m: int, num_hash_bits: int, seed: int,
                    query_valid: torch.Tensor | None, fusion: str, positions: bool = False,
                    num_warps: int | None = None):
    """(groups int32 [B,H,nb,d], a fp32 [B,H,nb,d], b fp32 [B,H,nb,d]) for the attention kernel; with
    ``positions``, a fourth item: int32 [B,H,nb,d] column -> sorted position (``inverse_groups(groups)``),
    stored by the same launch.

    One kernel launch computes the grouping and, for "rank1" with G = 2, 4 or 8, the fusion
    weights: a = b = u, the top eigenvector of each group's Gram matrix (the same function as
    ``grouping.fusion_weights_torch``, to fp32 rounding); a and b are then the same tensor.
    For "mean" the weights are constants the kernel folds in: a and b are None.
    ``num_warps``: the launch's warps instead of ``grouping_warps`` (side-by-side timing,
    ``scripts/bench_grouping.py --warps``).
    """
    B, H, N, d = q.shape
    if num_warps is not None and num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"num_warps must be None or one of 1, 2, 4, 8, 16, got {num_warps!r}")
    gl = grouping_launch(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed,
                         query_valid=query_valid, fusion=fusion, positions=positions)
    nb = gl.groups.shape[2]
    launch(_grouping_kernel, (nb, B * H), q, gl.qv, gl.r, gl.groups, gl.w, gl.inv, *q.stride(), gl.qv_stride,
           H, N, nb, **gl.meta, STORE_INV=positions,
           num_warps=num_warps or grouping_warps(d, gl.rank1, group_size, gl.meta["PROJ_16BIT"]))
    out = finish_grouping(q, gl, group_size=group_size, block_m=block_m, fusion=fusion, query_valid=query_valid)
    return (*out, gl.inv) if positions else out


def finish_grouping(q, gl: GroupingLaunch, *, group_size: int, block_m: int, fusion: str, query_valid):
    """(groups, a, b) after a launch wrote ``gl``: a = b = None for mean, u for rank1 (G = 1: torch)."""
    if fusion == "mean":
        return gl.groups, None, None
    if not gl.rank1:  # G = 1: constant weights
        return (gl.groups, *fusion_weights_torch(q, gl.groups, group_size=group_size, block_m=block_m, fusion=fusion,
                                                 query_valid=query_valid))
    return gl.groups, gl.w, gl.w


# (num_warps, output columns per dot, rows per regroup step) of the fused grouping + Q_eff launch, per (largest head
# dim, rank1) (``triton_query_effective``), and how it forms Q_eff there (``QEFF_WAYS``, ``QEFF_SOURCES``). Timed on the
# H200 at B·N = 32768, N = 4096, bf16 (``scripts/bench_regroup.py --qeff``, ``scripts/bench_attention.py``'s
# "sdpa <way> <source>" variants; docs/benchmarks.md, "16-bit fusion dots and the fusion matrix from registers"):
# the 16-bit dot with the fusion matrix from registers took d=64 mean 0.108 ms against 0.140 (the earlier default,
# "dot" from memory at 2 warps) and made whole SDPA-engine calls 1-13% faster at N=4096, except d=128 rank1, where it
# was 1-3% slower (its tile spills there: ``scripts/kernel_resources.py --qeff``). There "pair" (the partner columns
# by one exact one-hot dot, no fusion matrix; no spill) made the launch about 10% faster than "dot" from memory in
# two runs at N=4096 and 16384, whole calls within cuDNN's run-to-run noise (fourteenth session, "The rank1 Q_eff by
# partner columns"); at d=64 it was not faster. d=256 is untimed.
QEFF_TILES = {(64, False): (4, 64, 64, "dot16", "registers"), (64, True): (4, 64, 64, "dot16", "registers"),
              (128, False): (4, 128, 64, "dot16", "registers"), (128, True): (4, 128, 64, "pair", "registers"),
              (256, False): (8, 64, 32, "dot", "memory"), (256, True): (8, 64, 32, "dot", "memory")}


def _qeff_entry(head_dim: int, rank1: bool) -> tuple:
    return next(t for (dmax, r1), t in sorted(QEFF_TILES.items()) if head_dim <= dmax and r1 == rank1)


def qeff_tiles(head_dim: int, rank1: bool = False) -> tuple[int, int, int]:
    """The fused launch's (num_warps, columns per dot, rows per step) for ``head_dim`` (the next tabled size up)."""
    return _qeff_entry(head_dim, rank1)[:3]


def qeff_way(head_dim: int, rank1: bool = False) -> tuple[str, str]:
    """The fused launch's (way, fusion source) for ``head_dim``: the environment's ``QEFF_REGROUP`` /
    ``QEFF_FUSION_FROM`` where set, else the table's."""
    way, source = _qeff_entry(head_dim, rank1)[3:]
    return QEFF_REGROUP or way, QEFF_FUSION_FROM or source


# How the fused launch forms each Q_eff column from its group: "dot" with the block's [d, d] fusion matrix
# (``regroup.regroup_tile_store``: tf32 products for 16-bit q), "dot16" the same dot with 16-bit operands (q's tile
# as read, the fusion matrix in two 16-bit parts for rank1; fp32 q, and bf16 q in the interpreter, keep "dot"),
# "gather" as the weighted sum of the group's columns read by index (fp32 multiply-adds). The same Q_eff to rounding
# (tests; "dot16" is "dot" bit for bit with mean fusion). "gather" needs fewer registers but ran 4-5x slower on the
# H200 (scalar loads by column index; docs/benchmarks.md, "Q_eff in one launch"). "pair" (G = 2 with the fusion
# matrix from registers; "dot16" otherwise): each column's partner by one exact one-hot dot in q's dtype, then the
# pair's weighted sum in fp32 (no fusion matrix, one dot instead of rank1's two). Unset: the table's way.
QEFF_REGROUP = os.environ.get("DISTR_QEFF_REGROUP") or None
QEFF_WAYS = ("dot", "dot16", "gather", "pair")
# Where the dot ways take the fusion matrix from: "memory" reads the positions and weights the program stored back
# after a barrier (``regroup.regroup_tile_store``); "registers" builds it from the ones ``group_block`` holds (mean,
# and G=2 rank1 with the pair weights picked in registers, ``_pair_weights_regs``), with no barrier and no read back.
# Other cases (G >= 4 rank1, the gather way, fewer output columns per dot than d) keep "memory". Unset: the table's.
QEFF_FUSION_FROM = os.environ.get("DISTR_QEFF_FUSION_FROM") or None
QEFF_SOURCES = ("memory", "registers")


def triton_query_effective(q: torch.Tensor, *, group_size: int, block_m: int, num_hash_bits: int, seed: int,
                           query_valid: torch.Tensor | None, fusion: str, tiles: tuple[int, int, int] | None = None,
                           regroup_way: str | None = None, fusion_from: str | None = None):
    """Q_eff and the grouping it came from, in one launch: q [B, H, N, d] (16-bit or fp32, any strides) ->
    (q_eff [B, H, N, d] contiguous in q's dtype, groups int32 [B, H, nb, d], a, b (fp32 [B, H, nb, d] rank1 weights,
    the same tensor; None for mean), positions int32 [B, H, nb, d] (column -> sorted position)).

    The same function as ``triton_grouping(..., positions=True)`` followed by ``regroup.regroup(q, groups, a, b)``
    (tests): each program groups one block of ``block_m`` rows, then writes the block's Q_eff rows from the tile
    it just read. ``tiles``: (num_warps, output columns per dot, rows per step) instead of ``qeff_tiles(d)``;
    ``regroup_way``: "dot", "dot16", "gather" or "pair" (``QEFF_WAYS``; "pair" acts only for G = 2 with the fusion
    matrix from registers and runs "dot16" elsewhere), and ``fusion_from``: "memory" or "registers", instead of
    ``qeff_way(d)``. Refused by name: tiles with 8 or more warps and rows per step = block_m at head dims <= 64 (an
    illegal shared-memory access on the H200).
    """
    way, source = qeff_way(q.shape[-1], fusion == "rank1" and group_size > 1)
    way, source = regroup_way or way, fusion_from or source
    if way not in QEFF_WAYS:
        raise ValueError(f"regroup_way (or environment variable DISTR_QEFF_REGROUP) must be one of {QEFF_WAYS}, "
                         f"got {way!r}")
    if source not in QEFF_SOURCES:
        raise ValueError(f"fusion_from (or environment variable DISTR_QEFF_FUSION_FROM) must be one of "
                         f"{QEFF_SOURCES}, got {source!r}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a fused Q_eff launch (G=1's Q_eff is q), got {group_size}")
    if tiles is not None and (not isinstance(tiles, (tuple, list)) or len(tiles) != 3):
        raise ValueError(f"tiles must be None or (num_warps, output columns, rows per step), got {tiles!r}")
    B, H, N, d = q.shape
    gl = grouping_launch(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed,
                         query_valid=query_valid, fusion=fusion, positions=True)
    warps, cb, rows = tiles or qeff_tiles(d, gl.rank1)
    if tiles is None:
        rows = min(rows, block_m)  # a step's rows stay inside one grouping block
        # no fewer warps than the grouping launch's rule (the fp32 projection and G >= 4 rank1 spill with fewer)
        warps = max(warps, grouping_warps(d, gl.rank1, group_size, gl.meta["PROJ_16BIT"]))
    d_pad = gl.meta["D_PAD"]
    if warps not in (1, 2, 4, 8, 16) or cb < 16 or cb & (cb - 1) or rows < 16 or rows & (rows - 1) or block_m % rows:
        raise ValueError(f"tiles must be (num_warps in 1/2/4/8/16, output columns: a power of two >= 16, rows per "
                         f"step: a power of two >= 16 dividing block_m={block_m}), got {(warps, cb, rows)}")
    if warps >= 8 and rows == block_m and d_pad <= 64:  # refused everywhere, so a call behaves alike on CPU and GPU
        # compute-sanitizer on the H200 (Triton 3.6): an out-of-range shared-memory access in the projection dot
        # at d=64, (8, 128, 128), bf16, 8x32x4096; right under the interpreter (docs/benchmarks.md, fourteenth session)
        raise ValueError(f"tiles={(warps, cb, rows)}: {warps} warps with rows per step = block_m={block_m} at head dim "
                         f"{d} made an illegal shared-memory access on the GPU; use fewer warps or fewer rows per step")
    meta = gl.meta
    in_regs = source == "registers" and way != "gather" and cb >= d_pad and (not gl.rank1 or group_size == 2)
    if in_regs and gl.rank1:  # whatever PAIR_WEIGHTS says: every way gives the same weights, these stay in registers
        meta = {**meta, "PAIR_GRAM": PAIR_WAYS.index("regs")}
    qe = torch.empty((B, H, N, d), device=q.device, dtype=q.dtype)
    nb = gl.groups.shape[2]
    launch(_grouping_qeff_kernel, (nb, B * H),
        q, gl.qv, gl.r, gl.groups, gl.w, gl.inv, qe, 1.0 if gl.rank1 else 1.0 / group_size,
        *q.stride(), gl.qv_stride, *qe.stride(), H, N, nb, **meta, GROUP_SIZE=group_size, ROWS=rows,
        CB=min(d_pad, cb), DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32", GATHER=way == "gather",
        DOT16=way in ("dot16", "pair") and _exact_16bit_dots(q.dtype), FUSION_REGS=in_regs,
        PAIR=way == "pair" and in_regs and group_size == 2, num_warps=warps)
    wa = gl.w if gl.rank1 else None
    return qe, gl.groups, wa, wa, gl.inv
