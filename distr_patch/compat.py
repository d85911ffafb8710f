"""Version gates for torch and transformers, computed once. Each says why it exists and when it can go.

Checked against torch 2.11 / transformers 5.17 (the GPU image), torch 2.13 / transformers 5.25 (CI's newest on 2026-12-04) and
pyproject.toml's floors (``scripts/check_floors.sh``).
"""
from __future__ import annotations

import torch
import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)

# The attention registry (``AttentionInterface``/``AttentionMaskInterface``) with the
# (module, q, k, v, mask, dropout, scaling, **kwargs) signature, sdpa_mask's boolean masks and
# ``set_attn_implementation`` are all in 5.x; older releases are not supported.
MIN_SUPPORTED_TRANSFORMERS_VERSION = Version("5.0")
IS_TRANSFORMERS_SUPPORTED = TRANSFORMERS_VERSION >= MIN_SUPPORTED_TRANSFORMERS_VERSION

# Which module calls the attention function moved between 5.x releases: in 5.17 Dinov2 calls it from
# ``Dinov2SelfAttention`` (inside ``Dinov2Attention``), in 5.24 from ``Dinov2Attention`` (ViT and DeiT
# have the 5.24 layout in both). The patcher therefore finds attention modules by what they are
# (``is_causal`` + ``scaling`` attributes), never by class name or path, and needs no gate for it.


def check_transformers() -> None:
    """Raise ImportError on a transformers release older than the supported floor."""
    if not IS_TRANSFORMERS_SUPPORTED:
        raise ImportError(f"distr_patch needs transformers >= {MIN_SUPPORTED_TRANSFORMERS_VERSION}, "
                          f"found {TRANSFORMERS_VERSION}")


# Activation checkpointing was renamed in 5.2x: ``activation_checkpointing_enable(activation_checkpointing_kwargs=)``,
# with ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=)`` left as a deprecated alias (warns, gone in
# v6; 5.17 has only the old name). Used by ``finetune``; remove when the floor has the new name.
def _has_activation_checkpointing() -> bool:
    from transformers import PreTrainedModel

    return hasattr(PreTrainedModel, "activation_checkpointing_enable")


HAS_ACTIVATION_CHECKPOINTING = _has_activation_checkpointing()


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation (gradient) checkpointing under either transformers name."""
    if HAS_ACTIVATION_CHECKPOINTING:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
