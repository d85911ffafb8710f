"""The result JSON: its documented schema (JSON Schema, draft 2020-12 subset) and a validator.

One file per run. ``variants[0]`` is exact attention; each metric holds its value, the exact-attention
baseline and ``diff = value - baseline``; ``higher_is_better`` says which way is a loss. ``latency``
maps what was timed to p20/p50/p80 milliseconds (bench runs add throughput and memory). ``status`` is
``complete`` or ``interrupted`` (Ctrl-C: the variants listed are the finished ones).
"""
from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}

METRIC = {
    "type": "object",
    "required": ["value", "baseline", "diff", "higher_is_better"],
    "properties": {"value": _NUM, "baseline": _NUM_OR_NULL, "diff": _NUM_OR_NULL,
                   "higher_is_better": {"type": "boolean"}, "dataset": {"type": "string"}},
}
TIMING = {
    "type": "object",
    "required": ["p20_ms", "p50_ms", "p80_ms"],
    "properties": {"p20_ms": _NUM, "p50_ms": _NUM, "p80_ms": _NUM, "unit": {"type": "string"}},
}
BENCH_POINT = {  # one timed point of a bench-model run (``eval/bench.py``)
    "type": "object",
    "required": ["measure", "batch", "p20_ms", "p50_ms", "p80_ms", "throughput", "throughput_unit"],
    "properties": {"measure": {"type": "string"}, "batch": {"type": "integer"}, "seq_len": {"type": ["integer", "null"]},
                   "p20_ms": _NUM, "p50_ms": _NUM, "p80_ms": _NUM, "throughput": _NUM,
                   "throughput_unit": {"type": "string"}, "peak_mem_mib": _NUM_OR_NULL},
}
VARIANT = {
    "type": "object",
    "required": ["name", "group_size", "setting", "distr_config", "metrics", "latency"],
    "properties": {
        "name": {"type": "string"},
        "group_size": {"type": ["integer", "null"]},
        "setting": _STR_OR_NULL,
        "distr_config": {"type": ["object", "null"]},
        "layers": {},
        "metrics": {"type": "object", "additionalProperties": METRIC},
        "latency": {"type": "object", "additionalProperties": {"type": ["object", "array", "null"],
                                                               "items": BENCH_POINT}},
        "speedup": _NUM_OR_NULL,
    },
}
RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "distr_patch run result",
    "type": "object",
    "required": ["schema_version", "kind", "status", "created", "model", "config", "datasets", "provenance",
                 "variants"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"enum": ["eval-lm", "eval-vit", "bench-model"]},
        "status": {"enum": ["running", "complete", "interrupted"]},
        "created": {"type": "string"},
        "model": {"type": "object", "required": ["name", "model_type"],
                  "properties": {"name": {"type": "string"}, "model_type": {"type": "string"}}},
        "config": {"type": "object"},
        "datasets": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["name", "num_examples"],
            "properties": {"name": {"type": "string"}, "num_examples": {"type": "integer"}}}},
        "provenance": {"type": "object",
                       "required": ["torch", "transformers", "triton", "device", "gpu", "git_commit", "seed"]},
        "variants": {"type": "array", "items": VARIANT},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


class SchemaError(ValueError):
    """The JSON does not follow RESULT_SCHEMA; the message gives the path of the first problem."""


def _is_type(value, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def _check(value, schema: dict, path: str) -> None:
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, t) for t in types):
            raise SchemaError(f"{path}: expected {' or '.join(types)}, got {type(value).__name__}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: missing {key!r}")
        props = schema.get("properties", {})
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                _check(sub, schema["additionalProperties"], f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


def validate(result: dict) -> None:
    """Raise SchemaError unless ``result`` follows RESULT_SCHEMA."""
    _check(result, RESULT_SCHEMA, "$")
