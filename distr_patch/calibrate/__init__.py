"""Calibration: per-layer (or, with ``per_head=True``, per-head) DistrAttention settings that save the most
attention work within a loss budget."""
from .api import (AllGrouped, BudgetError, Choice, Sensitivity, all_grouped, calibrate, calibrate_full, choose, measure,
                  parse_budget)
from .objectives import Fidelity, Objective, Perplexity
from .candidates import DEFAULT_GRID, FAST_GRID, Candidate, CandidateError, candidate_grid, parse_candidates
from .cost import CostModel, relative_work

__all__ = [
    "AllGrouped",
    "BudgetError",
    "Candidate",
    "CandidateError",
    "Choice",
    "CostModel",
    "DEFAULT_GRID",
    "FAST_GRID",
    "Fidelity",
    "Objective",
    "Perplexity",
    "Sensitivity",
    "all_grouped",
    "calibrate",
    "calibrate_full",
    "candidate_grid",
    "choose",
    "measure",
    "parse_budget",
    "parse_candidates",
    "relative_work",
]
