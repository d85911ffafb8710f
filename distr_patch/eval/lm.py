"""``eval lm``: perplexity and multiple-choice accuracy of a causal LM, exact vs each DistrAttention variant."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..data import load_choices, load_text
from ..data.next_sentence import NEXT_SENTENCE_TASKS
from ..models import load_model
from .config import ConfigError, RunConfig
from .distributed import Shard
from .multiple_choice import multiple_choice
from .perplexity import perplexity
from .provenance import provenance
from .results import ResultFile, model_info
from .runner import CPU_NOTE, RunOutput, compiled, finish, pick_device, run_directory, run_variants
from .variants import Variant, build_variants

DEFAULT_DATA = "lee"
CHARS_PER_TOKEN_BOUND = 12  # read at most this many characters per needed token (never too few for English)


def timing_notes(device_type: str, compile_mode: str | None, *, perplexity: bool) -> list[str]:
    """What the accuracy table's "time p50" means for this run, as report notes."""
    notes = [CPU_NOTE] if device_type == "cpu" else []
    if not perplexity:
        return notes
    if compile_mode:
        notes.append(f"--compile {compile_mode}: perplexity windows scored through torch.compile(model, mode="
                     f"{compile_mode!r}), compiled afresh per variant (the first window's latency includes the "
                     "compile); multiple-choice and lm-eval tasks ran eagerly")
    elif device_type != "cpu":
        notes.append("time p50: one eager forward of a perplexity window at batch 1, loss included; for a small "
                     "model on a GPU that is mostly host time (kernel launches), so its speedup column does not "
                     "measure the attention: `distr-patch bench model` times prefill (with --compile "
                     "reduce-overhead or --cuda-graph, GPU time)")
    return notes


def _read_text(cfg: RunConfig) -> tuple[str, int]:
    max_chars = None
    if cfg.max_windows is not None:
        max_chars = CHARS_PER_TOKEN_BOUND * (cfg.window + (cfg.max_windows - 1) * cfg.stride)
    return load_text(cfg.data, column=cfg.text_column, split=cfg.split, name=cfg.data_name, max_chars=max_chars)


def run_lm(cfg: RunConfig, *, progress: bool = True) -> RunOutput:
    if not cfg.model:
        raise ConfigError("--model: required (an alias such as smollm2-135m, a local path, or a hub id)")
    if not (cfg.perplexity or cfg.tasks or cfg.lm_eval_tasks):
        raise ConfigError("nothing to evaluate: perplexity is off (--no-perplexity) and no --tasks/--lm-eval-tasks")
    if cfg.compile and not cfg.perplexity:
        raise ConfigError("--compile: it compiles the perplexity windows, and --no-perplexity turns them off (the "
                          "tasks run eagerly); drop one of the two")
    if cfg.data is None:
        cfg = dataclasses.replace(cfg, data=DEFAULT_DATA)
    torch.manual_seed(cfg.seed)
    shard = Shard.current(cfg.device)
    device = pick_device(cfg)
    variants = build_variants(cfg.group_sizes, cfg.settings, cfg.distr, cfg.distr_configs)
    text, rows = _read_text(cfg) if cfg.perplexity else (None, None)  # data errors before the slow model load
    task_rows, task_splits = {}, {}
    for task in cfg.tasks:
        data, _, name = task.partition(":") if not Path(task).exists() else (task, "", "")
        one_split = Path(data).expanduser().is_file() or data in NEXT_SENTENCE_TASKS
        task_splits[task] = "train" if one_split else cfg.task_split or cfg.split
        task_rows[task] = load_choices(data, split=task_splits[task], name=name or None, limit=cfg.task_limit,
                                       question=cfg.question_column, choices=cfg.choices_column,
                                       label=cfg.label_column, seed=cfg.seed)
    lm_eval_manager = None
    if cfg.lm_eval_tasks:  # unknown task names fail here, before the slow model load
        from .lm_eval_tasks import run_lm_eval, task_manager

        lm_eval_manager = task_manager(cfg.lm_eval_tasks, cfg.lm_eval_include)
    loaded = load_model(cfg.model, "lm", dtype=cfg.dtype, device_map=cfg.device_map)
    model, tokenizer = loaded.model, loaded.processor
    if not cfg.device_map:
        model.to(device)
    ids = None
    if text is not None:
        ids = tokenizer(text, return_tensors="pt").input_ids[0]
        if ids.numel() < 2:
            raise ConfigError(f"--data {cfg.data}: the text has fewer than 2 tokens")

    directory = run_directory(cfg, "eval-lm")
    notes = timing_notes(device.type, cfg.compile, perplexity=ids is not None)
    result = ResultFile(directory / "result.json", kind="eval-lm",
                        model=model_info(model, cfg.model, loaded.source, cfg.dtype), config=cfg.to_dict(),
                        provenance=provenance(device, seed=cfg.seed, num_processes=shard.world), notes=notes,
                        write=shard.is_main)

    def evaluate(variant: Variant) -> tuple[dict, dict]:
        metrics, latency = {}, {}
        if ids is not None:
            with compiled(model, cfg.compile, shapes=2) as forward:  # full windows and a shorter last one
                out = perplexity(forward, ids, window=cfg.window, stride=cfg.stride, max_windows=cfg.max_windows,
                                 shard=shard, progress=progress, desc=f"{variant.name} perplexity")
            result.add_dataset("perplexity", cfg.data, out["num_tokens"], unit="tokens",
                               rows=rows, windows=out["num_windows"], window=cfg.window, stride=cfg.stride)
            metrics.update({k: (v, "perplexity") for k, v in out["metrics"].items()})
            latency["perplexity"] = out["latency"]
        for task, task_data in task_rows.items():
            out = multiple_choice(model, tokenizer, task_data, max_length=cfg.window, shard=shard,
                                  progress=progress, desc=f"{variant.name} {task}")
            result.add_dataset(task, task, out["num_examples"], unit="rows", split=task_splits[task])
            metrics.update({f"{task}/{k}": (v, task) for k, v in out["metrics"].items()})
            latency[task] = out["latency"]
        if lm_eval_manager is not None:
            out = run_lm_eval(model, tokenizer, cfg.lm_eval_tasks, limit=cfg.lm_eval_limit,
                              batch_size=cfg.batch_size, manager=lm_eval_manager, shard=shard)
            metrics.update({f"lm-eval/{name}": (value, "lm-eval") for name, value in out.metrics.items()})
            result.add_dataset("lm-eval", ",".join(cfg.lm_eval_tasks), sum(out.rows.values()), unit="rows",
                               rows_per_task=out.rows, include=cfg.lm_eval_include,
                               requests_per_process=out.requests_per_process)
        return metrics, latency

    finished = run_variants(model, variants, evaluate, result, shard=shard, progress=progress)
    finish(result, directory, plots=cfg.plots, interrupted=not finished, shard=shard)
    return RunOutput(result, directory, not finished)
