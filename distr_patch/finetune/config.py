"""One fine-tuning run's settings: a dataclass merged from defaults < YAML (``--config``) < flags.

The merge and the YAML reading are the harness's (``RunConfig.merge``/``_read_yaml``, borrowed below: they
only need ``field_names`` and ``_configure``), so unknown keys get the same near-match hints and the same
``ConfigError`` naming the flag. Every field is a flag of the same name (``learning_rate`` <->
``--learning-rate``) and a YAML key (either spelling).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..eval.config import (DTYPES, SETTINGS, VALID_GROUP_SIZES, ConfigError, RunConfig, check_distr_configs,
                           check_output_dir, flag)

TASKS = ("lm", "vit")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class FinetuneConfig:
    # the model and what it is fine-tuned for
    model: str | None = None
    task: str = "lm"  # "lm": causal-LM on text; "vit": image classification (ViT/DeiT)
    dtype: str = "float32"  # weights; GGUF files are dequantised to these (train fp32 on the CPU)
    device: str | None = None  # None: what accelerate/Trainer picks (cuda when available)
    seed: int = 0
    # the variants: exact attention (SDPA) first, then DistrAttention per G and setting (as in `eval`)
    group_sizes: list[int] = field(default_factory=lambda: [2])
    settings: list[str] = field(default_factory=lambda: ["recommended"])
    distr: dict[str, Any] = field(default_factory=dict)  # extra DistrConfig fields on every variant
    distr_configs: list[str] = field(default_factory=list)  # DistrConfig JSON files (e.g. calibrated), one variant each
    layers: list[int] | None = None  # only these layer indices use DistrAttention (None: all)
    exact_baseline: bool = True  # also fine-tune exact attention the same way (the fair comparison)
    # data: text (lm) or images (vit); the first part trains, the part after it is held out
    data: str | None = None  # lm default: "lee"
    data_name: str | None = None
    split: str = "train"
    text_column: str = "text"
    image_column: str = "image"
    label_column: str = "label"
    seq_len: int = 256  # lm: tokens per training block
    train_tokens: int | None = None  # lm: tokens that train (None: all but the held-out tokens)
    heldout_tokens: int = 4096  # lm: tokens after the training part, for held-out perplexity
    eval_window: int | None = None  # lm: held-out perplexity window (None: seq_len)
    eval_stride: int | None = None  # lm: its stride (None: eval_window / 2)
    heldout_fraction: float = 0.2  # vit: the last fraction of the images is held out
    limit: int | None = None  # vit: use at most this many images
    # optimisation (HF Trainer / TrainingArguments)
    learning_rate: float = 1e-4
    max_steps: int = 100  # > 0 wins over epochs (as in TrainingArguments)
    epochs: float = 1.0
    batch_size: int = 4  # per device
    grad_accum: int = 1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    # LoRA (PEFT, lm only): train rank-r adapters instead of every weight, then merge them into the weights, so
    # the scores after training and the checkpoint are those of a plain model (every variant, exact too)
    lora_r: int | None = None  # the adapters' rank; None: full fine-tuning
    lora_alpha: float | None = None  # LoRA's scale numerator (None: 2 * lora_r)
    lora_targets: list[str] | None = None  # module names to adapt (None: PEFT's default for the model type)
    # output
    output_dir: str = "results"
    run_name: str | None = None
    save: bool = True  # save each fine-tuned model (save_pretrained) under the run directory
    plots: bool = True

    def __post_init__(self):
        self._configure()  # built directly too (``run_finetune(FinetuneConfig(...))``), not only by merge

    field_names = classmethod(RunConfig.field_names.__func__)
    merge = classmethod(RunConfig.merge.__func__)
    _read_yaml = classmethod(RunConfig._read_yaml.__func__)

    def _configure(self) -> None:
        """Validate every field once; the error names the flag."""
        if self.task not in TASKS:
            raise ConfigError(f"{flag('task')}: {self.task!r} is not one of {', '.join(TASKS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{flag('dtype')}: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        self.distr_configs = check_distr_configs(self.distr_configs)
        if not isinstance(self.group_sizes, list) or not (self.group_sizes or self.distr_configs):
            raise ConfigError(f"{flag('group_sizes')}: give at least one group size, e.g. 2 (or none with "
                              f"{flag('distr_configs')})")
        for g in self.group_sizes:
            if not isinstance(g, int) or isinstance(g, bool) or g not in VALID_GROUP_SIZES:
                raise ConfigError(f"{flag('group_sizes')}: {g!r} is not a valid G; use values from "
                                  f"{', '.join(map(str, VALID_GROUP_SIZES))}")
        if not self.settings:
            raise ConfigError(f"{flag('settings')}: the list of settings is empty; use {', '.join(SETTINGS)}")
        for name in ("group_sizes", "settings", "distr_configs"):  # a repeat trains twice into one checkpoint
            v = getattr(self, name) or []
            if isinstance(v, list) and len(set(map(str, v))) != len(v):
                raise ConfigError(f"{flag(name)}: {','.join(map(str, v))} repeats a value")
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ConfigError(f"{flag('settings')}: {bad[0]!r} is not a setting; use {', '.join(SETTINGS)}")
        if not isinstance(self.distr, dict):
            raise ConfigError(f"{flag('distr')}: expected a mapping of DistrConfig fields")
        if self.layers is not None and (not isinstance(self.layers, list) or not self.layers or any(
                not isinstance(i, int) or isinstance(i, bool) for i in self.layers)):
            raise ConfigError(f"{flag('layers')}: expected a list of layer indices, e.g. 0,1,2, got {self.layers!r}")
        for name in ("seq_len", "heldout_tokens", "batch_size", "grad_accum", "logging_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
        for name in ("train_tokens", "eval_window", "eval_stride", "limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
        for name in ("seq_len", "eval_window"):  # a one-token window has no next token to score
            if getattr(self, name) == 1:
                raise ConfigError(f"{flag(name)}: a window of 1 token scores nothing; give 2 or more")
        if self.eval_stride is not None and self.eval_stride > (self.eval_window or self.seq_len):
            raise ConfigError(f"{flag('eval_stride')}: {self.eval_stride} is larger than the window "
                              f"{self.eval_window or self.seq_len}; tokens between windows would never be scored")
        for name in ("max_steps", "warmup_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{flag(name)}: expected an integer >= 0, got {v!r}")
        for name, low in (("learning_rate", 0.0), ("epochs", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > low:
                raise ConfigError(f"{flag(name)}: expected a number > {low:g}, got {v!r}")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError(f"{flag('max_steps')}/{flag('epochs')}: one must be positive")
        for name in ("weight_decay", "max_grad_norm"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{flag(name)}: expected a number >= 0, got {v!r}")
        if not (isinstance(self.heldout_fraction, float) and 0.0 < self.heldout_fraction < 1.0):
            raise ConfigError(f"{flag('heldout_fraction')}: expected a fraction in (0, 1), "
                              f"got {self.heldout_fraction!r}")
        check_output_dir(self.output_dir, self.run_name)
        if self.lr_scheduler not in SCHEDULERS:
            raise ConfigError(f"{flag('lr_scheduler')}: {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        self._check_lora()

    def _check_lora(self) -> None:
        if self.lora_r is None:
            for name in ("lora_alpha", "lora_targets"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{flag(name)}: only with {flag('lora_r')} (LoRA's rank)")
            return
        if not isinstance(self.lora_r, int) or isinstance(self.lora_r, bool) or self.lora_r <= 0:
            raise ConfigError(f"{flag('lora_r')}: expected a positive integer rank, got {self.lora_r!r}")
        if self.task != "lm":
            raise ConfigError(f"{flag('lora_r')}: LoRA is supported for --task lm (got --task {self.task}); "
                              "fine-tune ViTs in full")
        v = self.lora_alpha
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
                              or v <= 0):
            raise ConfigError(f"{flag('lora_alpha')}: expected a positive number, got {v!r}")
        t = self.lora_targets
        if t is not None and (not isinstance(t, list) or not t or not all(isinstance(n, str) and n for n in t)):
            raise ConfigError(f"{flag('lora_targets')}: expected module names, e.g. q_proj,v_proj, got {t!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
