"""Fine-tune a (patched) model with the HF ``Trainer`` and save it so that it reloads with its settings.

The Trainer runs on accelerate, so ``accelerate launch --multi_gpu ... -m distr_patch finetune ...`` trains
data-parallel with no change here. DistrAttention's backward is the Triton kernel's on CUDA (``ops/distr_bwd.py``)
and the PyTorch reference's autograd on the CPU. ``model`` may be a PEFT model (LoRA, ``finetune/lora.py``).

A patched model keeps its DistrConfig in ``model.config.distr_config`` (``patch_model`` puts it there), so
``save_pretrained`` writes it into ``config.json`` and ``from_pretrained(path, attn_implementation="distr")``
runs the same settings again (``load_checkpoint``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compat import enable_activation_checkpointing
from ..eval.timing import quantiles
from .config import FinetuneConfig


@dataclass
class TrainStats:
    steps: int
    samples: int
    tokens: int  # tokens (lm) or images (vit) the optimizer steps consumed
    unit: str  # "tokens" or "images"
    wall_s: float  # Trainer's train_runtime
    step_ms: dict  # p20/p50/p80 of the optimizer steps after the first (warm-up)
    throughput: float  # unit per second at the p50 step time
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss) as logged

    def to_dict(self) -> dict:
        return {"steps": self.steps, "samples": self.samples, self.unit: self.tokens, "unit": self.unit,
                "wall_s": self.wall_s, "step_ms": self.step_ms, "throughput": self.throughput,
                "throughput_unit": f"{self.unit}/s", "losses": [list(x) for x in self.losses]}


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step (all its micro-batches, forward + backward + update)."""

        def __init__(self):
            self.samples_ms: list[float] = []
            self._t0 = None

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available() and args.device.type == "cuda":
                torch.cuda.synchronize()
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available() and args.device.type == "cuda":
                torch.cuda.synchronize()
            if self._t0 is not None:
                self.samples_ms.append((time.perf_counter() - self._t0) * 1e3)

    return StepTimer()


_ABSENT = object()  # (a config without use_cache: vision models)


def training_arguments(cfg: FinetuneConfig, output_dir: Path):
    """``TrainingArguments`` from the run's options (no hub, no reporting, no intermediate checkpoints)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir), learning_rate=cfg.learning_rate, max_steps=cfg.max_steps if cfg.max_steps else -1,
        num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler, max_grad_norm=cfg.max_grad_norm, bf16=cfg.bf16,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        seed=cfg.seed, data_seed=cfg.seed, save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=(cfg.device or "").startswith("cpu"), dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=False,
    )


def plain_float_weights(model):
    """Make a GGUF-loaded model trainable: transformers dequantises GGUF files to float weights but keeps the
    GGUF quantizer attached and flags the model quantized, which the Trainer refuses to fine-tune. The weights
    are ordinary float tensors, so drop the flag and the quantization config (also kept out of the saved
    ``config.json``, so the checkpoint reloads as a plain model). Other quantizations are left alone."""
    from transformers import PreTrainedModel

    quantizer = getattr(model, "hf_quantizer", None)
    method = str(getattr(getattr(quantizer, "quantization_config", None), "quant_method", "")).lower()
    if quantizer is None or "gguf" not in method:
        return model
    if not all(p.is_floating_point() for p in model.parameters()):
        raise ValueError("this GGUF model kept quantized weights; load it with a float --dtype to fine-tune")
    quantizer.remove_quantization_config(model)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            module.config._is_quantized = False
    return model


def finetune(model, train_dataset, cfg: FinetuneConfig, *, output_dir: Path, units_per_sample: int,
             unit: str = "tokens"):
    """Train ``model`` in place on ``train_dataset``; returns (the Trainer, TrainStats).

    ``units_per_sample`` converts samples to the throughput unit (``seq_len`` tokens, or 1 image).
    """
    from transformers import Trainer, default_data_collator

    # the Trainer sets config.use_cache to TrainingArguments.use_cache (False) in transformers 5: the checkpoint
    # keeps the model's own value, so a reloaded model caches as it did before training
    use_cache = model.config.__dict__.get("use_cache", _ABSENT)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's (LoRA) base
    if cfg.gradient_checkpointing:  # on the model, not through TrainingArguments, whose flag was renamed (compat)
        model.config.use_cache = False
        enable_activation_checkpointing(base)
    plain_float_weights(base)
    timer = _step_timer()
    trainer = Trainer(model=model, args=training_arguments(cfg, output_dir), train_dataset=train_dataset,
                      data_collator=default_data_collator, callbacks=[timer])
    model.train()
    out = trainer.train()
    model.eval()
    if use_cache is _ABSENT:
        model.config.__dict__.pop("use_cache", None)
    else:
        model.config.use_cache = use_cache
    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    steps = trainer.state.global_step
    timed = timer.samples_ms[1:] or timer.samples_ms
    step_ms = quantiles(timed)
    losses = [(h["step"], float(h["loss"])) for h in trainer.state.log_history if "loss" in h]
    stats = TrainStats(steps=steps, samples=steps * per_step, tokens=steps * per_step * units_per_sample, unit=unit,
                       wall_s=float(out.metrics.get("train_runtime", sum(timer.samples_ms) / 1e3)), step_ms=step_ms,
                       throughput=1e3 * per_step * units_per_sample / step_ms["p50_ms"], losses=losses)
    return trainer, stats


def save_checkpoint(trainer, processor, path: Path, model=None) -> Path:
    """``save_pretrained`` of the trained model (its ``config.distr_config`` included) and its processor.

    ``model``: save this one instead of the Trainer's (the base model with LoRA's adapters merged into it)."""
    path = Path(path)
    if model is None:
        trainer.save_model(str(path))  # main process only under accelerate; unwraps DDP
    elif trainer.is_world_process_zero():
        model.save_pretrained(str(path))
    if processor is not None and trainer.is_world_process_zero():
        processor.save_pretrained(str(path))
    return path


def load_checkpoint(path, kind: str = "lm", **kwargs):
    """Reload a checkpoint with ``attn_implementation="distr"`` when it was saved with DistrAttention settings.

    A checkpoint of an exact-attention run (no ``distr_config``) loads with the model's default attention.
    """
    import json

    import distr_patch  # noqa: F401  registers "distr" with transformers
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification

    if kind not in ("lm", "vit"):
        raise ValueError(f"load_checkpoint: kind must be 'lm' or 'vit', got {kind!r}")
    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForImageClassification
    config = json.loads((Path(path) / "config.json").read_text())
    if config.get("distr_config") is not None:
        kwargs.setdefault("attn_implementation", "distr")
    model = cls.from_pretrained(str(path), **kwargs).eval()
    if kind != "lm" and config.get("distr_config") is not None:
        from ..patching import patch_model

        patch_model(model)  # vision attention modules carry no layer index: attach per-layer settings
    return model
