"""PyTorch reference of DistrAttention: the definition, the CPU path and the test oracle.

Computes in fp32 (fp64 for fp64 inputs, for gradcheck) and returns q's dtype. Memory is
O(B·Hq·rows·M) per chunk of query rows, so it is meant for the CPU, for autograd and for
checking the Triton kernel, not for speed.
"""
from __future__ import annotations

import torch

from .grouping import compute_groups, fused_queries, fusion_weights

# Query rows per chunk are chosen so one chunk's score matrix stays under this many floats.
_SCORE_BUDGET = 1 << 26


def normalize_mask(attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split a user mask into (allowed: bool, additive: fp32 or None), both broadcastable.

    Bool masks: True = attend. Float masks are additive; entries that are -inf or at most
    half the dtype's most negative value (transformers' ``finfo.min`` convention) count
    as masked, the rest are added to the scores, less their row's largest (the softmax is the
    same, and fp32 keeps the scores: -1e9 added to a score of 3 would round it away, and a
    16-bit engine could not hold -1e9 at all).
    """
    if attention_mask is None:
        return None, None
    m = attention_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    if m.dtype == torch.bool:
        return m, None
    allowed = m > 0.5 * torch.finfo(m.dtype).min
    m = m.float()
    top = torch.where(allowed, m, float("-inf")).amax(-1, keepdim=True).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros((), dtype=torch.float32, device=m.device))
    additive = torch.where(allowed, m - top, torch.zeros((), dtype=torch.float32, device=m.device))
    return allowed, additive


def causal_allowed(N: int, M: int, device, rows: slice | None = None) -> torch.Tensor:
    """Bottom-right aligned causal mask [n, M]: query i sees keys j <= i + M - N."""
    i = torch.arange(N, device=device)[:, None]
    if rows is not None:
        i = i[rows]
    j = torch.arange(M, device=device)[None, :]
    return j <= i + (M - N)


def band(N: int, M: int, window: int, device, rows: slice | None = None) -> torch.Tensor:
    """Exact-window band [n, M]: |i + M - N - j| < window."""
    i = torch.arange(N, device=device)[:, None]
    if rows is not None:
        i = i[rows]
    j = torch.arange(M, device=device)[None, :]
    return (i + (M - N) - j).abs() < window


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim; disallowed entries get 0 and fully masked rows are 0."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(scores - m)
    s = e.sum(-1, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def reference_distr_attention(
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
) -> torch.Tensor:
    """DistrAttention by its definition (see ``distr_attention`` for the arguments).

    Grouped scores use ``fused_queries``: ``q_eff @ Kᵀ`` equals ``Q̃ K̃ᵀ`` (inner dim d/G)
    in exact arithmetic. Differentiable in q, k, v; grouping and fusion weights are
    constants (no gradient).
    """
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else float(scale)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32  # compute dtype
    if group_size == 1:
        q_eff = q.to(cdt)
    else:
        if groups is None:
            groups = compute_groups(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits,
                                    seed=seed, query_valid=query_valid)
        a, b = fusion_weights(q, groups, group_size=group_size, block_m=block_m, fusion=fusion,
                              query_valid=query_valid)
        q_eff = fused_queries(q, groups, a, b, group_size=group_size, block_m=block_m)
    qf = q.to(cdt)
    rep = Hq // Hkv
    kf = k.to(cdt).repeat_interleave(rep, dim=1) if rep > 1 else k.to(cdt)
    vf = v.to(cdt).repeat_interleave(rep, dim=1) if rep > 1 else v.to(cdt)
    allowed_full, additive_full = normalize_mask(attention_mask)

    rows_per_chunk = max(block_m, (_SCORE_BUDGET // max(1, B * Hq * M)) // block_m * block_m)
    outs = []
    # one chunk where it fits: a range over a symbolic N would specialise torch.compile's graph on N's value
    for r0 in ((0,) if N <= rows_per_chunk else range(0, N, rows_per_chunk)):
        rows = slice(None) if N <= rows_per_chunk else slice(r0, min(N, r0 + rows_per_chunk))
        s = scale * torch.matmul(q_eff[:, :, rows], kf.transpose(-1, -2))
        allowed = None
        if causal:
            allowed = causal_allowed(N, M, q.device, rows)
        if allowed_full is not None:
            am = allowed_full[:, :, rows] if allowed_full.shape[2] != 1 else allowed_full
            allowed = am if allowed is None else (allowed & am)
        if exact_window > 0 and group_size > 1:
            s_exact = scale * torch.matmul(qf[:, :, rows], kf.transpose(-1, -2))
            in_band = band(N, M, exact_window, q.device, rows)
            if window_correction > 0:
                sel = in_band if allowed is None else (in_band & allowed)
                sel = sel.expand_as(s)
                cnt = sel.sum(-1, keepdim=True)
                sq = torch.where(sel, (s - s_exact) ** 2, torch.zeros_like(s)).sum(-1, keepdim=True)
                sigma2 = torch.where(cnt > 0, sq / cnt.clamp_min(1), torch.zeros_like(sq))
                s = s - (0.5 * window_correction) * sigma2
            s = torch.where(in_band, s_exact, s)
        if additive_full is not None:
            s = s + (additive_full[:, :, rows] if additive_full.shape[2] != 1 else additive_full)
        p = masked_softmax(s, allowed)
        outs.append(torch.matmul(p, vf))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.to(q.dtype)


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    attention_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention in PyTorch (fp32 inside), with ``distr_attention``'s conventions: the oracle of G=1.

    q [B, Hq, N, d]; k, v [B, Hkv, M, d], Hq a multiple of Hkv (GQA); ``causal`` bottom-right aligned (query i sees
    keys j <= i + M - N); ``attention_mask`` bool (True = attend) or additive float, broadcastable to [B, Hq, N, M];
    ``scale`` default d^-0.5. Returns [B, Hq, N, d] in q's dtype; fully masked rows are zeros."""
    return reference_distr_attention(q, k, v, group_size=1, causal=causal, attention_mask=attention_mask,
                                     scale=scale)
