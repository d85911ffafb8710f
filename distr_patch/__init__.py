"""distr_patch: plug-in DistrAttention for pretrained HuggingFace models.

Importing the package registers "distr" with transformers' attention registries, so
``attn_implementation="distr"`` works in ``from_pretrained``/``from_config``/``set_attn_implementation``.
"""
from .config import DistrConfig
from .integrations.hf import register as _register_with_transformers
from .ops import compute_groups, distr_attention, exact_attention, reference_distr_attention
from .patching import patch_model, patched, register_attention_replacement, supported_model_types, unpatch_model

__version__ = "0.1.0"

_register_with_transformers()

__all__ = [
    "distr_attention",
    "compute_groups",
    "reference_distr_attention",
    "exact_attention",
    "DistrConfig",
    "patch_model",
    "unpatch_model",
    "patched",
    "register_attention_replacement",
    "supported_model_types",
    "__version__",
]
