"""One run's settings: a single dataclass merged from defaults < YAML (``--config``) < command-line flags.

Every field is a flag of the same name (``group_sizes`` <-> ``--group-sizes``) and a YAML key (either
spelling). ``RunConfig.merge`` does the merge and ``_configure`` validates once, naming the flag to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VALID_GROUP_SIZES = (1, 2, 4, 8)
SETTINGS = ("paper", "recommended")
DTYPES = ("float32", "float16", "bfloat16")
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's device_map names


class ConfigError(ValueError):
    """A setting is wrong; the message names its flag."""


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's modes
COMPILE_WARMUP = 3  # bench model --compile: warm-up calls at least (compile, cudagraph trees' warm-up and recording)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_distr_configs(paths) -> list[str]:
    """``distr_configs``: existing files (each is read when the variants are built); one path or a
    comma-separated string (as YAML may give it) becomes a list."""
    if isinstance(paths, str):
        paths = [p.strip() for p in paths.split(",") if p.strip()]
    if not isinstance(paths, list) or any(not isinstance(p, str) for p in paths):
        raise ConfigError(f"{flag('distr_configs')}: expected a list of DistrConfig JSON files, got {paths!r}")
    for p in paths:
        if not Path(p).is_file():
            raise ConfigError(f"{flag('distr_configs')}: {p} is not a file (a DistrConfig JSON file, e.g. the "
                              "distr_config-0.01.json that `distr-patch calibrate` writes)")
    return paths


def check_output_dir(path, run_name: str | None = None) -> Path:
    """``path`` (``--output-dir``, with ``--run-name`` below it when given) can hold the outputs: no part of it is an
    existing file, the nearest existing part is a writable directory (checked before any work, not when the first
    file is written). Returns ``path``."""
    target = Path(path) / run_name if run_name else Path(path)
    what = "--output-dir/--run-name" if run_name else "--output-dir"
    for p in (target, *target.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"{what} {target}: {p} is a file, not a directory")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{what} {target}: {p} is not writable")
            break
    return Path(path)


@dataclass
class RunConfig:
    # the model
    model: str | None = None
    dtype: str = "float32"
    device: str | None = None  # None: cuda when available, else cpu
    device_map: str | None = None  # "auto" spreads a large model over the GPUs (accelerate)
    seed: int = 0
    # the variants: exact attention, then DistrAttention at each G and setting
    group_sizes: list[int] = field(default_factory=lambda: [1, 2, 4])
    settings: list[str] = field(default_factory=lambda: ["recommended"])
    distr: dict[str, Any] = field(default_factory=dict)  # extra DistrConfig fields (e.g. layer selection)
    distr_configs: list[str] = field(default_factory=list)  # DistrConfig JSON files, one variant each
    # data (text for perplexity, images for vit)
    data: str | None = None
    data_name: str | None = None  # a hub data set's configuration name
    split: str = "train"
    text_column: str = "text"
    image_column: str = "image"
    label_column: str | None = None
    # perplexity: strided sliding window
    perplexity: bool = True
    window: int = 1024
    stride: int | None = None  # None: window // 2 (512 at the default window), as calibrate and finetune
    max_windows: int | None = 4
    # multiple-choice tasks
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = 100
    task_split: str | None = None  # the tasks' split; None: ``split`` (the perplexity data's)
    question_column: str | None = None
    choices_column: str | None = None
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    lm_eval_include: str | None = None  # a directory of lm-eval task YAMLs of your own
    # vision
    vit_metric: str = "top-k"  # "top-k" (classifier) or "fidelity" (backbone: cosine of pooled embeddings)
    batch_size: int = 8
    limit: int | None = None
    # latency benchmark
    seq_lens: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    gen_tokens: int = 64
    gen_prompt_len: int = 512
    warmup: int = 3
    settle_ms: float | None = None  # bench model: the variant run back to back this long before each prefill / image
    # batch timing, after the warm-up (None: 200 on a CUDA device, 0 on the CPU)
    repeats: int = 10
    cuda_graph: bool = False  # bench model: time prefill / image batches as replays of a captured CUDA graph
    compile: str | None = None  # bench model / eval lm: prefills / image batches / perplexity windows through
    # torch.compile(model, mode=...)
    # output
    output_dir: str = "results"
    run_name: str | None = None
    plots: bool = True

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def merge(cls, yaml_path: str | None = None, flags: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None) -> "RunConfig":
        """defaults (dataclass, then the sub-command's ``defaults``) < YAML file < flags given."""
        values: dict[str, Any] = dict(defaults or {})
        if yaml_path is not None:
            values.update(cls._read_yaml(yaml_path))
        values.update({k: v for k, v in (flags or {}).items() if k != "config"})
        unknown = [k for k in values if k not in cls.field_names()]
        if unknown:
            near = difflib.get_close_matches(unknown[0], cls.field_names(), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown setting {unknown[0]!r}{hint}")
        return cls(**values)  # __post_init__ validates

    def __post_init__(self):
        self._configure()  # built directly too (a library call), not only by merge

    @classmethod
    def _read_yaml(cls, path: str) -> dict[str, Any]:
        return read_yaml_settings(path, cls.field_names(), setting_kinds(cls))

    def _configure(self) -> None:
        """Validate every field once; the error names the flag."""
        if self.model is not None and not isinstance(self.model, str):
            raise ConfigError(f"{flag('model')}: expected an alias, a path or a hub id, got {self.model!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"{flag('seed')}: expected an integer, got {self.seed!r}")
        for name in ("perplexity", "plots"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{flag(name)}: expected true or false, got {getattr(self, name)!r}")
        for name in ("settings", "tasks", "lm_eval_tasks"):
            v = getattr(self, name)
            if not isinstance(v, list) or any(not isinstance(x, str) for x in v):
                raise ConfigError(f"{flag(name)}: expected a list of names (or one comma-separated string), got {v!r}")
        self.distr_configs = check_distr_configs(self.distr_configs)
        if not isinstance(self.group_sizes, list) or not (self.group_sizes or self.distr_configs):
            raise ConfigError(f"{flag('group_sizes')}: give at least one group size, e.g. 1,2,4 (or none with "
                              f"{flag('distr_configs')})")
        for g in self.group_sizes:
            if not isinstance(g, int) or isinstance(g, bool) or g not in VALID_GROUP_SIZES:
                raise ConfigError(f"{flag('group_sizes')}: {g!r} is not a valid G; use values from "
                                  f"{', '.join(map(str, VALID_GROUP_SIZES))}")
        if len(set(self.group_sizes)) != len(self.group_sizes):
            raise ConfigError(f"{flag('group_sizes')}: {self.group_sizes} repeats a value")
        if not self.settings:
            raise ConfigError(f"{flag('settings')}: the list of settings is empty; use {', '.join(SETTINGS)}")
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ConfigError(f"{flag('settings')}: {bad[0]!r} is not a setting; use {', '.join(SETTINGS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{flag('dtype')}: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.distr, dict):
            raise ConfigError(f"{flag('distr')}: expected a mapping of DistrConfig fields")
        if self.stride is None and isinstance(self.window, int) and not isinstance(self.window, bool):
            self.stride = max(1, self.window // 2)
        if self.device_map is not None and self.device_map not in DEVICE_MAP_STRATEGIES:
            try:
                import torch

                torch.device(self.device_map)
            except (RuntimeError, TypeError):
                raise ConfigError(f"{flag('device_map')}: {self.device_map!r} is not one of "
                                  f"{', '.join(DEVICE_MAP_STRATEGIES)} or a device (cpu, cuda:0, ...)") from None
        positive = ["window", "stride", "batch_size", "repeats", "gen_tokens", "gen_prompt_len"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
        if self.window == 1:
            raise ConfigError(f"{flag('window')}: a window of 1 token scores nothing; give 2 or more")
        if self.stride > self.window:
            raise ConfigError(f"{flag('stride')}: {self.stride} is larger than {flag('window')} {self.window}; "
                              f"tokens between windows would never be scored")
        for name in ("max_windows", "task_limit", "limit", "lm_eval_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
        if not isinstance(self.cuda_graph, bool):
            raise ConfigError(f"{flag('cuda_graph')}: expected true or false, got {self.cuda_graph!r}")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ConfigError(f"{flag('compile')}: {self.compile!r} is not a torch.compile mode; expected one of "
                              f"{', '.join(COMPILE_MODES)}")
        if self.cuda_graph and self.compile is not None:
            raise ConfigError(f"{flag('cuda_graph')} and {flag('compile')}: pick one (--compile reduce-overhead is "
                              "torch.compile's own CUDA-graph replay)")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"{flag('warmup')}: expected an integer >= 0, got {self.warmup!r}")
        settle = self.settle_ms
        if settle is not None and (isinstance(settle, bool) or not isinstance(settle, (int, float))
                                   or not 0 <= settle < float("inf")):
            raise ConfigError(f"{flag('settle_ms')}: expected a number of milliseconds >= 0, got {self.settle_ms!r}")
        for name in ("seq_lens", "batch_sizes"):
            v = getattr(self, name)
            if not v or any(not isinstance(x, int) or x <= 0 for x in v):
                raise ConfigError(f"{flag(name)}: expected a list of positive integers, got {v!r}")
        for name in ("settings", "seq_lens", "batch_sizes", "tasks", "lm_eval_tasks", "distr_configs"):
            v = getattr(self, name) or []  # a repeat would run twice under one name (and be keyed once)
            if isinstance(v, list) and len(set(map(str, v))) != len(v):
                raise ConfigError(f"{flag(name)}: {','.join(map(str, v))} repeats a value")
        if self.lm_eval_include is not None and not Path(self.lm_eval_include).is_dir():
            raise ConfigError(f"{flag('lm_eval_include')}: {self.lm_eval_include} is not a directory")
        if self.vit_metric not in ("top-k", "fidelity"):
            raise ConfigError(f"{flag('vit_metric')}: {self.vit_metric!r} is not top-k or fidelity")
        check_output_dir(self.output_dir, self.run_name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def setting_kinds(cls) -> dict[str, tuple[Any, bool]]:
    """{field: (kind, optional)} of a settings dataclass: how a ``--config`` value is read, as the field's flag
    reads its text (int, float, str; for a list its flag's parser, e.g. ``2,4``), bool (true or false), or None
    (taken as given); optional: None is allowed."""
    from ..cli.options import group_size_list, int_list, str_list

    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
        h = args[0] if len(args) == 1 else None
        if typing.get_origin(h) is list:
            kind = group_size_list if name == "group_sizes" else int_list if typing.get_args(h) == (int,) else str_list
        else:
            kind = h if h in (bool, int, float, str) else None
        out[name] = (kind, union and type(None) in typing.get_args(hint))
    return out


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def yaml_value(where: str, value, kind, optional: bool = True):
    """A ``--config`` value read as its flag reads its text (``kind``: see ``setting_kinds``); a list for a
    list-valued flag is its comma-separated form. ``where`` ("--config FILE: key") starts the error."""
    import argparse

    if value is None:
        if optional or kind is None:
            return None
        raise ConfigError(f"{where}: needs a value")
    if kind is None:
        return value
    expected = _EXPECTED.get(kind, "a list or a comma-separated string")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    items = value if isinstance(value, list) and kind not in _EXPECTED else [value]
    if any(isinstance(x, (bool, list, dict)) or x is None for x in items):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    if not items:
        return []
    try:
        return kind(",".join(str(x) for x in items))
    except ValueError:
        raise ConfigError(f"{where}: expected {expected}, got {value!r}") from None
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def read_yaml_settings(path: str, known: list[str],
                       kinds: dict[str, tuple[Any, bool]] | None = None) -> dict[str, Any]:
    """Read a ``--config`` YAML/JSON file of ``setting: value``; unknown settings raise ConfigError
    with the nearest known name ("-" and "_" are the same). ``no-X: true`` is ``X: false`` (the ``--no-X``
    flag). With ``kinds`` (``setting_kinds``) each value is read as its flag reads it."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file (expected YAML or JSON)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of setting: value")
    out, keys = {}, {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        positive = name[3:] if name.startswith("no_") else None
        if name not in known and positive in known and (kinds is None or kinds.get(positive, (None,))[0] is bool):
            if not isinstance(value, bool):
                raise ConfigError(f"--config {path}: {key}: expected true or false, got {value!r}")
            name, value = positive, not value
        elif name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"--config {path}: unknown setting {key!r}{hint}")
        if name in out:
            raise ConfigError(f"--config {path}: {keys[name]!r} and {key!r} are the same setting; give one")
        keys[name] = key
        if kinds is not None:
            value = yaml_value(f"--config {path}: {key}", value, *kinds.get(name, (None, True)))
        out[name] = value
    return out
