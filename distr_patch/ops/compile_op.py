"""DistrAttention as one opaque operator for ``torch.compile``: ``torch.ops.distr_patch.distr_attention``.

Traced as Python, the operator's host side (config tables, launch memo, TMA descriptors, data pointers) breaks or
derails Dynamo's graph. Registered as a custom operator, a compiled model holds one call per attention layer, whose
output shape Dynamo knows from the fake implementation below (``q``'s shape and dtype), and the call runs the
eager operator. So ``torch.compile(model, mode="reduce-overhead")`` can replay the whole forward from a CUDA graph,
without the operator's host time per layer.

``distr_attention`` routes here by itself while Dynamo traces a call on the kernels (``backend`` "triton" or "sdpa",
or "auto" on CUDA). Calls that need a gradient and run the fused kernel go to a differentiable pair instead:
``distr_attention_train`` (out and the row log-sum-exp) and ``distr_attention_grad`` (the Triton backward). The
backward computes the grouping again from q (one grouping launch; the same groups, weights to fp32 rounding) and forms
Q_eff itself, so the forward's outputs are two tensors of known shapes. Other calls with a gradient (the SDPA
engine, a mask that requires grad) keep the traced path; on the SDPA engine that path forms Q_eff by one more custom
operator with its own backward (``query_effective`` and ``query_effective_grad``) and leaves SDPA to Dynamo.
"""
# no ``from __future__ import annotations``: torch.library reads the annotations below as types (older torch
# releases do not evaluate string annotations)
from typing import Optional, Tuple

import torch

from . import configs
from .validate import check_group_values


@torch.library.custom_op("distr_patch::distr_attention", mutates_args=())
def distr_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       query_valid: Optional[torch.Tensor], groups: Optional[torch.Tensor], group_size: int,
                       block_m: int, fusion: str, exact_window: int, window_correction: float, causal: bool,
                       scale: Optional[float], num_hash_bits: int, seed: int, backend: str) -> torch.Tensor:
    """``distr_attention`` with every argument positional: [B, Hq, N, d] out (contiguous, q's dtype)."""
    from .distr_attn import distr_attention

    out = distr_attention(q, k, v, group_size=group_size, block_m=block_m, fusion=fusion,
                          exact_window=exact_window, window_correction=window_correction, causal=causal,
                          attention_mask=attention_mask, scale=scale, num_hash_bits=num_hash_bits, seed=seed,
                          query_valid=query_valid, groups=groups, backend=backend)
    return out.contiguous()  # the fake below promises a fresh contiguous tensor


@distr_attention_op.register_fake
def _(q, k, v, attention_mask, query_valid, groups, group_size, block_m, fusion, exact_window, window_correction,
      causal, scale, num_hash_bits, seed, backend):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.custom_op("distr_patch::distr_attention_train", mutates_args=())
def distr_attention_train_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             attention_mask: Optional[torch.Tensor], query_valid: Optional[torch.Tensor],
                             groups: Optional[torch.Tensor], group_size: int, block_m: int, fusion: str,
                             exact_window: int, window_correction: float, causal: bool, scale: Optional[float],
                             num_hash_bits: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused forward: (out [B, Hq, N, d] in q's dtype, lse [B, Hq, N] fp32, log2 units, ``_triton_forward``)."""
    from .distr_attn import _triton_forward

    if groups is not None:  # here, where the values can be read (a trace cannot)
        check_group_values(groups, q.shape[-1])
    out, lse, *_ = _triton_forward(q, k, v, group_size=group_size, block_m=block_m, fusion=fusion,
                                   exact_window=exact_window, window_correction=window_correction, causal=causal,
                                   attention_mask=attention_mask, scale=scale, num_hash_bits=num_hash_bits, seed=seed,
                                   query_valid=query_valid, groups=groups, return_lse=True)
    return out, lse


@distr_attention_train_op.register_fake
def _(q, k, v, attention_mask, query_valid, groups, group_size, block_m, fusion, exact_window, window_correction,
      causal, scale, num_hash_bits, seed):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(q.shape[:3], dtype=torch.float32, device=q.device))


@torch.library.custom_op("distr_patch::distr_attention_grad", mutates_args=())
def distr_attention_grad_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                            lse: torch.Tensor, attention_mask: Optional[torch.Tensor],
                            query_valid: Optional[torch.Tensor], groups: Optional[torch.Tensor], group_size: int,
                            block_m: int, fusion: str, exact_window: int, window_correction: float, causal: bool,
                            scale: Optional[float], num_hash_bits: int, seed: int
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``distr_attention_train`` for the output gradient ``do``: the grouping and the fusion weights
    computed again from q as the forward computed them, then ``distr_bwd._triton_backward``."""
    from .distr_bwd import _triton_backward
    from .grouping import fusion_weights
    from .grouping_triton import triton_grouping

    grp = wa = wb = None
    if group_size > 1 and groups is None:
        grp, wa, wb = triton_grouping(q, group_size=group_size, block_m=block_m, num_hash_bits=num_hash_bits,
                                      seed=seed, query_valid=query_valid, fusion=fusion)
    elif group_size > 1:
        grp = groups.to(torch.int32).contiguous()
        if fusion != "mean":
            wa, wb = fusion_weights(q, groups, group_size=group_size, block_m=block_m, fusion=fusion,
                                    query_valid=query_valid)
    dq, dk, dv = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, group_size=group_size, block_m=block_m,
                                  fusion=fusion, exact_window=exact_window, window_correction=window_correction,
                                  causal=causal, attention_mask=attention_mask, scale=scale)
    return dq, dk, dv


@distr_attention_grad_op.register_fake
def _(do, q, k, v, out, lse, attention_mask, query_valid, groups, group_size, block_m, fusion, exact_window,
      window_correction, causal, scale, num_hash_bits, seed):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _train_setup(ctx, inputs, output):
    q, k, v, attention_mask, query_valid, groups, *opts = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], attention_mask, query_valid, groups)
    ctx.opts = opts


def _train_backward(ctx, dout, _dlse):
    q, k, v, out, lse, attention_mask, query_valid, groups = ctx.saved_tensors
    dq, dk, dv = distr_attention_grad_op(dout, q, k, v, out, lse, attention_mask, query_valid, groups, *ctx.opts)
    return (dq, dk, dv) + (None,) * (3 + len(ctx.opts))


distr_attention_train_op.register_autograd(_train_backward, setup_context=_train_setup)


@torch.library.custom_op("distr_patch::query_effective", mutates_args=())
def query_effective_op(q: torch.Tensor, query_valid: Optional[torch.Tensor], groups: Optional[torch.Tensor],
                       group_size: int, block_m: int, fusion: str, num_hash_bits: int, seed: int) -> torch.Tensor:
    """The SDPA engine's Q_eff [B, Hq, N, d] (contiguous, q's dtype; G > 1) by the kernels' launches
    (``sdpa_engine.kernel_grouping``). Its backward, ``query_effective_grad``, groups q again."""
    from .regroup import regroup
    from .sdpa_engine import kernel_grouping

    if groups is not None:
        check_group_values(groups, q.shape[-1])
    qe, grp, inv, wa, wb = kernel_grouping(q, group_size=group_size, block_m=block_m, fusion=fusion,
                                           num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid,
                                           groups=groups, form_qeff=True)
    if qe is None:
        qe = regroup(q, grp, wa, wb, group_size=group_size, block_m=block_m, out_dtype=q.dtype, inv=inv,
                     mean_weights=(1.0 / group_size, 1.0) if wa is None else None)
    return qe.contiguous()


@query_effective_op.register_fake
def _(q, query_valid, groups, group_size, block_m, fusion, num_hash_bits, seed):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.custom_op("distr_patch::query_effective_grad", mutates_args=())
def query_effective_grad_op(dqe: torch.Tensor, q: torch.Tensor, query_valid: Optional[torch.Tensor],
                            groups: Optional[torch.Tensor], group_size: int, block_m: int, fusion: str,
                            num_hash_bits: int, seed: int) -> torch.Tensor:
    """dq [B, Hq, N, d] of ``query_effective`` for dqe: the grouping and weights formed again from q (the same groups,
    weights to fp32 rounding), then the adjoint regroup (``sdpa_engine._adjoint_regroup``)."""
    from .sdpa_engine import _adjoint_regroup, kernel_grouping

    _, grp, inv, wa, wb = kernel_grouping(q, group_size=group_size, block_m=block_m, fusion=fusion,
                                          num_hash_bits=num_hash_bits, seed=seed, query_valid=query_valid,
                                          groups=groups, form_qeff=False)
    return _adjoint_regroup(dqe.contiguous(), grp, inv, wa, wb, group_size, block_m)


@query_effective_grad_op.register_fake
def _(dqe, q, query_valid, groups, group_size, block_m, fusion, num_hash_bits, seed):
    return torch.empty(q.shape, dtype=dqe.dtype, device=q.device)


def _qeff_setup(ctx, inputs, output):
    q, query_valid, groups, *opts = inputs
    ctx.save_for_backward(q, query_valid, groups)
    ctx.opts = opts


def _qeff_backward(ctx, dqe):
    q, query_valid, groups = ctx.saved_tensors
    return (query_effective_grad_op(dqe, q, query_valid, groups, *ctx.opts),) + (None,) * (2 + len(ctx.opts))


query_effective_op.register_autograd(_qeff_backward, setup_context=_qeff_setup)


def runs_as_custom_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, attention_mask=None, *,
                      group_size: int = 2, exact_window: int = 0, causal: bool = False) -> Optional[str]:
    """Which custom operator a ``distr_attention`` call goes to while Dynamo traces it: "forward" (no gradient, on
    the kernels: not the PyTorch reference, which Dynamo traces as it is), "train" (a gradient, on the fused kernel,
    a mask that needs none) or None (traced as it is). The call's settings tell where backend="auto" runs it."""
    if not torch.compiler.is_compiling() or not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None  # (not tensors: validation names them)
    kernels = backend in ("triton", "sdpa") or (backend == "auto" and q.is_cuda)
    mask_grad = isinstance(attention_mask, torch.Tensor) and attention_mask.requires_grad
    if not (torch.is_grad_enabled() and (mask_grad or any(t.requires_grad for t in (q, k, v)))):
        return "forward" if kernels else None
    # calls that backend="auto" sends to the SDPA engine (DISTR_AUTO_SDPA=1) stay traced, as do
    # calls whose mask needs a gradient (the reference's: the kernels' backward gives the mask none)
    fused = backend == "triton" or (backend == "auto" and q.is_cuda and not configs.auto_runs_sdpa(
        group_size, exact_window, attention_mask, causal, q.shape[2], k.shape[2]))
    return "train" if fused and not mask_grad else None
