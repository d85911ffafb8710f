"""The standard task suite through lm-evaluation-harness (optional extra ``distr_patch[lm-eval]``).

The patched model object itself is wrapped in lm-eval's ``HFLM``, so its tasks run on DistrAttention.
Task data comes from wherever lm-eval finds it (the hub, or its local cache when offline).
"""
from __future__ import annotations


def run_lm_eval(model, tokenizer, tasks: list[str], *, limit: int | None, batch_size: int) -> dict[str, float]:
    """{"task/metric": value} for the numeric metrics lm-eval reports (stderr entries dropped)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ImportError("--lm-eval-tasks needs lm-evaluation-harness: pip install 'distr_patch[lm-eval]'") from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit)
    metrics = {}
    for task, values in out["results"].items():
        for key, value in values.items():
            name = key.split(",", 1)[0]  # "acc,none" -> "acc"
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in key:
                metrics[f"{task}/{name}"] = float(value)
    return metrics
