"""The standard task suite through lm-evaluation-harness (optional extra ``distr_patch[lm-eval]``).

The patched model object itself is wrapped in lm-eval's ``HFLM``, so its tasks run on DistrAttention.
Task data comes from wherever lm-eval finds it (the hub, or its local cache when offline). Tasks of
your own are YAML files in a directory given as ``--lm-eval-include`` (lm-eval's ``include_path``);
a ``dataset_path: json`` task with local ``data_files`` runs fully offline.

Under ``accelerate launch`` / ``torchrun`` each process scores only its share of the requests and the
answers are gathered (:mod:`.lm_eval_shard`), so the metrics equal a one-process run's.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .distributed import Shard
from .lm_eval_shard import sharded_hflm

INSTALL_HINT = "--lm-eval-tasks needs lm-evaluation-harness: pip install 'distr_patch[lm-eval]'"


def task_manager(tasks: list[str], include: str | None = None):
    """lm-eval's ``TaskManager`` (built-in tasks plus those under ``include``), after checking that every
    task name is known; build it once, before the slow model load, and pass it to :func:`run_lm_eval`.

    When every task is a plain task defined under ``include`` (no group or tag), the built-in tasks are not
    indexed: reading their ~14k YAML files takes seconds in every process.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"--lm-eval-include {include}: no such directory")
    if include is not None:
        local = TaskManager(include_path=include, include_defaults=False)
        if set(tasks) <= set(local.all_subtasks):
            return local
    manager = TaskManager(include_path=include)
    known = set(manager.all_tasks)
    for task in tasks:
        # names of tasks, groups and tags; lm-eval also takes glob patterns and YAML files
        if task in known or Path(task).is_file() or manager.match_tasks([task]):
            continue
        near = difflib.get_close_matches(task, manager.all_tasks, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        where = f" or under --lm-eval-include {include}" if include else ""
        raise ConfigError(f"--lm-eval-tasks: {task!r} is not an lm-eval task{where}{hint}")
    return manager


@dataclass
class LmEvalOutput:
    metrics: dict[str, float]  # {"task/metric": value}
    rows: dict[str, int]  # {"task": documents scored}
    requests_per_process: list[int]  # [world] model requests (loglikelihood, ...) each process scored


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None, batch_size: int,
                include: str | None = None, manager=None, shard: Shard = Shard()) -> LmEvalOutput:
    """Run ``tasks`` on the live ``model``, each process of ``shard`` scoring its share of the requests.

    Metrics are lm-eval's "metric,filter" entries: the filter is dropped when it is "none" ("acc,none" ->
    "acc") and kept otherwise ("exact_match,strict-match"); stderr entries and bookkeeping ("alias",
    "sample_len") are dropped. Every process returns the same output.
    """
    try:
        import lm_eval
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    if manager is None:
        manager = task_manager(tasks, include)
    lm = sharded_hflm(shard, pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                  log_samples=False)
    # lm-eval returns the results only where LOCAL_RANK is 0: process 0's are everyone's
    metrics, rows = shard.broadcast(_parse(out) if shard.is_main else None)
    scored = shard.gather([(shard.rank, lm.requests_scored)])
    return LmEvalOutput(metrics, rows, scored)


def _parse(out: dict) -> tuple[dict[str, float], dict[str, int]]:
    """lm-eval's results dict -> ({"task/metric": value}, {"task": documents scored})."""
    metrics = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            if "," not in key or "_stderr," in key:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                name, filt = key.split(",", 1)
                metrics[f"{task}/{name if filt == 'none' else key}"] = float(value)
    rows = {task: int(n["effective"]) for task, n in out.get("n-samples", {}).items()}
    return metrics, rows
