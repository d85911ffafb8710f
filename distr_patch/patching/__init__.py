"""Model patcher: put DistrAttention into transformers models through the attention registry."""
from .registry import (
    AttentionReplacement,
    UnsupportedModelError,
    attention_modules,
    get_replacement,
    is_patched,
    patch_model,
    patched,
    register_attention_replacement,
    supported_model_types,
    unpatch_model,
)

__all__ = [
    "AttentionReplacement",
    "UnsupportedModelError",
    "attention_modules",
    "get_replacement",
    "is_patched",
    "patch_model",
    "patched",
    "register_attention_replacement",
    "supported_model_types",
    "unpatch_model",
]
