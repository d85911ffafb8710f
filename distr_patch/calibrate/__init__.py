"""Calibration: per-layer (or, with ``per_head=True``, per-head) DistrAttention settings that save the most
attention work within a loss budget."""
from .api import (AllGrouped, BudgetError, Choice, Sensitivity, all_grouped, calibrate, calibrate_full, choose, measure,
                  parse_budget)
from .objectives import Fidelity, Objective, Perplexity
from .candidates import DEFAULT_GRID, FAST_GRID, Candidate, CandidateError, candidate_grid, parse_candidates
from .cost import CostModel, relative_work
from .kernel_speed import AttentionShape, attention_shape, measure_speeds

__all__ = [
    "AllGrouped",
    "AttentionShape",
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
    "attention_shape",
    "calibrate",
    "calibrate_full",
    "candidate_grid",
    "choose",
    "measure",
    "measure_speeds",
    "parse_budget",
    "parse_candidates",
    "relative_work",
]
