"""One run's settings: a single dataclass merged from defaults < YAML (``--config``) < command-line flags.

Every field is a flag of the same name (``group_sizes`` <-> ``--group-sizes``) and a YAML key (either
spelling). ``RunConfig.merge`` does the merge and ``_configure`` validates once, naming the flag to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VALID_GROUP_SIZES = (1, 2, 4, 8)
SETTINGS = ("paper", "recommended")
DTYPES = ("float32", "float16", "bfloat16")


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
    stride: int = 512
    max_windows: int | None = 4
    # multiple-choice tasks
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = 100
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
        cfg = cls(**values)
        cfg._configure()
        return cfg

    @classmethod
    def _read_yaml(cls, path: str) -> dict[str, Any]:
        return read_yaml_settings(path, cls.field_names())

    def _configure(self) -> None:
        """Validate every field once; the error names the flag."""
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
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad or not self.settings:
            raise ConfigError(f"{flag('settings')}: {bad[0] if bad else 'nothing'!r} is not a setting; "
                              f"use {', '.join(SETTINGS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{flag('dtype')}: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.distr, dict):
            raise ConfigError(f"{flag('distr')}: expected a mapping of DistrConfig fields")
        positive = ["window", "stride", "batch_size", "repeats", "gen_tokens", "gen_prompt_len"]
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
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
        for name in ("seq_lens", "batch_sizes"):
            v = getattr(self, name)
            if not v or any(not isinstance(x, int) or x <= 0 for x in v):
                raise ConfigError(f"{flag(name)}: expected a list of positive integers, got {v!r}")
        if self.lm_eval_include is not None and not Path(self.lm_eval_include).is_dir():
            raise ConfigError(f"{flag('lm_eval_include')}: {self.lm_eval_include} is not a directory")
        if self.vit_metric not in ("top-k", "fidelity"):
            raise ConfigError(f"{flag('vit_metric')}: {self.vit_metric!r} is not top-k or fidelity")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_yaml_settings(path: str, known: list[str]) -> dict[str, Any]:
    """Read a ``--config`` YAML/JSON file of ``setting: value``; unknown settings raise ConfigError
    with the nearest known name ("-" and "_" are the same)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML/JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping of setting: value")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"--config {path}: unknown setting {key!r}{hint}")
        out[name] = value
    return out
