"""Integrations with other libraries: transformers (hf.py)."""
from .hf import ATTN_IMPLEMENTATION, distr_attention_forward, register

__all__ = ["ATTN_IMPLEMENTATION", "distr_attention_forward", "register"]
