"""Version gates for torch and transformers, computed once. Each says why it exists and when it can go.

Checked against torch 2.11 / transformers 5.17 (the GPU image), torch 2.13 / transformers 5.25 (CI's newest on 2026-12-04) and
pyproject.toml's floors (``scripts/check_floors.sh``).
"""
from __future__ import annotations

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


# transformers < 5.17 finds a package's version only through ``importlib.metadata.packages_distributions()``, which
# on Python 3.10 maps import names from ``top_level.txt`` alone. gguf's wheels ship none, so its version read "N/A"
# and loading any .gguf raised InvalidVersion (measured: Python 3.10, transformers 5.0.0, gguf 0.19.0; 5.17 also
# tries the import name itself). Remove when the floor is >= 5.17 or Python 3.10 is dropped.
def make_gguf_findable() -> None:
    """Map the import name ``gguf`` to its distribution in transformers' table where that table lacks it."""
    import importlib.metadata

    from transformers.utils import import_utils

    table = getattr(import_utils, "PACKAGE_DISTRIBUTION_MAPPING", None)
    if not isinstance(table, dict) or "gguf" in table:
        return
    try:
        importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:  # not installed: transformers says so itself
        return
    table["gguf"] = ["gguf"]
