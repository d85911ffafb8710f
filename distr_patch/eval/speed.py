"""Speedup of each variant of a bench file, keyed by its DistrAttention settings (the trade-off plot's x axis).

Two kinds of file. A ``bench model`` result (schema.py): the speedup at a point is exact p50 / variant p50 at
the same measure, batch and sequence length. A ``bench op`` JSON (``scripts/bench_attention.py --json``):
rows per shape; the speedup is SDPA-flash ms / variant ms at the same d, N, B, H and causal. A variant's
speedup is the geometric mean over the selected points: ``at`` = {field: value} (e.g. {"seq_len": "4096"} or
{"N": "16384", "causal": "1"}); by default the prefill / images points of a model file, every shape of an op
file (``generate()`` mostly decodes one token at a time, which runs exact attention).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .report import bench_points

OP_BASELINE = "sdpa-flash"
OP_SETTINGS = ("group_size", "block_m", "fusion", "exact_window", "window_correction", "num_hash_bits")
IGNORED = ("seed",)  # settings that leave the speed as it is
# bench op files written before rows carried their settings: parsed from the variant name
_OP_NAME = {"group_size": (r"G=(\d+)", int), "fusion": (r"\b(mean|rank1)\b", str),
            "exact_window": (r"\bW(\d+)", int), "window_correction": (r"\bc(\d*\.?\d+)", float),
            "block_m": (r"\bbm(\d+)", int)}


@dataclass
class SpeedEntry:
    name: str  # the variant's name in the bench file
    settings: dict | None  # its DistrConfig fields (None: exact attention)
    speedup: float | None  # geometric mean over the selected points, in x; None: no point selected
    points: int


@dataclass
class SpeedSource:
    path: str
    kind: str  # "bench-model" or "bench-op"
    model: str
    device: str
    baseline: str  # what a speedup of 1 is
    selection: str  # which points, in words
    entries: list[SpeedEntry]

    def describe(self) -> str:
        return (f"`{self.path}` ({self.kind}, {self.model} on {self.device}; speedup vs {self.baseline}, "
                f"geometric mean over {self.selection})")

    def find(self, distr_config: dict | None) -> SpeedEntry | None:
        """The first entry whose settings equal ``distr_config``'s (a result variant's; None = exact)."""
        return next((e for e in self.entries if not differences(e.settings, distr_config)), None)


PER_LAYER = ("layer_overrides", "head_overrides")


def differences(bench: dict | None, distr: dict | None) -> list[str]:
    """Settings in which a bench variant and an eval variant differ (fields both state; ``IGNORED`` aside). A bench
    variant without per-layer settings (a ``bench op`` row: one operator setting) differs from an eval variant whose
    ``layer_overrides`` / ``head_overrides`` set any of its fields to another value."""
    if bench is None or distr is None:
        return [] if bench is distr else ["exact attention"]
    out = [k for k, v in bench.items() if k not in IGNORED and k in distr and distr[k] != v]
    return out + [k for k in PER_LAYER if k not in bench and overridden(bench, k, distr.get(k))]


def overridden(bench: dict, key: str, overrides) -> list[str]:
    """The fields of ``bench`` that ``overrides`` (an eval variant's ``layer_overrides`` {layer: {field: value}}
    or ``head_overrides`` {layer: {head: {field: value}}}, ``key`` says which) set to another value."""
    if not isinstance(overrides, dict):
        return []
    per = list(overrides.values())
    if key == "head_overrides":
        per = [h for o in per if isinstance(o, dict) for h in o.values()]
    return sorted({k for o in per if isinstance(o, dict) for k, v in o.items()
                   if k in bench and k not in IGNORED and bench[k] != v})


def op_settings(kwargs: dict) -> dict:
    """The full operator settings of a ``distr_attention(**kwargs)`` call (its defaults filled in), with the
    ``DistrConfig.engine`` that runs it: ``sdpa`` for ``backend="sdpa"``, else ``auto``."""
    import inspect

    from ..ops import distr_attention

    params = inspect.signature(distr_attention).parameters
    return {**{k: kwargs.get(k, params[k].default) for k in OP_SETTINGS},
            "engine": "sdpa" if kwargs.get("backend") == "sdpa" else "auto"}


def _selected(point: dict, at: dict[str, str]) -> bool:
    def same(value, text: str) -> bool:
        if isinstance(value, bool):
            return text.lower() in (("1", "true") if value else ("0", "false"))
        return str(value) == text or (isinstance(value, (int, float)) and _number(text) == value)

    return all(same(point.get(k), v) for k, v in at.items())


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _check_fields(points: list[dict], at: dict[str, str], path) -> None:
    known = {k for p in points for k in p}
    unknown = sorted(set(at) - known)
    if unknown:
        raise ConfigError(f"--speed-at {','.join(unknown)}: not a field of the points of {path} "
                          f"(fields: {', '.join(sorted(known))})")


def _geomean(ratios: list[float]) -> float | None:
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None


def _from_model(path, data: dict, at: dict[str, str]) -> SpeedSource:
    variants = data["variants"]
    if not variants:
        raise ConfigError(f"--speed-from {path}: the run recorded no variant (status {data['status']}); "
                          "give a finished `bench model` run")
    all_points = [p for v in variants for p in bench_points(v)]
    _check_fields(all_points, at, path)
    if "measure" not in at:
        measures = [m for m in ("prefill", "images") if any(p["measure"] == m for p in all_points)]
        at = {"measure": measures[0], **at} if measures else at
    key = lambda p: (p["measure"], p["batch"], p.get("seq_len"))  # noqa: E731
    exact = {key(p): p["p50_ms"] for p in bench_points(variants[0]) if _selected(p, at)}
    entries = []
    for v in variants:
        ratios = [exact[key(p)] / p["p50_ms"] for p in bench_points(v) if _selected(p, at) and key(p) in exact]
        settings = None if v["distr_config"] is None else {k: x for k, x in v["distr_config"].items()
                                                           if k not in IGNORED}
        entries.append(SpeedEntry(v["name"], settings, _geomean(ratios), len(ratios)))
    prov = data["provenance"]
    where = ", ".join(f"{k}={v}" for k, v in at.items()) or "every point"
    return SpeedSource(str(path), "bench model", data["model"]["name"], prov.get("gpu") or prov["device"],
                       "exact attention", f"{len(exact)} points ({where})", entries)


def _from_op(path, data: dict, at: dict[str, str]) -> SpeedSource:
    rows = data["rows"]
    _check_fields(rows, at, path)
    rows = [r for r in rows if _selected(r, at)]
    shape = lambda r: (r.get("d"), r.get("N"), r.get("B"), r.get("H"), bool(r.get("causal")))  # noqa: E731
    base = {shape(r): r["ms"] for r in rows if r["variant"] == OP_BASELINE}
    if not base:
        raise ConfigError(f"--speed-from {path}: no {OP_BASELINE} rows{' at ' + str(at) if at else ''} "
                          f"to measure speedups against (a --tune file has none)")
    entries, names = [], list(dict.fromkeys(r["variant"] for r in rows))
    for name in names:
        own = [r for r in rows if r["variant"] == name]
        if name == OP_BASELINE:
            settings = None
        elif own[0].get("settings") is not None:
            settings = dict(own[0]["settings"])
            # rows written before settings named the engine: the script names its backend="sdpa" variants "... sdpa"
            settings.setdefault("engine", "sdpa" if re.search(r"\bsdpa\b", name) else "auto")
        elif name.startswith("distr"):
            settings = op_settings({"backend": "sdpa" if re.search(r"\bsdpa\b", name) else None,
                                    **{k: cast(m.group(1)) for k, (pattern, cast) in _OP_NAME.items()
                                       if (m := re.search(pattern, name))}})
        else:  # a peer (cuDNN, SageAttention): not a DistrAttention setting
            continue
        ratios = [base[shape(r)] / r["ms"] for r in own if shape(r) in base and r["ms"] > 0]
        entries.append(SpeedEntry(name, settings, _geomean(ratios), len(ratios)))
    where = ", ".join(f"{k}={v}" for k, v in at.items()) or "every shape"
    kind = "bench op --backward (forward+backward)" if data.get("kind") == "bench-op-backward" else "bench op"
    return SpeedSource(str(path), kind, "operator", data.get("gpu") or "?", OP_BASELINE,
                       f"{len(base)} shapes ({where})", entries)


def load_speeds(path, at: dict[str, str] | None = None) -> SpeedSource:
    """Read a ``bench model`` result (file or run directory) or a ``bench op`` JSON."""
    path = Path(path) / "result.json" if Path(path).is_dir() else Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--speed-from: no such file: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--speed-from: {path} is not JSON (not a text file)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--speed-from: {path} is not JSON: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("rows"), list):
        try:
            return _from_op(path, data, dict(at or {}))
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"--speed-from: {path}: a row of this `bench op --json` file is malformed "
                              f"({type(e).__name__}: {e})") from e
    if isinstance(data, dict) and data.get("kind") == "bench-model":
        from .schema import SchemaError, validate

        try:
            validate(data)
        except SchemaError as e:
            raise SchemaError(f"--speed-from: {path} is not a distr_patch result: {e}") from e
        return _from_model(path, data, dict(at or {}))
    kind = data.get("kind") if isinstance(data, dict) else None
    raise ConfigError(f"--speed-from: {path} is {f'a `{kind}` result' if kind else 'not a bench file'}; "
                      f"give a `bench model` result.json or a `bench op --json` file")
