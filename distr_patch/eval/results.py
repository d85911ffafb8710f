"""Build one run's result JSON variant by variant, saving after each so Ctrl-C keeps the finished ones."""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from .schema import SCHEMA_VERSION, SchemaError, validate
from .variants import Variant

# DistrConfig fields that choose which layers run DistrAttention (copied to each variant's "layers").
LAYER_SELECTION = ("exact_layers", "exact_first", "exact_last", "layer_overrides")

# Which way is better, by the metric's last name component ("task/accuracy" -> "accuracy").
HIGHER_IS_BETTER = {"perplexity": False, "nll_per_token": False, "accuracy": True, "accuracy_norm": True,
                    "top1": True, "top5": True, "cosine": True}


# lm-eval's metrics where lower is better (its registry says so too, where lm-eval is installed)
LM_EVAL_LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter", "brier_score")


def higher_is_better(metric: str) -> bool:
    base = metric.rsplit("/", 1)[-1]
    if base in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[base]
    name = base.split(",", 1)[0]  # lm-eval names carry a filter: "acc,none"
    if name.startswith(LM_EVAL_LOWER_IS_BETTER):
        return False
    try:  # lm-eval metrics: accuracies, exact matches... higher is better, unless its registry says otherwise
        from lm_eval.api.registry import is_higher_better
    except ImportError:
        return True
    try:
        said = is_higher_better(name)
    except Exception:  # an unregistered name (lm-eval warns or raises, by release)
        said = None
    return True if said is None else bool(said)


def _attention_layers(model) -> int | None:
    """How many attention layers per-layer settings count (fewer than the layers in a hybrid model); None for a
    model type that is not registered."""
    from ..patching import patched_modules

    try:
        return len(patched_modules(model))
    except (ValueError, RuntimeError):
        return None


def model_info(model, name: str, source: str, dtype: str) -> dict[str, Any]:
    c = model.config
    heads = getattr(c, "num_attention_heads", None)
    return {
        "name": name,
        "source": source,
        "model_type": c.model_type,
        "num_layers": getattr(c, "num_hidden_layers", None),
        "num_attention_layers": _attention_layers(model),
        "num_heads": heads,
        "num_kv_heads": getattr(c, "num_key_value_heads", heads),
        "head_dim": getattr(c, "head_dim", None) or (c.hidden_size // heads if heads else None),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
    }


class ResultFile:
    def __init__(self, path: Path, *, kind: str, model: dict, config: dict, provenance: dict,
                 notes: list[str] | None = None, write: bool = True):
        self.path = Path(path)
        self.write = write  # False on the non-main processes of a multi-process run
        self.data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "status": "running",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model,
            "config": config,
            "datasets": {},
            "provenance": provenance,
            "variants": [],
            "notes": list(notes or []),
        }

    def add_dataset(self, key: str, name: str, num_examples: int, **extra) -> None:
        self.data["datasets"][key] = {"name": name, "num_examples": int(num_examples), **extra}

    def add_variant(self, variant: Variant, metrics: dict[str, tuple[float, str]], latency: dict[str, Any]) -> dict:
        """Record a finished variant; ``metrics`` maps name -> (value, data set key). Saves the file."""
        exact = self.data["variants"][0] if self.data["variants"] else None
        if exact is None and not variant.is_exact:
            raise ValueError("the exact-attention variant must be recorded first")
        entry_metrics = {}
        for name, (value, dataset) in metrics.items():
            base = value if exact is None else exact["metrics"].get(name, {}).get("value")
            entry_metrics[name] = {"value": value, "baseline": base, "diff": None if base is None else value - base,
                                   "higher_is_better": higher_is_better(name), "dataset": dataset}
        entry = {
            "name": variant.name,
            "group_size": variant.group_size,
            "setting": variant.setting,
            "distr_config": variant.distr or None,
            "layers": {k: variant.distr[k] for k in LAYER_SELECTION if k in variant.distr} or None,
            "metrics": entry_metrics,
            "latency": latency,
            "speedup": self._speedup(exact, latency),
        }
        self.data["variants"].append(entry)
        self.save()
        return entry

    @staticmethod
    def _speedup(exact: dict | None, latency: dict[str, Any]) -> float | None:
        """exact p50 / this p50 for the first timing both have (1.0 for exact itself)."""
        ref = latency if exact is None else exact["latency"]
        for key, t in latency.items():
            r = ref.get(key)
            if isinstance(t, dict) and isinstance(r, dict) and t.get("p50_ms") and r.get("p50_ms"):
                return r["p50_ms"] / t["p50_ms"]
        return None

    def save(self, status: str | None = None) -> None:
        if status is not None:
            self.data["status"] = status
        if not self.write:
            return
        validate(self.data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".json.{os.getpid()}.tmp")  # its own: two writers never share one
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)


# Outputs of distr_patch that are not run results, by their "kind": the command that writes them.
OTHER_OUTPUTS = {"calibrate": "calibrate", "finetune": "finetune"}
_OTHER_FILES = {"calibration.json": "calibrate", "finetune.json": "finetune"}
REPORT_TAKES = "report takes the result.json of `eval lm`, `eval vit` and `bench model` runs"


def load_results(paths) -> list[dict]:
    """Read and validate result files (the ``report`` input)."""
    out = []
    for p in paths:
        p = Path(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            other = next((cmd for name, cmd in _OTHER_FILES.items() if (p.parent / name).is_file()), None)
            if p.name == "result.json" and other:
                raise SchemaError(f"RESULTS: {p.parent} is a `{other}` run directory; {REPORT_TAKES}") from None
            raise FileNotFoundError(f"RESULTS: no such file: {p}") from None
        except UnicodeDecodeError:
            raise SchemaError(f"RESULTS: {p} is not JSON (not a text file)") from None
        except json.JSONDecodeError as e:
            raise SchemaError(f"RESULTS: {p} is not JSON: {e}") from e
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind in OTHER_OUTPUTS:
            raise SchemaError(f"RESULTS: {p} is a `{OTHER_OUTPUTS[kind]}` output; {REPORT_TAKES}")
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            raise SchemaError(f"RESULTS: {p} is a `bench op --json` file (give it as --speed-from); {REPORT_TAKES}")
        try:
            validate(data)
        except SchemaError as e:
            raise SchemaError(f"RESULTS: {p} is not a distr_patch result: {e}") from e
        out.append(data)
    return out


def label_runs(paths, results: list[dict]) -> list[dict]:
    """The results, where several of one table (eval or bench) share a model name each with its run named after
    it ("tiny (run-a)": the run directory, else the path, else the position), so that table rows and plot labels
    tell them apart."""
    paths = [Path(p) for p in paths]
    out = list(results)
    keys = [(r["kind"] == "bench-model", r["model"]["name"]) for r in results]
    for key in set(keys):
        idx = [i for i, k in enumerate(keys) if k == key]
        name = key[1]
        if len(idx) < 2:
            continue
        for labels in ([paths[i].parent.name for i in idx], [str(paths[i]) for i in idx], [f"#{i + 1}" for i in idx]):
            if len(set(labels)) == len(labels):
                break
        for i, label in zip(idx, labels):
            out[i] = {**results[i], "model": {**results[i]["model"], "name": f"{name} ({label})"}}
    return out
