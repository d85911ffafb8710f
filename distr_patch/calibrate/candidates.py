"""Candidate settings a layer may take: one grouped setting each, as data (a grid, or names).

A candidate is the part of a layer's DistrConfig that calibration chooses: G, fusion, block_m, the exact
window and its correction. Its ``name`` is also how it is written on the command line and in results:
``G2-rank1-b128-w128-c0.5``. ``candidate_grid`` expands a grid (the issue's default below), dropping
corrections for a zero window (the correction is computed from the band, so it is a no-op there).
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..config import DistrConfig


class CandidateError(ValueError):
    """A candidate name, grid key or value is not valid; the message says which."""


# The grid: 2 x 2 x 3 x (1 + 3 x 4) = 156 candidates per layer.
DEFAULT_GRID: dict[str, tuple] = {
    "group_size": (2, 4),
    "fusion": ("mean", "rank1"),
    "block_m": (32, 64, 128),
    "exact_window": (0, 64, 128, 256),
    "window_correction": (0.0, 0.25, 0.5, 1.0),
}
# A documented reduced grid (12 per layer) for a CPU run in minutes: rank-1 at both G, the smallest and the
# largest block, no window / a 128-token window with and without correction 0.5.
FAST_GRID: dict[str, tuple] = {
    "group_size": (2, 4),
    "fusion": ("rank1",),
    "block_m": (32, 128),
    "exact_window": (0, 128),
    "window_correction": (0.0, 0.5),
}
GRIDS = {"default": DEFAULT_GRID, "fast": FAST_GRID}
GRID_KEYS = tuple(DEFAULT_GRID)

_NAME = re.compile(r"^G(\d+)-(\w+?)-b(\d+)-w(\d+)-c([0-9.]+)$")


@dataclass(frozen=True, order=True)
class Candidate:
    group_size: int
    fusion: str
    block_m: int
    exact_window: int = 0
    window_correction: float = 0.0

    def __post_init__(self):
        try:  # the same checks as DistrConfig, naming the candidate
            DistrConfig(**self.settings())
        except (TypeError, ValueError) as e:
            raise CandidateError(f"candidate {self.name}: {e}") from None
        if self.group_size == 1:
            raise CandidateError(f"candidate {self.name}: G=1 is exact attention; every layer already has "
                                 "'exact' as an option")

    @property
    def name(self) -> str:
        return (f"G{self.group_size}-{self.fusion}-b{self.block_m}-w{self.exact_window}"
                f"-c{self.window_correction:g}")

    def settings(self) -> dict[str, Any]:
        """The ``layer_overrides`` entry of a layer that takes this candidate."""
        return dict(group_size=self.group_size, block_m=self.block_m, fusion=self.fusion,
                    exact_window=self.exact_window, window_correction=float(self.window_correction))

    @classmethod
    def parse(cls, name: str) -> "Candidate":
        """``G2-rank1-b128-w128-c0.5`` -> Candidate."""
        m = _NAME.match(name.strip())
        if not m:
            raise CandidateError(f"unknown candidate {name!r}; write it as G<G>-<fusion>-b<block_m>-w<window>-c<corr>, "
                                 "e.g. G2-rank1-b128-w128-c0.5")
        return cls(int(m[1]), m[2], int(m[3]), int(m[4]), float(m[5]))


def candidate_grid(grid: dict[str, Iterable] | None = None) -> list[Candidate]:
    """Expand a grid {field: values} (missing fields take DEFAULT_GRID's values); zero windows get no correction."""
    grid = dict(grid or DEFAULT_GRID)
    for key in grid:
        if key not in GRID_KEYS:
            near = difflib.get_close_matches(str(key), GRID_KEYS, n=1)
            raise CandidateError(f"unknown candidate field {key!r}" + (f"; did you mean {near[0]!r}?" if near else
                                                                       f"; fields: {', '.join(GRID_KEYS)}"))
    values = {k: tuple(grid.get(k, DEFAULT_GRID[k])) for k in GRID_KEYS}
    for k, v in values.items():
        if not v:
            raise CandidateError(f"candidate field {k!r} has no values")
    out: list[Candidate] = []
    for g, f, b, w, c in itertools.product(*values.values()):
        cand = Candidate(g, f, b, w, 0.0 if w == 0 else float(c))
        if cand not in out:
            out.append(cand)
    return out


def parse_candidates(spec) -> list[Candidate]:
    """Candidates from: None (the default grid), a grid name ('default', 'fast'), a grid dict, a list of
    names / Candidates / settings dicts, or a comma-separated string of names (grid names among them
    stand for their grids: 'fast,G2-mean-b128-w0-c0')."""
    if spec is None:
        return candidate_grid(DEFAULT_GRID)
    if isinstance(spec, str):
        if spec in GRIDS:
            return candidate_grid(GRIDS[spec])
        spec = [s for s in spec.split(",") if s.strip()]
        if not spec:
            raise CandidateError("no candidates given")
    if isinstance(spec, dict):
        return candidate_grid(spec)
    out: list[Candidate] = []
    for item in spec:
        if isinstance(item, str) and item.strip() in GRIDS:  # a grid name among names: its candidates
            out += [c for c in candidate_grid(GRIDS[item.strip()]) if c not in out]
            continue
        if isinstance(item, Candidate):
            cand = item
        elif isinstance(item, str):
            cand = Candidate.parse(item)
        elif isinstance(item, dict):
            bad = [k for k in item if k not in GRID_KEYS]
            if bad:
                near = difflib.get_close_matches(str(bad[0]), GRID_KEYS, n=1)
                raise CandidateError(f"unknown candidate field {bad[0]!r}" + (f"; did you mean {near[0]!r}?"
                                                                              if near else ""))
            cand = Candidate(**item)
        else:
            raise CandidateError(f"a candidate must be a name, a dict or a Candidate, got {type(item).__name__}")
        if cand not in out:
            out.append(cand)
    if not out:
        raise CandidateError("no candidates given")
    return out
