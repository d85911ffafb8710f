"""Launch configuration of the DistrAttention forward kernel, in one place.

``BLOCK_M`` is the query tile of one program and equals the grouping ``block_m`` (one
column grouping per program; exact attention, G=1, uses 128). ``BLOCK_N`` is the key tile of the inner loop.
The GPU table was chosen from the sweep in ``scripts/bench_attention.py`` (see
docs/benchmarks.md); the interpreter uses small tiles so CPU tests stay fast.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FwdConfig:
    block_m: int  # query rows per program (= the grouping block_m when G > 1)
    block_n: int  # keys per inner-loop tile
    num_warps: int
    num_stages: int
    k_layout: str  # "transposed": grouped key loads read a [d, M] copy of K; "natural": read K as is


# Grouped key loads gather K's columns in the query block's order. With K's natural
# [M, d] layout that is a strided, unvectorised load; a transposed copy made once per
# call turns it into contiguous row loads. The bench measures both (docs/benchmarks.md).
DEFAULT_K_LAYOUT = os.environ.get("DISTR_K_LAYOUT", "transposed")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fwd_config(head_dim: int, group_size: int, grouping_block_m: int, *, interpret: bool | None = None,
               k_layout: str | None = None) -> FwdConfig:
    """Tile sizes for one call; see the module docstring."""
    interpret = interpreting() if interpret is None else interpret
    layout = k_layout or DEFAULT_K_LAYOUT
    block_m = 128 if group_size == 1 else grouping_block_m
    if interpret:
        return FwdConfig(block_m=block_m, block_n=32, num_warps=4, num_stages=1, k_layout=layout)
    if block_m <= 32:
        return FwdConfig(block_m, 64, num_warps=2 if head_dim <= 64 else 4, num_stages=3, k_layout=layout)
    if block_m == 64:
        return FwdConfig(block_m, 64, num_warps=4, num_stages=3, k_layout=layout)
    if head_dim <= 64:
        return FwdConfig(block_m, 64, num_warps=4, num_stages=3, k_layout=layout)
    if head_dim <= 128:
        return FwdConfig(block_m, 64, num_warps=8, num_stages=3, k_layout=layout)
    return FwdConfig(block_m, 32, num_warps=8, num_stages=2, k_layout=layout)
