"""Model patcher: put DistrAttention into transformers models through the attention registry."""
from .registry import (
    AttentionReplacement,
    UnsupportedModelError,
    attention_modules,
    attention_modules_by_layer_index,
    get_replacement,
    is_patched,
    patch_model,
    patched,
    patched_modules,
    register_attention_replacement,
    supported_model_types,
    unpatch_model,
)

__all__ = [
    "AttentionReplacement",
    "UnsupportedModelError",
    "attention_modules",
    "attention_modules_by_layer_index",
    "get_replacement",
    "is_patched",
    "patch_model",
    "patched",
    "patched_modules",
    "register_attention_replacement",
    "supported_model_types",
    "unpatch_model",
]
