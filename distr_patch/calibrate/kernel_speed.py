"""Measured kernel speed per candidate: the cost a ``CostModel`` takes instead of the analytic count.

Issue 6 picks the settings that save the most attention work "estimated from each setting's measured kernel
speed". ``measure_speeds`` times the attention operator alone at the model's attention shape ([batch, heads,
seq_len, head_dim] queries, its KV heads, dtype and device) for each candidate and for exact attention
(SDPA), and returns {candidate name: candidate time / exact time}. A ratio >= 1 means the candidate saves
nothing there, and the greedy choice never takes it.

    speeds = measure_speeds(candidates, attention_shape(model), seq_len=1024)
    cost = CostModel(1024, speeds)

On the CPU DistrAttention runs its PyTorch reference, so CPU ratios say nothing about the kernel; the CLI
(``--speeds measure``) asks for a CUDA model, the function itself runs anywhere (tests use the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..eval.timing import measure as time_call
from ..ops import distr_attention
from .candidates import Candidate


@dataclass(frozen=True)
class AttentionShape:
    """One attention call of a model: query heads, KV heads, head dim, dtype and device."""
    heads: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device


def attention_shape(model) -> AttentionShape:
    """The attention shape of a transformers LM (Llama family) or ViT-family encoder, from its config."""
    c = model.config
    c = getattr(c, "text_config", None) or c
    heads = getattr(c, "num_attention_heads", None)
    if not isinstance(heads, int) or heads <= 0:
        raise ValueError(f"model config {type(c).__name__} has no num_attention_heads; cannot time its attention")
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    p = next(model.parameters())
    return AttentionShape(heads, kv_heads, head_dim, p.dtype, p.device)


def measure_speeds(candidates: Iterable[Candidate], shape: AttentionShape, *, seq_len: int, causal: bool = True,
                   batch: int = 1, warmup: int = 3, repeats: int = 10, seed: int = 0,
                   progress: bool = False) -> dict[str, float]:
    """{candidate name: p50 time of ``distr_attention`` / p50 time of exact SDPA} at ``shape``.

    Inputs are seeded random normal q [batch, heads, seq_len, head_dim] and k, v [batch, kv_heads, seq_len,
    head_dim]; each time is the median of ``repeats`` calls after ``warmup`` (CUDA events on the GPU). The
    DistrAttention times include its grouping (hash, sort, fusion weights).
    """
    from tqdm.auto import tqdm

    cands = list(candidates)
    for name, value in (("seq_len", seq_len), ("batch", batch), ("repeats", repeats)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, shape.heads, seq_len, shape.head_dim, generator=g)
    k, v = (torch.randn(batch, shape.kv_heads, seq_len, shape.head_dim, generator=g) for _ in range(2))
    q, k, v = (t.to(device=shape.device, dtype=shape.dtype) for t in (q, k, v))
    rep = shape.heads // shape.kv_heads
    k_rep, v_rep = (t.repeat_interleave(rep, dim=1) if rep > 1 else t for t in (k, v))

    def ms(fn):
        with torch.no_grad():
            return time_call(fn, shape.device, warmup=warmup, repeats=repeats)["p50_ms"]

    exact = ms(lambda: F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=causal))
    speeds = {}
    for cand in tqdm(cands, desc="kernel speed", disable=not progress, leave=False):
        t = ms(lambda: distr_attention(q, k, v, causal=causal, **cand.settings()))
        speeds[cand.name] = t / exact
    return speeds
