"""Metric modules shipped with the package and loaded through ``evaluate.load`` from a local path.

``evaluate.load("accuracy")`` fetches its script from the hub; these copies make the harness work
offline. Import ``evaluate`` only here, when a metric is computed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent
SHIPPED = ("accuracy", "top_k_accuracy")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """The shipped metric ``name`` as an ``evaluate.EvaluationModule``."""
    import evaluate

    if name not in SHIPPED:
        raise ValueError(f"no shipped metric {name!r}; shipped: {', '.join(SHIPPED)}")
    return evaluate.load(str(_HERE / name / f"{name}.py"))


def accuracy(predictions: list[int], references: list[int]) -> float:
    return load_metric("accuracy").compute(predictions=predictions, references=references)["accuracy"]


def top_k_accuracy(ranked: list[list[int]], references: list[int], k: int) -> float:
    return load_metric("top_k_accuracy").compute(predictions=ranked, references=references, k=k)["top_k_accuracy"]
