"""Choose per-layer settings: the most attention work saved for a predicted loss, as a greedy Pareto path.

Each layer has options: exact (work 1, loss 0) and each candidate (its relative work, its predicted loss).
Per layer, the options on the lower convex hull of (work, loss) form a chain of moves from exact toward
cheaper settings, each with an efficiency (work saved per unit of loss), non-increasing along the chain.
Sorting every layer's moves by efficiency gives the greedy path: point k applies the k best moves, so the
path runs from all-exact to the cheapest settings, with loss (summed over layers, an additive model) and
saving both growing. ``point_within(path, loss)`` is the furthest point whose predicted loss fits.

Per head (``calibrate(per_head=True)``) the units are (layer, query head) instead of layers, each weighted by
its share of the layer's work (1/heads); ``config_for(..., heads=...)`` turns such a choice into
``layer_overrides`` plus ``head_overrides``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import DistrConfig
from .candidates import Candidate


@dataclass(frozen=True)
class Move:
    layer: int
    to: int | None   # candidate index (None: exact)
    saving: float    # weighted work saved by the move (fraction of the model's attention work)
    loss: float      # added predicted loss

    @property
    def efficiency(self) -> float:
        return math.inf if self.loss <= 0 else self.saving / self.loss


@dataclass(frozen=True)
class PathPoint:
    choice: tuple            # per unit (layer, or (layer, head) layer-major): candidate index or None (exact)
    loss: float              # predicted loss (sum over units)
    saving: float            # fraction of the model's attention work saved (0..1)


def layer_chain(work: list[float], loss: list[float]) -> list[tuple[int, float, float]]:
    """The hull chain of one layer from exact: [(candidate index, work, loss)], work decreasing."""
    chain, cur_w, cur_l = [], 1.0, 0.0
    while True:
        best, best_key = None, None
        for j, (w, l) in enumerate(zip(work, loss)):
            if not w < cur_w - 1e-12 or not math.isfinite(l):
                continue
            dl = l - cur_l
            eff = math.inf if dl <= 0 else (cur_w - w) / dl
            key = (eff, cur_w - w)  # most efficient; among free moves, the largest saving
            if best_key is None or key > best_key:
                best, best_key = j, key
        if best is None:
            return chain
        cur_w, cur_l = work[best], loss[best]
        chain.append((best, work[best], loss[best]))


def greedy_path(work: list[float], loss: list[list[float]], weights: list[float] | None = None) -> list[PathPoint]:
    """The greedy path from all-exact; ``work[j]`` per candidate, ``loss[layer][j]``, ``weights`` per layer
    (the layer's share of the exact attention work; default equal)."""
    n = len(loss)
    weights = [1.0] * n if weights is None else list(weights)
    total = sum(weights)
    moves: list[tuple[float, int, int, Move]] = []
    for layer in range(n):
        prev_w, prev_l = 1.0, 0.0
        for rank, (j, w, l) in enumerate(layer_chain(work, loss[layer])):
            mv = Move(layer, j, weights[layer] * (prev_w - w) / total, l - prev_l)
            moves.append((mv.efficiency, -rank, layer, mv))
            prev_w, prev_l = w, l
    # Efficiency descending; ties keep each layer's chain order (a chain's efficiencies never increase: a
    # free move, loss <= 0, can only be a chain's first, since it would beat any costlier move from exact).
    moves.sort(key=lambda t: (-t[0], -t[1], t[2]))
    choice = [None] * n
    points = [PathPoint(tuple(choice), 0.0, 0.0)]
    cur_loss = cur_save = 0.0
    for _, _, _, mv in moves:
        choice[mv.layer] = mv.to
        cur_loss += mv.loss
        cur_save += mv.saving
        points.append(PathPoint(tuple(choice), cur_loss, cur_save))
    return points


def all_grouped_point(work: list[float], loss: list[list[float]], eligible: list[bool],
                      weights: list[float] | None = None) -> PathPoint | None:
    """Every unit grouped, each on its lowest-loss ``eligible`` candidate that saves work (work < 1; ties:
    the lower index): the most accurate such config the proxy knows. None if no candidate is eligible, or if
    some unit has no eligible candidate with a finite predicted loss (a NaN loss predicts nothing)."""
    cands = [j for j, (w, ok) in enumerate(zip(work, eligible)) if ok and w < 1.0]
    if not cands:
        return None
    n = len(loss)
    weights = [1.0] * n if weights is None else list(weights)
    total = sum(weights)
    choice = []
    for u in range(n):
        finite = [j for j in cands if math.isfinite(loss[u][j])]
        if not finite:
            return None
        choice.append(min(finite, key=lambda j: (loss[u][j], j)))
    choice = tuple(choice)
    return PathPoint(choice, sum(loss[u][j] for u, j in enumerate(choice)),
                     sum(weights[u] * (1.0 - work[j]) for u, j in enumerate(choice)) / total)


def point_within(path: list[PathPoint], max_loss: float) -> int:
    """Index of the furthest path point whose predicted loss is <= ``max_loss`` (0: all exact)."""
    best = 0
    for i, p in enumerate(path):
        if p.loss <= max_loss + 1e-15:
            best = i
    return best


def split_units(choice, heads: list[int] | None) -> list[tuple]:
    """A choice per unit -> per layer: the layer's entry (per layer), or the tuple of its heads' (per head)."""
    if heads is None:
        return list(choice)
    out, u = [], 0
    for h in heads:
        out.append(tuple(choice[u:u + h]))
        u += h
    if u != len(choice):
        raise ValueError(f"a per-head choice of {len(choice)} units does not match {sum(heads)} heads")
    return out


def config_for(choice, candidates: list[Candidate], base: DistrConfig, heads: list[int] | None = None) -> DistrConfig:
    """The DistrConfig of a choice: grouped layers in ``layer_overrides``, the rest in ``exact_layers``.

    ``heads`` (query heads per layer): the choice is per (layer, head), layer-major. A layer whose heads all
    take one candidate is a plain layer override; otherwise the layer takes its most common grouped candidate
    (ties: the lowest index) and the other heads get ``head_overrides`` (their candidate's settings, or
    {"group_size": 1} for exact heads)."""
    overrides: dict[int, dict] = {}
    head_overrides: dict[int, dict[int, dict]] = {}
    exact = []
    for i, per in enumerate(split_units(choice, heads)):
        per = per if isinstance(per, tuple) else (per,)
        grouped = [j for j in per if j is not None]
        if not grouped:
            exact.append(i)
            continue
        layer_j = max(sorted(set(grouped)), key=grouped.count)
        overrides[i] = candidates[layer_j].settings()
        others = {h: {"group_size": 1} if j is None else candidates[j].settings()
                  for h, j in enumerate(per) if j != layer_j}
        if others:
            head_overrides[i] = others
    return base.replace(exact_layers=tuple(exact), exact_first=0, exact_last=0, layer_overrides=overrides,
                        head_overrides=head_overrides)
