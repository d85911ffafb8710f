"""One fine-tuning run: score every variant before, fine-tune each the same way, score after, save.

Variants are the harness's (``eval.variants.build_variants``): exact attention first (the model's own
implementation, SDPA), then DistrAttention per G and setting, with ``--distr`` fields and ``--layers`` on top.
Each variant starts from freshly loaded pretrained weights. The run directory holds ``finetune.json``
(rewritten after each variant: Ctrl-C keeps the finished ones), ``report.md`` (the one table), the one
trade-off plot and, per variant, ``checkpoints/<variant>/`` (``save_pretrained``; reload with
``finetune.load_checkpoint`` or ``from_pretrained(path, attn_implementation="distr")``).
"""
from __future__ import annotations

import contextlib
import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..eval.config import ConfigError
from ..eval.distributed import Shard, process_state
from ..eval.provenance import provenance
from ..eval.results import LAYER_SELECTION, model_info
from ..eval.variants import Variant, build_variants
from ..models import load_model
from ..patching import patched_modules
from . import lora
from .compare import attention_work_saved, markdown, new_result, score_lm, score_vit, write_json, write_plot
from .config import FinetuneConfig
from .data import DEFAULT_TEXT, BlockDataset, image_split, text_split
from .train import finetune, save_checkpoint


@dataclass
class FinetuneOutput:
    result: dict
    directory: Path
    interrupted: bool


def variants_of(cfg: FinetuneConfig) -> list[Variant]:
    """Exact attention (if ``exact_baseline``) and DistrAttention per G x setting, ``--layers`` applied."""
    variants = build_variants(cfg.group_sizes, cfg.settings, dict(cfg.distr), cfg.distr_configs)
    return variants if cfg.exact_baseline else variants[1:]


@contextlib.contextmanager
def _option_errors():
    """A patch-time ValueError as a ConfigError naming the option: --model for a model patch_model refuses whatever
    the settings (UnsupportedModelError: no registry entry, softcapping/sinks/MLA, a head dim the kernel lacks on CUDA),
    --layers/--distr for settings the model cannot take."""
    from ..patching.registry import UnsupportedModelError

    try:
        yield
    except UnsupportedModelError as e:
        raise ConfigError(f"--model: {e}") from e
    except ValueError as e:
        raise ConfigError(f"--layers/--distr: {e}") from e


def _patch(model, variant: Variant, layers: list[int] | None):
    """Patch ``model`` for the whole fine-tuning of ``variant`` (exact: leave its attention as loaded, without the
    ``config.distr_config`` a DistrAttention checkpoint given as ``--model`` carries, so that it saves and reloads
    exact).

    ``layers`` (``--layers``): only these layer indices use DistrAttention (``patch_model(..., layers=)``)."""
    if variant.is_exact:
        model.config.__dict__.pop("distr_config", None)
        return model
    from ..config import DistrConfig
    from ..patching import patch_model

    with _option_errors():
        return patch_model(model, DistrConfig.from_dict(variant.distr), layers=layers)


def _check_fits(model, variants: list[Variant], layers: list[int] | None) -> None:
    """The ConfigError ``_patch`` would raise for a variant, before any data is read or scored."""
    from ..config import DistrConfig
    from ..patching.registry import check_patchable

    for variant in variants:
        if not variant.is_exact:
            with _option_errors():
                check_patchable(model, DistrConfig.from_dict(variant.distr), layers=layers)


@contextlib.contextmanager
def _patched_for(model, variant: Variant, layers: list[int] | None):
    """``_patch`` for the duration of a block (the before-scoring of the pretrained model)."""
    if variant.is_exact:
        yield model
        return
    from ..patching import unpatch_model

    _patch(model, variant, layers)
    try:
        yield model
    finally:
        unpatch_model(model)


def _directory(cfg: FinetuneConfig) -> Path:
    name = cfg.run_name or "finetune-{}-{}".format(
        re.sub(r"[^A-Za-z0-9.]+", "-", (cfg.model or "model").rsplit("/", 1)[-1]).strip("-"),
        datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return Path(cfg.output_dir) / name


def run_finetune(cfg: FinetuneConfig, *, progress: bool = True) -> FinetuneOutput:
    if not cfg.model:
        raise ConfigError("--model: required (an alias such as smollm2-135m, a local path, or a hub id)")
    torch.manual_seed(cfg.seed)
    shard = Shard.current(cfg.device)
    if cfg.plots:  # before the run, not after it
        from ..eval.report import pyplot

        pyplot()
    variants = variants_of(cfg)
    if cfg.task == "vit" and not cfg.data:
        raise ConfigError("--data: required for --task vit (an imagefolder directory or a datasets name)")
    first = load_model(cfg.model, cfg.task, dtype=cfg.dtype)
    device = torch.device(cfg.device) if cfg.device else process_state().device  # this process's device
    model, processor = first.model.to(device), first.processor
    _check_fits(model, variants, cfg.layers)
    lora_targets = lora.target_modules(model, cfg) if cfg.lora_r else None  # PEFT installed, targets exist

    if cfg.task == "lm":
        split = text_split(cfg.data, processor, seq_len=cfg.seq_len, heldout_tokens=cfg.heldout_tokens,
                           train_tokens=cfg.train_tokens, column=cfg.text_column, split=cfg.split, name=cfg.data_name)
        train_ds = BlockDataset(split.train)
        window = cfg.eval_window or cfg.seq_len
        stride = cfg.eval_stride or max(1, window // 2)
        data = {"name": cfg.data or DEFAULT_TEXT, "seq_len": cfg.seq_len, "train_tokens": split.train_tokens,
                "train_blocks": int(split.train.shape[0]), "heldout_begin": split.heldout_begin,
                "heldout_tokens": int(split.heldout.numel()), "eval_window": window, "eval_stride": stride,
                "train_desc": f"tokens 0-{split.train_tokens} ({split.train.shape[0]} blocks of {cfg.seq_len})",
                "heldout_desc": f"tokens {split.heldout_begin}-{split.heldout_begin + split.heldout.numel()}, "
                                f"strided windows of {window} (stride {stride})"}
        metric, higher, units, unit = "perplexity", False, cfg.seq_len, "tokens"

        def score(m, desc):
            return score_lm(m, split.heldout, window=window, stride=stride, shard=shard, desc=desc)
    else:
        train_ds, held_ds = image_split(cfg.data, processor, heldout_fraction=cfg.heldout_fraction,
                                        image_column=cfg.image_column, label_column=cfg.label_column,
                                        split=cfg.split, name=cfg.data_name, limit=cfg.limit, model=model)
        data = {"name": cfg.data, "seq_len": None, "train_images": len(train_ds), "heldout_images": len(held_ds),
                "train_desc": f"{len(train_ds)} images", "heldout_desc": f"the last {len(held_ds)} images"}
        metric, higher, units, unit = "top1", True, 1, "images"

        def score(m, desc):
            return score_vit(m, held_ds, batch_size=cfg.batch_size)

    directory = _directory(cfg)
    result = new_result(model=model_info(model, cfg.model, first.source, cfg.dtype), config=cfg.to_dict(), data=data,
                        provenance=provenance(device, seed=cfg.seed, num_processes=shard.world), metric=metric,
                        higher_is_better=higher)
    if device.type == "cpu":
        result["notes"] = ["CPU run: DistrAttention (forward and backward) runs its PyTorch reference, not the "
                           "Triton kernel; training throughput on a GPU needs the Triton backward."]
    if lora_targets:
        result.setdefault("notes", []).append(
            f"LoRA fine-tuning (every variant, exact too): rank {cfg.lora_r}, alpha {lora.alpha(cfg):g}, adapters on "
            f"{', '.join(lora_targets)}; merged into the weights before the after-scores and the checkpoints.")
    seq = cfg.seq_len if cfg.task == "lm" else None

    def save():
        if shard.is_main:
            write_json(result, directory / "finetune.json")

    interrupted = False
    try:
        # before: the pretrained model under every variant, on the same held-out data
        entries = []
        for variant in variants:
            with _patched_for(model, variant, cfg.layers):
                before = score(model, f"{variant.name} before")
            entries.append({"name": variant.name, "group_size": variant.group_size, "setting": variant.setting,
                            "distr_config": None, "layers": cfg.layers if not variant.is_exact else None,
                            "attention_work_saved": None, "before": before, "after": None, "train": None,
                            "checkpoint": None})
            if progress and shard.is_main:
                print(f"{variant.name:>10} before: {metric} {before[metric]:.4g}", flush=True)
        result["variants"] = entries
        save()
        del model, first
        # fine-tune each variant from the pretrained weights, then score it again
        for variant, entry in zip(variants, entries):
            loaded = load_model(cfg.model, cfg.task, dtype=cfg.dtype)
            m = _patch(loaded.model.to(device), variant, cfg.layers)
            entry["distr_config"] = getattr(m.config, "distr_config", None) if not variant.is_exact else None
            entry["attn_implementation"] = m.config._attn_implementation
            if entry["distr_config"]:
                entry["layers"] = {k: entry["distr_config"][k] for k in LAYER_SELECTION if k in entry["distr_config"]}
            layers_counted = len(patched_modules(m)) if entry["distr_config"] else 0  # a hybrid's attention layers
            heads = getattr(m.config, "num_attention_heads", None)
            entry["attention_work_saved"] = attention_work_saved(
                entry["distr_config"], layers_counted, seq, heads) if seq else None
            trained = lora.with_adapters(m, cfg) if cfg.lora_r else m
            trainer, stats = finetune(trained, train_ds, cfg, output_dir=directory / "trainer" / variant.name,
                                      units_per_sample=units, unit=unit)
            entry["train"] = stats.to_dict()
            if cfg.lora_r:
                entry["lora"] = lora.adapter_summary(trained, cfg)
                m = lora.merged(trained)
            entry["after"] = score(m, f"{variant.name} after")
            if cfg.save:
                entry["checkpoint"] = str(save_checkpoint(trainer, processor, directory / "checkpoints" / variant.name,
                                                          model=m if cfg.lora_r else None))
            save()
            if progress and shard.is_main:
                print(f"{variant.name:>10} after:  {metric} {entry['after'][metric]:.4g}  "
                      f"({stats.steps} steps, {stats.throughput:.4g} {unit}/s)", flush=True)
            del trainer, m, trained, loaded
    except KeyboardInterrupt:
        interrupted = True
    result["status"] = "interrupted" if interrupted else "complete"
    save()
    if shard.is_main:
        table = markdown(result)
        (directory / "report.md").write_text(table)
        print("\n" + table)
        print(f"results: {directory / 'finetune.json'}")
        if cfg.plots:
            plot = write_plot(result, directory)
            if plot:
                print(f"plot:    {plot}")
    return FinetuneOutput(result, directory, interrupted)

