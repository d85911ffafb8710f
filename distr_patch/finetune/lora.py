"""LoRA adapters (PEFT) for the recipe: wrap a (patched) causal LM in rank-r adapters, merge them back after training.

DistrAttention replaces the attention call and LoRA the projections around it, so the two compose either way
round (``tests/patching/test_peft.py``). Merging keeps the patch (``config.distr_config`` and the "distr" switch),
so the merged model scores and saves as a plain patched model that ``from_pretrained(path,
attn_implementation="distr")`` reloads.
"""
from __future__ import annotations

import torch

from ..eval.config import ConfigError
from .config import FinetuneConfig

INSTALL = "pip install 'distr_patch[lora]' (PEFT >= 0.22, Python >= 3.11)"


def require_peft():
    """The ``peft`` module, or a ConfigError naming ``--lora-r`` and how to install it."""
    try:
        import peft
    except ImportError as e:
        raise ConfigError(f"--lora-r: LoRA needs PEFT, which is not installed: {INSTALL}") from e
    return peft


def target_modules(model, cfg: FinetuneConfig) -> list[str]:
    """The module names LoRA adapts: ``--lora-targets``, else PEFT's default for the model type. Each must name a
    module of ``model`` (its last dotted part, as PEFT matches it); a ConfigError says which does not."""
    peft = require_peft()
    targets = cfg.lora_targets
    if targets is None:
        model_type = getattr(model.config, "model_type", None)
        targets = peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if not targets:
            raise ConfigError(f"--lora-targets: PEFT has no default LoRA targets for model_type {model_type!r}; "
                              "name the modules to adapt, e.g. --lora-targets q_proj,v_proj")
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in leaves]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"--lora-targets: {', '.join(missing)} names no module of this model; its linear layers "
                          f"are: {', '.join(linear)}")
    return list(targets)


def alpha(cfg: FinetuneConfig) -> float:
    """LoRA's alpha: ``--lora-alpha``, else twice the rank."""
    return cfg.lora_alpha if cfg.lora_alpha is not None else 2 * cfg.lora_r


def with_adapters(model, cfg: FinetuneConfig):
    """``model`` inside a PEFT model with fresh rank-``lora_r`` adapters (the base weights frozen)."""
    peft = require_peft()
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=alpha(cfg), target_modules=target_modules(model, cfg),
                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def adapter_summary(peft_model, cfg: FinetuneConfig) -> dict:
    """What trained: the rank, alpha, targets and the trainable share of the parameters."""
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    config = next(iter(peft_model.peft_config.values()))
    return {"r": cfg.lora_r, "alpha": config.lora_alpha, "targets": sorted(config.target_modules),
            "trainable_params": trainable, "total_params": total}


def merged(peft_model):
    """The base model with the trained adapters merged into its weights (still patched)."""
    return peft_model.merge_and_unload()
