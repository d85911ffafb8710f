"""Attention work of a candidate relative to exact attention, per layer: what calibration saves.

Analytic count (multiply-adds per head, causal self-attention over N tokens, head dim d), following the
method with its inner dimension reduced (the paper's count; the kernel's ``grouped_qk="reduced"`` path):
P = N(N+1)/2 attended pairs, P_b of them inside the exact band (|i - j| < W). The default kernel
(``grouped_qk="expanded"``, faster on the H200) computes the same scores as Q_eff Kᵀ at exact attention's
multiply-adds, so this count is the method's work, not a speed: use measured ``speeds`` for that.

    exact:      QKᵀ  P·d                                 + P·V  P·d
    candidate:  QKᵀ  (P - P_b)·d/G + P_b·(d + d/G)       + P·V  P·d      + K fusion  P·d/block_m

Bidirectional attention (ViT encoders, ``causal=False``) counts all P = N² pairs and a two-sided band.
Tiles meeting the band compute both products (hence d + d/G there); fusing K inside each query block costs
G loads per fused column, d per key per block of block_m rows. Grouping (LSH) and the correction's
band statistics are O(N·d) and left out. ``CostModel(speeds=...)`` replaces the count by measured
kernel times (candidate name -> time relative to exact attention; ``kernel_speed.measure_speeds`` takes them
at the model's attention shape on a GPU, the CLI's ``--speeds measure``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .candidates import Candidate, CandidateError


def causal_pairs(n: int) -> int:
    return n * (n + 1) // 2


def band_pairs(n: int, window: int) -> int:
    """Causal pairs with i - j < window (the exact band), for a window >= 0."""
    w = min(window, n)
    return w * n - w * (w - 1) // 2


def relative_work(cand: Candidate, seq_len: int, causal: bool = True) -> float:
    """Attention work of ``cand`` / exact attention's (the head dim cancels)."""
    if causal:
        p, pb = causal_pairs(seq_len), band_pairs(seq_len, cand.exact_window)
    else:  # |i - j| < W on both sides: twice the causal band less the diagonal counted twice
        p = seq_len * seq_len
        pb = 2 * band_pairs(seq_len, cand.exact_window) - (seq_len if cand.exact_window else 0)
    g = cand.group_size
    qk = (p - pb) / g + pb * (1 + 1 / g)
    fusion = p / cand.block_m
    return (qk + p + fusion) / (2 * p)


@dataclass
class CostModel:
    """Relative attention work per candidate at ``seq_len`` tokens: analytic, or measured ``speeds``."""
    seq_len: int
    speeds: dict[str, float] = field(default_factory=dict)  # candidate name -> time / exact time
    causal: bool = True  # False: bidirectional attention (ViT-family encoders)

    def __post_init__(self):
        if not isinstance(self.seq_len, int) or self.seq_len <= 0:
            raise ValueError(f"seq_len must be a positive int, got {self.seq_len!r}")
        for name, t in self.speeds.items():
            Candidate.parse(name)
            if not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
                raise CandidateError(f"speeds[{name!r}] must be a positive, finite time ratio, got {t!r}")

    @classmethod
    def load(cls, path: str | Path, seq_len: int, causal: bool = True) -> "CostModel":
        """A JSON file {candidate name: time relative to exact attention}."""
        return cls(seq_len, {str(k): float(v) for k, v in json.loads(Path(path).read_text()).items()}, causal)

    def work(self, cand: Candidate) -> float:
        if cand.name in self.speeds:
            return float(self.speeds[cand.name])
        return relative_work(cand, self.seq_len, self.causal)

    @property
    def source(self) -> str:
        return "measured" if self.speeds else "analytic"
