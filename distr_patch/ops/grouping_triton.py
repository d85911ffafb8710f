"""Triton kernel for the grouping: LSH hash, sort and (rank1, G=2) fusion weights in one pass.

One program per (batch·head, query block): it reads the block's Q once, projects its d
columns on the seeded directions (fp32), sorts the columns by (code, index) and writes the
permutation; for rank1 with G=2 it also writes the closed-form top eigenvector of each
pair's Gram matrix. It computes the same function as ``grouping.compute_groups_torch`` /
``fusion_weights_torch``; a projection within rounding of zero may hash differently
(tests check that only such near-ties differ).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .grouping import fusion_weights_torch, hash_projections


@triton.jit
def _grouping_kernel(Q, QV, R, GRP, WA, WB,
                     stride_qb, stride_qh, stride_qn, stride_qd, stride_qvb,
                     Hq, N, NB,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BM: tl.constexpr, NBITS: tl.constexpr,
                     NBITS_PAD: tl.constexpr, RANK1_PAIRS: tl.constexpr, HAS_QV: tl.constexpr,
                     ROW_CHUNK: tl.constexpr):
    pid_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    rows = pid_blk * BM + tl.arange(0, BM)
    cols = tl.arange(0, D_PAD)
    rvalid = rows < N
    if HAS_QV:
        rvalid = rvalid & (tl.load(QV + b.to(tl.int64) * stride_qvb + rows, mask=rows < N, other=0) != 0)
    x = tl.load(Q + rows[:, None] * stride_qn + cols[None, :] * stride_qd,
                mask=rvalid[:, None] & (cols < HEAD_DIM)[None, :], other=0.0).to(tl.float32)
    kb = tl.arange(0, NBITS_PAD)
    r = tl.load(R + tl.arange(0, BM)[:, None] * NBITS_PAD + kb[None, :])  # zero-padded bits
    proj = tl.dot(tl.trans(x), r, input_precision="ieee")  # [D_PAD, NBITS_PAD]
    bit = tl.where(kb < NBITS, tl.full([NBITS_PAD], 1, tl.int64) << kb.to(tl.int64), 0)
    code = tl.sum(tl.where(proj > 0, bit[None, :], 0), axis=1)  # [D_PAD]
    big = (1 << NBITS) * D_PAD
    key = tl.where(cols < HEAD_DIM, code * D_PAD + cols, big + cols)  # padded columns sort last
    perm = (tl.sort(key) % D_PAD).to(tl.int32)
    out = (pid_bh.to(tl.int64) * NB + pid_blk) * HEAD_DIM
    tl.store(GRP + out + cols, perm, mask=cols < HEAD_DIM)
    if RANK1_PAIRS:
        tl.debug_barrier()  # the permutation is re-read from memory in a plain layout
        g = tl.arange(0, D_PAD // 2)
        gvalid = g < HEAD_DIM // 2
        c0 = tl.load(GRP + out + 2 * g, mask=gvalid, other=0).to(tl.int64)
        c1 = tl.load(GRP + out + 2 * g + 1, mask=gvalid, other=0).to(tl.int64)
        a = tl.zeros([D_PAD // 2], dtype=tl.float32)
        bb = tl.zeros([D_PAD // 2], dtype=tl.float32)
        c = tl.zeros([D_PAD // 2], dtype=tl.float32)
        # Gram entries of each pair, accumulated over row chunks (keeps registers small)
        for r0 in tl.static_range(0, BM, ROW_CHUNK):
            rr = pid_blk * BM + r0 + tl.arange(0, ROW_CHUNK)
            rv = rr < N
            if HAS_QV:
                rv = rv & (tl.load(QV + b.to(tl.int64) * stride_qvb + rr, mask=rr < N, other=0) != 0)
            lm = rv[:, None] & gvalid[None, :]
            x0 = tl.load(Q + rr[:, None] * stride_qn + c0[None, :] * stride_qd, mask=lm, other=0.0).to(tl.float32)
            x1 = tl.load(Q + rr[:, None] * stride_qn + c1[None, :] * stride_qd, mask=lm, other=0.0).to(tl.float32)
            a += tl.sum(x0 * x0, 0)
            bb += tl.sum(x0 * x1, 0)
            c += tl.sum(x1 * x1, 0)
        lam = 0.5 * (a + c) + tl.sqrt((0.5 * (a - c)) * (0.5 * (a - c)) + bb * bb)
        v1a, v1b = lam - c, bb
        v2a, v2b = bb, lam - a
        n1 = v1a * v1a + v1b * v1b
        n2 = v2a * v2a + v2b * v2b
        use1 = n1 >= n2
        va = tl.where(use1, v1a, v2a)
        vb = tl.where(use1, v1b, v2b)
        n = tl.where(use1, n1, n2)
        inv = 1.0 / tl.sqrt(tl.maximum(n, 1e-38))
        ua = tl.where(n > 0, va * inv, 0.7071067811865476)
        ub = tl.where(n > 0, vb * inv, 0.7071067811865476)
        flip = (ua + ub) < 0
        ua = tl.where(flip, -ua, ua)
        ub = tl.where(flip, -ub, ub)
        tl.store(WA + out + 2 * g, ua, mask=gvalid)
        tl.store(WA + out + 2 * g + 1, ub, mask=gvalid)
        tl.store(WB + out + 2 * g, ua, mask=gvalid)
        tl.store(WB + out + 2 * g + 1, ub, mask=gvalid)


def triton_grouping(q: torch.Tensor, *, group_size: int, block_m: int, num_hash_bits: int, seed: int,
                    query_valid: torch.Tensor | None, fusion: str):
    """(groups int32 [B,H,nb,d], a fp32 [B,H,nb,d], b fp32 [B,H,nb,d]) for the attention kernel.

    For "mean" the weights are constants the kernel folds in: a and b are None.
    rank1 with G >= 4 takes its weights from the torch path (power iteration).
    """
    B, H, N, d = q.shape
    nb = max(1, math.ceil(N / block_m))
    d_pad = triton.next_power_of_2(d)
    nbits_pad = max(16, triton.next_power_of_2(num_hash_bits))
    r = torch.zeros(block_m, nbits_pad, device=q.device, dtype=torch.float32)
    r[:, :num_hash_bits] = hash_projections(block_m, num_hash_bits, seed, device=q.device)
    groups = torch.empty(B, H, nb, d, device=q.device, dtype=torch.int32)
    rank1_pairs = fusion == "rank1" and group_size == 2
    wa = torch.empty(B, H, nb, d, device=q.device, dtype=torch.float32) if rank1_pairs else groups
    wb = torch.empty_like(wa) if rank1_pairs else groups
    qv = query_valid.view(torch.uint8) if query_valid is not None else groups
    _grouping_kernel[(nb, B * H)](
        q, qv, r, groups, wa, wb, *q.stride(), qv.stride(0) if query_valid is not None else 0, H, N, nb,
        HEAD_DIM=d, D_PAD=d_pad, BM=block_m, NBITS=num_hash_bits, NBITS_PAD=nbits_pad, RANK1_PAIRS=rank1_pairs,
        HAS_QV=query_valid is not None, ROW_CHUNK=32, num_warps=4 if d <= 64 else 8)
    if fusion == "mean":
        return groups, None, None
    if not rank1_pairs:
        wa, wb = fusion_weights_torch(q, groups, group_size=group_size, block_m=block_m, fusion=fusion,
                                      query_valid=query_valid)
    return groups, wa, wb
