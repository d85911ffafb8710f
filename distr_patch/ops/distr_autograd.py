"""Autograd for the Triton path of DistrAttention: forward kernel + FA2-style backward kernels.

``DistrAttentionFunction`` runs ``_triton_forward(..., return_lse=True)``, keeps q, k, v, the
output, the row log-sum-exp and the grouping / fusion weights the forward used (all O(N·d)),
and (G > 1, ``configs.DEFAULT_KEEP_QEFF``, env DISTR_KEEP_QEFF) the forward's Q_eff and column ->
position map, one more [B, Hq, N, d] tensor that spares the backward a regroup launch; its
backward calls ``distr_bwd._triton_backward``. Gradients flow to q, k and v; the
grouping, the fusion weights, ``query_valid`` and the attention mask are constants (the mask
gets no gradient). Not twice differentiable.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import configs
from .distr_attn import _triton_forward
from .distr_bwd import _triton_backward


class DistrAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, opts: dict):
        keep = bool(configs.DEFAULT_KEEP_QEFF)
        out, lse, groups, wa, wb, *kept = _triton_forward(q, k, v, return_lse=True, keep_qeff=keep, **opts)
        qeff, inv = kept if keep else (None, None)
        ctx.save_for_backward(q, k, v, out, lse, groups, wa, wb, qeff, inv)
        ctx.opts = opts
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q, k, v, out, lse, groups, wa, wb, qeff, inv = ctx.saved_tensors
        o = ctx.opts
        need_dq = ctx.needs_input_grad[0]
        need_dkdv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        dq, dk, dv = _triton_backward(
            do, q, k, v, out, lse, groups, wa, wb, group_size=o["group_size"], block_m=o["block_m"],
            fusion=o["fusion"], exact_window=o["exact_window"], window_correction=o["window_correction"],
            causal=o["causal"], attention_mask=o["attention_mask"], scale=o["scale"],
            need_dq=need_dq, need_dkdv=need_dkdv, qeff=qeff, inv=inv)
        return dq, (dk if ctx.needs_input_grad[1] else None), (dv if ctx.needs_input_grad[2] else None), None


def distr_attention_autograd(q, k, v, *, group_size, block_m, fusion, exact_window, window_correction, causal,
                             attention_mask, scale, num_hash_bits, seed, query_valid, groups):
    """The Triton forward with the Triton backward (inputs already validated by ``distr_attention``).

    The attention mask must not require grad (it gets none); ``distr_attention`` sends such
    calls to the reference instead.
    """
    opts = dict(group_size=group_size, block_m=block_m, fusion=fusion, exact_window=exact_window,
                window_correction=window_correction, causal=causal,
                attention_mask=None if attention_mask is None else attention_mask.detach(), scale=scale,
                num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid, groups=groups)
    return DistrAttentionFunction.apply(q, k, v, opts)
