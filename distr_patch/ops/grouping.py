"""Column grouping of DistrAttention: LSH hash, sort, cut into groups, fusion weights.

Shared by the PyTorch reference and the Triton path, so both compute exactly the same
grouping from the same query tensor. All functions here are plain torch ops and run on
any device.

Shapes: q is [B, H, N, d]; a grouping block is ``block_m`` consecutive query rows; the
number of blocks is ``nb = ceil(N / block_m)``. A grouping is a LongTensor
[B, H, nb, d] whose rows are permutations of 0..d-1: sorted position ``p`` holds column
``groups[..., p]`` and the group of that position is ``p // G``.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

ALLOWED_GROUP_SIZES = (1, 2, 4, 8)
ALLOWED_BLOCK_M = (32, 64, 128)
FUSIONS = ("mean", "rank1")
POWER_ITERATION_STEPS = 8


# Smallest magnitude of a direction entry: below it bf16 values are not all exact in fp16.
_MIN_PROJECTION = 2.0 ** -14


@lru_cache(maxsize=64)
def _projections_cpu(block_m: int, num_hash_bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    r = torch.randn(block_m, num_hash_bits, generator=gen, dtype=torch.float32).bfloat16().float()
    return torch.where(r < 0, -1.0, 1.0) * r.abs().clamp(min=_MIN_PROJECTION)


@torch.compiler.assume_constant_result
def _projections_constant(block_m: int, num_hash_bits: int, seed: int) -> torch.Tensor:
    """``_projections_cpu``, which torch.compile runs while tracing and keeps as a constant of the graph (traced,
    its ``torch.Generator`` would break the graph: the reference path could not compile with fullgraph=True)."""
    return _projections_cpu(block_m, num_hash_bits, seed)


def hash_projections(block_m: int, num_hash_bits: int, seed: int, device=None) -> torch.Tensor:
    """Sign-random-projection directions, [block_m, num_hash_bits] fp32.

    Drawn from a CPU ``torch.Generator`` seeded with ``seed`` (never the global RNG),
    so they are the same on every device, in every call, for every block and head.
    Standard normal draws rounded to bf16, magnitudes below 2^-14 raised to 2^-14: every entry is
    exactly a bf16 and an fp16 value, so a 16-bit Q projects in one tensor-core dot with exact
    products (the Triton grouping kernel).
    """
    # as a dict key, which torch.compile guards by value, a symbolic int (a seed that changed between compiled
    # calls, made dynamic) is a constant again: one graph per seed, none broken
    args = tuple(next(iter({a: None})) for a in (block_m, num_hash_bits, seed))
    if not all(type(a) is int for a in args):  # e.g. symbolic ints while torch.compile traces: traced as they are
        return _projections_cpu(*(int(a) for a in args)).to(device)
    return _projections_constant(*args).to(device)


def blocked_queries(q: torch.Tensor, block_m: int, query_valid: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, H, N, d] -> fp32 [B, H, nb, block_m, d]; tail and invalid rows are zeros."""
    B, H, N, d = q.shape
    nb = max(1, math.ceil(N / block_m))
    x = q.detach().float()
    if query_valid is not None:
        x = x * query_valid[:, None, :, None].to(device=x.device, dtype=x.dtype)
    pad = nb * block_m - N
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(B, H, nb, block_m, d)


def compute_groups(
    q: torch.Tensor,
    *,
    group_size: int = 2,
    block_m: int = 128,
    num_hash_bits: int = 16,
    seed: int = 0,
    query_valid: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Group the d columns of each query block by LSH; returns LongTensor [B, H, nb, d], nb = ceil(N / block_m).

    q [B, H, N, d] (any float dtype; hashed in fp32); ``query_valid`` [B, N] bool or None; ``group_size`` G in
    {1, 2, 4, 8}, dividing d; ``block_m`` in {32, 64, 128}; ``num_hash_bits`` in [1, 40]; ``seed`` an int in [0, 2**63).

    For each block of ``block_m`` query rows (tail zero-padded, rows with
    ``query_valid == False`` zeroed) each column vector (length block_m) is hashed into a
    ``num_hash_bits``-bit code: bit h is ``column · r_h > 0`` for the seeded directions of
    :func:`hash_projections`. Columns are ordered by code (stable, ties by column index)
    and consecutive runs of ``group_size`` positions form the groups: position p of a
    row holds a column index, and positions g·G .. g·G+G-1 are group g.

    backend: "auto" (CUDA -> the Triton grouping kernel, else torch), "torch" or "triton".
    Both compute the same function (fp32 projections; only a projection within rounding
    of zero can hash differently).
    """
    from .validate import TRITON_DTYPES, TRITON_HEAD_DIMS, check_grouping_args, check_triton_inputs

    check_grouping_args(q, group_size, block_m, num_hash_bits, query_valid, seed)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton":
        check_triton_inputs(q)
    elif backend == "auto":  # the Triton grouping kernel where it applies, else torch (the same groups)
        backend = "triton" if q.is_cuda and q.shape[-1] in TRITON_HEAD_DIMS and q.dtype in TRITON_DTYPES else "torch"
    if group_size > 1 and backend == "triton":
        from .grouping_triton import triton_grouping

        groups, _, _ = triton_grouping(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits,
                                       seed=seed, query_valid=query_valid, fusion="mean")
        return groups.long()
    return compute_groups_torch(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed,
                                query_valid=query_valid)


def compute_groups_torch(
    q: torch.Tensor,
    *,
    group_size: int = 2,
    block_m: int = 128,
    num_hash_bits: int = 16,
    seed: int = 0,
    query_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The definition of :func:`compute_groups` in torch ops: LongTensor [B, H, nb, d].

    For each block of ``block_m`` query rows (tail zero-padded, rows with
    ``query_valid == False`` zeroed) each column vector (length block_m) is hashed into a
    ``num_hash_bits``-bit code: bit h is ``column · r_h > 0`` for the seeded directions of
    :func:`hash_projections`. Columns are ordered by code (stable, ties by column index)
    and consecutive runs of ``group_size`` positions form the groups. With
    ``group_size == 1`` the result is the identity permutation.
    """
    B, H, N, d = q.shape
    nb = max(1, math.ceil(N / block_m))
    if group_size == 1:
        return torch.arange(d, device=q.device).expand(B, H, nb, d).clone()
    x = blocked_queries(q, block_m, query_valid)  # [B,H,nb,bm,d]
    r = hash_projections(block_m, num_hash_bits, seed, device=q.device)  # [bm,nbits]
    proj = torch.einsum("bhnmd,mk->bhndk", x, r)  # [B,H,nb,d,nbits]
    weights = 2 ** torch.arange(num_hash_bits, device=q.device, dtype=torch.int64)
    codes = ((proj > 0).to(torch.int64) * weights).sum(-1)  # [B,H,nb,d]
    # Unique keys make the ordering stable and tie-broken by column index.
    keys = codes * d + torch.arange(d, device=q.device, dtype=torch.int64)
    return torch.argsort(keys, dim=-1)


def _fix_sign(u: torch.Tensor) -> torch.Tensor:
    """Make each eigenvector's components sum to >= 0 (the fit uses u uᵀ; sign is free)."""
    s = u.sum(-1, keepdim=True)
    return torch.where(s < 0, -u, u)


def _top_eigvec_2(gram: torch.Tensor) -> torch.Tensor:
    """Closed-form top eigenvector of symmetric 2x2 matrices [..., 2, 2] -> [..., 2]."""
    a, b, c = gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 1]
    lam = 0.5 * (a + c) + torch.sqrt((0.5 * (a - c)) ** 2 + b * b)
    v1 = torch.stack([lam - c, b], dim=-1)
    v2 = torch.stack([b, lam - a], dim=-1)
    n1 = (v1 * v1).sum(-1, keepdim=True)
    n2 = (v2 * v2).sum(-1, keepdim=True)
    v = torch.where(n1 >= n2, v1, v2)
    n = torch.maximum(n1, n2)
    fallback = torch.full_like(v, 1.0 / math.sqrt(2.0))
    return torch.where(n > 0, v / torch.sqrt(n.clamp_min(1.1754943508222875e-38)), fallback)  # floor: 2**-126


def _top_eigvec_power(gram: torch.Tensor) -> torch.Tensor:
    """Top eigenvector of [..., G, G] by POWER_ITERATION_STEPS normalised power steps,
    started from the column with the largest diagonal entry."""
    G = gram.shape[-1]
    start = torch.diagonal(gram, dim1=-2, dim2=-1).argmax(-1)  # [...]
    v = torch.gather(gram, -1, start[..., None, None].expand(*gram.shape[:-1], 1)).squeeze(-1)
    for _ in range(POWER_ITERATION_STEPS):
        v = torch.matmul(gram, v.unsqueeze(-1)).squeeze(-1)
        n = torch.sqrt((v * v).sum(-1, keepdim=True))
        v = torch.where(n > 0, v / n.clamp_min(1e-30), v)
    n = (v * v).sum(-1, keepdim=True)
    fallback = torch.full_like(v, 1.0 / math.sqrt(G))
    return torch.where(n > 0, v, fallback)


def fusion_weights_torch(
    q: torch.Tensor,
    groups: torch.Tensor,
    *,
    group_size: int,
    block_m: int,
    fusion: str = "mean",
    query_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sorted position weights (a, b), each fp32 [B, H, nb, d], no gradient.

    The fused query and key of group g are ``Q̃[:, g] = Σ_j a_j Q[:, j]`` and
    ``K̃[:, g] = Σ_j b_j K[:, j]`` over the group's members j (positions
    ``g*G .. g*G+G-1`` of ``groups``).

    - ``mean`` (the paper): a = 1/G, b = 1.
    - ``rank1``: a = b = u, the top eigenvector of XᵀX (G×G, fp32) where X holds the
      group's Q columns over the block (tail/invalid rows zero): closed form for G=2,
      8 power steps from the largest-diagonal column for G>=4; sign so that Σu >= 0;
      an all-zero group falls back to u = 1/sqrt(G).
    """
    G = group_size
    shape = groups.shape
    if fusion == "mean" or G == 1:
        a = torch.full(shape, 1.0 / G, device=groups.device, dtype=torch.float32)
        return a, torch.ones(shape, device=groups.device, dtype=torch.float32)
    x = blocked_queries(q, block_m, query_valid)  # [B,H,nb,bm,d]
    idx = groups[..., None, :].expand(*groups.shape[:3], x.shape[3], groups.shape[-1])
    xs = torch.gather(x, -1, idx)  # columns in sorted order
    B, H, nb, bm, d = xs.shape
    xg = xs.reshape(B, H, nb, bm, d // G, G).permute(0, 1, 2, 4, 3, 5)  # [...,d/G,bm,G]
    gram = torch.matmul(xg.transpose(-1, -2), xg)  # [B,H,nb,d/G,G,G]
    u = _top_eigvec_2(gram) if G == 2 else _top_eigvec_power(gram)
    u = _fix_sign(u).reshape(B, H, nb, d).contiguous()
    return u, u


def fused_queries(
    q: torch.Tensor, groups: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, group_size: int, block_m: int
) -> torch.Tensor:
    """The grouped product as a full-width query: [B, H, N, d], fp32 (fp64 for fp64 q).

    ``q_eff[:, j] = b_j · Q̃[:, g(j)]`` so that ``q_eff @ Kᵀ == Q̃ @ K̃ᵀ`` exactly in real
    arithmetic. Differentiable in q (a, b, groups are constants).
    """
    B, H, N, d = q.shape
    G = group_size
    nb = groups.shape[2]
    pad = nb * block_m - N
    x = q.double() if q.dtype == torch.float64 else q.float()
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    x = x.reshape(B, H, nb, block_m, d)
    idx = groups[..., None, :].expand(B, H, nb, block_m, d)
    xs = torch.gather(x, -1, idx) * a[..., None, :].to(x.dtype)
    qt = xs.reshape(B, H, nb, block_m, d // G, G).sum(-1, keepdim=True)  # Q̃
    qe_sorted = (qt.expand(B, H, nb, block_m, d // G, G).reshape(B, H, nb, block_m, d)) * b[..., None, :].to(x.dtype)
    q_eff = torch.zeros_like(qe_sorted).scatter(-1, idx, qe_sorted)  # back to column order
    return q_eff.reshape(B, H, nb * block_m, d)[:, :, :N]


fusion_weights = fusion_weights_torch
