"""DistrAttention operator: public function, grouping, PyTorch reference, Triton kernel."""
from .distr_attn import distr_attention
from . import distr_autograd as _distr_autograd  # noqa: F401  the backward's kernels, at import like the others
from .grouping import compute_groups, fusion_weights, hash_projections
from .env import warn_unknown_switches
from .reference import exact_attention, reference_distr_attention

__all__ = [
    "distr_attention",
    "compute_groups",
    "fusion_weights",
    "hash_projections",
    "reference_distr_attention",
    "exact_attention",
]

warn_unknown_switches()  # a misspelt or retired DISTR_* switch: said once, at import
