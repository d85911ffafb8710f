"""DistrAttention as one opaque operator for ``torch.compile``: ``torch.ops.distr_patch.distr_attention``.

Traced as Python, the operator's host side (config tables, launch memo, TMA descriptors, data pointers) breaks or
derails Dynamo's graph. Registered as a custom operator, a compiled model holds one call per attention layer, whose
output shape Dynamo knows from the fake implementation below (``q``'s shape and dtype), and the call runs the
eager operator. So ``torch.compile(model, mode="reduce-overhead")`` can replay the whole forward from a CUDA graph,
without the operator's host time per layer.

``distr_attention`` routes here by itself while Dynamo traces a call that needs no gradient and runs on the kernels
(``backend`` "triton" or "sdpa", or "auto" on CUDA); calls that need a gradient keep the traced path.
"""
from __future__ import annotations

from typing import Optional

import torch


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


def runs_as_custom_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> bool:
    """Whether a ``distr_attention`` call goes to the custom operator: Dynamo is tracing it, it needs no gradient,
    and it runs on the kernels (not the PyTorch reference, which Dynamo traces as it is)."""
    if not torch.compiler.is_compiling() or not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return False  # (not tensors: validation names them)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return False
    return backend in ("triton", "sdpa") or (backend == "auto" and q.is_cuda)
