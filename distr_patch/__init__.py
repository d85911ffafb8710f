"""distr_patch: plug-in DistrAttention for pretrained HuggingFace models."""
from .ops import compute_groups, distr_attention, exact_attention, reference_distr_attention

__version__ = "0.1.0"

__all__ = [
    "distr_attention",
    "compute_groups",
    "reference_distr_attention",
    "exact_attention",
    "__version__",
]
