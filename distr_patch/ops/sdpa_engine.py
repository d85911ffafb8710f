"""DistrAttention on an exact-attention engine: Q_eff by our launches, then torch's SDPA.

Without an exact window, DistrAttention is exact attention on a transformed query: the grouped scores
``Q̃ K̃ᵀ`` equal ``Q_eff Kᵀ`` with ``Q_eff[:, j] = b_j Q̃[:, group(j)]`` (``regroup.py``). So
``backend="sdpa"`` forms Q_eff (one Triton launch that groups each block and writes its Q_eff rows, on CUDA and
under the interpreter; torch ops otherwise) and hands (Q_eff, K, V) to
``torch.nn.functional.scaled_dot_product_attention``, which runs the fastest exact kernel PyTorch has for the call
(cuDNN, FlashAttention-2 or memory-efficient).
The function is the same as the fused kernel's, to rounding (Q_eff is rounded to q's dtype in both).
With an exact window (N == M, no tensor mask, forward only) the call is split in pieces (``window_merge.py``): SDPA
calls on Q_eff for the keys beside the band, which also return each row's log-sum-exp (PyTorch's cuDNN op on CUDA,
its CPU flash op otherwise), and our kernel for the exact band, which corrects and merges.

Mask conventions are ours, not SDPA's: causal is bottom-right aligned (SDPA's ``is_causal`` is taken only
when N == M), and rows with no key to attend give zeros (SDPA would give NaN or a uniform average).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .configs import interpreting, windowed_sdpa_limits
from .grouping import compute_groups, fused_queries, fusion_weights
from .reference import causal_allowed, normalize_mask
from .regroup import inverse_groups, regroup
from .reverse_rows import reverse_rows
from .validate import check_triton_inputs
from .window_merge import band_merge, band_merge_torch

# How Q_eff is formed on CUDA (and under the interpreter) when no groups are given: "fused" (default) by one launch
# that groups each block and writes its Q_eff rows (``grouping_triton.triton_query_effective``), "separate" by the
# grouping launch and then the regroup launch. The same Q_eff (tests); side by side: ``scripts/bench_regroup.py``.
QEFF_LAUNCH = os.environ.get("DISTR_QEFF_LAUNCH", "fused")

# How the non-causal window's right piece reverses Q_eff, K and V on CUDA (and under the interpreter): "triton"
# (default, ``reverse_rows``: one read and one write per row) or "torch" (``torch.flip``, slower on the GPU). The
# same tensors (tests); side by side: ``scripts/bench_window_sdpa.py``, ``bench_attention.py``'s "torch flip" rows.
REVERSE_ROWS = "triton"


def _adjoint_regroup(dqe, grp, inv, wa, wb, group_size: int, block_m: int):
    """dQ from dQ_eff: the adjoint regroup, (b, a) for (a, b) (mean: (1, 1/G)), in dqe's dtype."""
    mean = wa is None
    return regroup(dqe, grp, wb, wa, group_size=group_size, block_m=block_m, out_dtype=dqe.dtype,
                   mean_weights=(1.0, 1.0 / group_size) if mean else None, inv=inv)


class _RegroupQuery(torch.autograd.Function):
    """Q_eff = regroup(q) with the block's fusion weights (a, b); dQ = the adjoint regroup (b, a) of dQ_eff.
    The grouping and the weights are constants. wa is None for mean fusion (a = 1/G, b = 1). qe: Q_eff formed
    already (the fused grouping + Q_eff launch), returned as is."""

    @staticmethod
    def forward(ctx, q, grp, inv, wa, wb, group_size: int, block_m: int, qe=None):
        ctx.save_for_backward(grp, inv, wa, wb)
        ctx.group_size, ctx.block_m = group_size, block_m
        if qe is not None:  # formed already (the fused grouping + Q_eff launch)
            return qe
        mean = wa is None
        return regroup(q, grp, wa, wb, group_size=group_size, block_m=block_m, out_dtype=q.dtype,
                       mean_weights=(1.0 / group_size, 1.0) if mean else None, inv=inv)

    @staticmethod
    @once_differentiable
    def backward(ctx, dqe):
        grp, inv, wa, wb = ctx.saved_tensors
        return (_adjoint_regroup(dqe, grp, inv, wa, wb, ctx.group_size, ctx.block_m),
                None, None, None, None, None, None, None)


def kernel_grouping(qd: torch.Tensor, *, group_size: int, block_m: int, fusion: str, num_hash_bits: int, seed: int,
                    query_valid: torch.Tensor | None, groups: torch.Tensor | None, form_qeff: bool):
    """The kernels' grouping of qd [B, Hq, N, d] (no gradient; G > 1; CUDA or the interpreter):
    (qe or None, groups int32, positions int32, a, b), all [B, Hq, nb, d] but qe [B, Hq, N, d] in qd's dtype;
    a = b fp32 for rank1, None for mean. With ``form_qeff`` and no groups given, Q_eff comes from the one grouping +
    Q_eff launch (``QEFF_LAUNCH`` "fused"); otherwise qe is None and the grouping comes from the grouping launch."""
    from .grouping_triton import triton_grouping, triton_query_effective

    G = group_size
    if groups is None and form_qeff and QEFF_LAUNCH == "fused":
        qe, grp, wa, wb, inv = triton_query_effective(qd, group_size=G, block_m=block_m, num_hash_bits=num_hash_bits,
                                                      seed=seed, query_valid=query_valid, fusion=fusion)
        return qe, grp, inv, wa, wb
    if groups is None:
        grp, wa, wb, inv = triton_grouping(qd, group_size=G, block_m=block_m, num_hash_bits=num_hash_bits, seed=seed,
                                           query_valid=query_valid, fusion=fusion, positions=True)
        return None, grp, inv, wa, wb
    grp = groups.to(torch.int32).contiguous()
    wa = wb = None
    if fusion != "mean":
        wa, wb = fusion_weights(qd, groups, group_size=G, block_m=block_m, fusion=fusion, query_valid=query_valid)
    return None, grp, inverse_groups(grp), wa, wb


def query_effective(q: torch.Tensor, *, group_size: int, block_m: int, fusion: str, num_hash_bits: int, seed: int,
                    query_valid: torch.Tensor | None, groups: torch.Tensor | None) -> torch.Tensor:
    """Q_eff [B, Hq, N, d] in q's dtype, differentiable in q: ``Q_eff Kᵀ`` is DistrAttention's grouped product.
    G = 1 returns q itself. While torch.compile traces a call on the kernels, Q_eff is one custom operator with its
    own backward (``compile_op.query_effective_op``), so the SDPA engine's call with a gradient is one graph."""
    G = group_size
    if G == 1:
        return q
    if QEFF_LAUNCH not in ("fused", "separate"):
        raise ValueError(f"sdpa_engine.QEFF_LAUNCH (environment variable DISTR_QEFF_LAUNCH) must be 'fused' or "
                         f"'separate', got {QEFF_LAUNCH!r}")
    if q.is_cuda or interpreting():  # one launch (grouping + Q_eff), or a grouping launch and a regroup launch
        if torch.compiler.is_compiling():
            from . import compile_op

            return compile_op.query_effective_op(q, query_valid, groups, G, block_m, fusion, num_hash_bits, seed)
        qe, grp, inv, wa, wb = kernel_grouping(q.detach(), group_size=G, block_m=block_m, fusion=fusion,
                                               num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid,
                                               groups=groups, form_qeff=True)
        if qe is not None and not (torch.is_grad_enabled() and q.requires_grad):
            return qe
        return _RegroupQuery.apply(q, grp, inv, wa, wb, G, block_m, qe)
    grp = groups if groups is not None else compute_groups(q.detach(), group_size=G, block_m=block_m,
                                                           num_hash_bits=num_hash_bits, seed=seed,
                                                           query_valid=query_valid)
    a, b = fusion_weights(q.detach(), grp, group_size=G, block_m=block_m, fusion=fusion, query_valid=query_valid)
    return fused_queries(q, grp.long(), a, b, group_size=G, block_m=block_m).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                   attention_mask: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """Exact attention by torch's SDPA with our conventions: bottom-right causal, zeros for rows with no
    allowed key. q [B, Hq, N, d], k/v [B, Hkv, M, d] -> [B, Hq, N, d]."""
    B, Hq, N, d = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    gqa = dict(enable_gqa=True) if Hq != Hkv else {}
    if attention_mask is None and (not causal or N == M):
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal), scale=scale, **gqa)
    allowed, additive = normalize_mask(attention_mask)
    if causal:
        c = causal_allowed(N, M, q.device)
        allowed = c if allowed is None else allowed & c
    row_ok = allowed.any(-1, keepdim=True)  # rows with a key to attend; the others attend all, then give zeros
    allowed = allowed | ~row_ok
    if additive is None:
        mask = allowed
    else:
        neg = torch.full((), float("-inf"), dtype=q.dtype, device=q.device)
        # each row's largest value is 0 (normalize_mask); values below q's dtype's range stay finite, not -inf
        # (a key they bias is still allowed)
        lo = max(torch.finfo(q.dtype).min, torch.finfo(additive.dtype).min)
        mask = torch.where(allowed, additive.clamp(min=lo).to(q.dtype), neg)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **gqa)
    return torch.where(row_ok, out, torch.zeros((), dtype=out.dtype, device=out.device))


# How calls get a row log-sum-exp from an exact kernel, per (device type, dtype, head dim, GQA): the first way that
# runs. cuDNN takes GQA as is on the H200; of the CUDA kernels only the memory-efficient one takes fp32; "math" (torch
# ops, [N, M] scores in memory) is the last resort, so a call never fails for want of a kernel.
_LSE_WAYS = {"cuda": ("cudnn", "cudnn repeated kv", "flash repeated kv", "efficient repeated kv", "math"),
             "cpu": ("cpu flash repeated kv", "math")}
_lse_way: dict = {}


def _lse_math(q, k, v, causal: bool, scale: float):
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:  # top-left, as SDPA's is_causal
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, -1)
    return (torch.exp(s - lse[..., None]) @ v.float()).to(q.dtype), lse


def _lse_call(way: str, q, k, v, causal: bool, scale: float):
    aten = torch.ops.aten
    if way == "cudnn" or way == "cudnn repeated kv":
        return aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)[:2]
    if way == "flash repeated kv":
        return aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]
    if way == "efficient repeated kv":  # its log-sum-exp is padded to a multiple of 32 rows
        out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)[:2]
        return out, lse[..., : q.shape[2]]
    if way == "cpu flash repeated kv":
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return _lse_math(q, k, v, causal, scale)


def _attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float):
    """Exact attention and each row's log-sum-exp: q [B, Hq, N, d], k/v [B, Hkv, M, d] (causal: top-left, as SDPA's
    is_causal) -> (out [B, Hq, N, d] in q's dtype, lse [B, Hq, N] fp32, natural log). PyTorch's own kernels, by
    their private ops (SDPA's public call returns no log-sum-exp); forward only."""
    rep = q.shape[1] // k.shape[1]
    dev = "cuda" if q.is_cuda else "cpu"
    key = (dev, q.dtype, q.shape[-1], rep > 1)
    ways = (_lse_way[key],) if key in _lse_way else _LSE_WAYS[dev]
    if dev == "cuda" and q.dtype == torch.float32:  # cuDNN and flash are 16-bit kernels: called directly on fp32
        ways = tuple(w for w in ways if not w.startswith(("cudnn", "flash")))  # they need not refuse it
    err = None
    for way in ways:
        kk, vv = (k, v) if way == "cudnn" or rep == 1 else (t.repeat_interleave(rep, dim=1) for t in (k, v))
        try:
            out, lse = _lse_call(way, q, kk, vv, causal, scale)
        except RuntimeError as e:  # this build, device or shape has no such kernel: the next way
            err = e
            continue
        _lse_way[key] = way
        return out, lse.reshape(q.shape[:3])
    raise RuntimeError(f"backend='sdpa' with an exact window: no exact kernel returned a log-sum-exp for "
                       f"q {tuple(q.shape)} {q.dtype}: {err}")


def _flip_rows(x: torch.Tensor) -> torch.Tensor:
    return x.flip(2)


def windowed_sdpa(q: torch.Tensor, qe: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, window: int,
                  window_correction: float, scale: float) -> torch.Tensor:
    """DistrAttention with an exact window W from pieces: q, qe (Q_eff) [B, Hq, N, d], k/v [B, Hkv, N, d] ->
    [B, Hq, N, d]. Grouped keys left of the band (and, not causal, right of it: the reversed sequences) by SDPA on
    Q_eff with log-sum-exps, then ``window_merge``'s kernel: the exact band, the correction and the merge."""
    N = q.shape[2]
    left = right = None
    if N > window:
        left = _attention_lse(qe[:, :, window:], k[:, :, : N - window], v[:, :, : N - window], causal=True,
                              scale=scale)
        if not causal:
            rev = reverse_rows if REVERSE_ROWS == "triton" and (q.is_cuda or interpreting()) else _flip_rows
            right = _attention_lse(rev(qe[:, :, : N - window]), rev(k[:, :, window:]), rev(v[:, :, window:]),
                                   causal=True, scale=scale)
    merge = band_merge if (q.is_cuda or interpreting()) else band_merge_torch
    return merge(q, qe, k, v, left, right, causal=causal, window=window, scale=scale,
                 window_correction=window_correction)


def sdpa_distr_attention(q, k, v, *, group_size, block_m, fusion, exact_window, window_correction, causal,
                         attention_mask, scale, num_hash_bits, seed, query_valid, groups) -> torch.Tensor:
    """DistrAttention as SDPA on Q_eff, with an exact window as SDPA pieces and our band kernel (inputs already
    validated by ``distr_attention``)."""
    windowed = bool(exact_window) and group_size > 1  # at G = 1 every score is exact: the window changes nothing
    if windowed:
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        why = windowed_sdpa_limits(attention_mask, q.shape[2], k.shape[2], needs_grad)
        if why:
            raise ValueError(f"backend='sdpa' with exact_window={exact_window} needs " + "; ".join(why)
                             + "; use backend='triton' for this call")
    if group_size > 1 and (q.is_cuda or interpreting()):  # the launches take the fused kernel's head dims, dtypes
        check_triton_inputs(q)
    qe = query_effective(q, group_size=group_size, block_m=block_m, fusion=fusion, num_hash_bits=num_hash_bits,
                         seed=seed, query_valid=query_valid, groups=groups)
    if windowed:
        return windowed_sdpa(q, qe, k, v, causal=causal, window=exact_window, window_correction=window_correction,
                             scale=q.shape[-1] ** -0.5 if scale is None else scale)
    return sdpa_attention(qe, k, v, causal=causal, attention_mask=attention_mask, scale=scale)
