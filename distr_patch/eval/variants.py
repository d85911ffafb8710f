"""The variants a run compares: exact attention first, then DistrAttention per group size and setting.

A setting is a starting DistrConfig: ``paper`` (``DistrConfig.paper()``: mean fusion, no exact window)
or ``recommended`` (``DistrConfig()``: rank-1 fusion with an exact window). The run's ``distr`` fields
(e.g. the layer selection) are applied on top, then ``group_size``. G=1 is exact attention computed by
the patched path, so it appears once whatever the settings.

``distr_configs`` adds one variant per DistrConfig JSON file, taken as it is (``distr`` fields on top): e.g.
the per-layer configs that ``distr-patch calibrate`` writes. Such a variant is named ``cfg:<file stem>``,
its setting is ``file:<file stem>`` and its ``group_size`` is the largest G its settings name.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError

SHORT = {"paper": "paper", "recommended": "rec"}


@dataclass(frozen=True)
class Variant:
    name: str
    group_size: int | None = None  # None: exact attention (the model's own implementation)
    setting: str | None = None
    distr: dict[str, Any] = field(default_factory=dict)  # DistrConfig.to_dict() of the patched variants

    @property
    def is_exact(self) -> bool:
        return self.group_size is None


def _patcher():
    try:
        from distr_patch import DistrConfig, patched
    except ImportError as e:  # the patcher is a separate part of the package
        raise ImportError(f"the DistrAttention patcher is unavailable ({e}); it provides "
                          f"distr_patch.patched / DistrConfig") from e
    return DistrConfig, patched


def distr_config_dict(setting: str, group_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """The full DistrConfig (as a dict) of one variant; errors name ``--distr`` for bad fields."""
    DistrConfig, _ = _patcher()
    base = DistrConfig.paper() if setting == "paper" else DistrConfig()
    fields = {**base.to_dict(), **overrides, "group_size": group_size}
    try:
        return DistrConfig.from_dict(fields).to_dict()
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--distr {overrides}: not a valid DistrConfig for {setting} at G={group_size}: {e}") from e


def load_config_file(path, overrides: dict[str, Any] | None = None, *, flag_name: str = "--distr-configs") -> dict:
    """A DistrConfig JSON file (``DistrConfig.save``), ``overrides`` on top, as a full dict; errors name the flag."""
    DistrConfig, _ = _patcher()
    try:
        cfg = DistrConfig.load(path)
        return DistrConfig.from_dict({**cfg.to_dict(), **dict(overrides or {})}).to_dict()
    except FileNotFoundError:
        raise ConfigError(f"{flag_name}: {path} does not exist") from None
    except (TypeError, ValueError, KeyError) as e:  # bad JSON is a ValueError too
        raise ConfigError(f"{flag_name}: {path} is not a DistrConfig JSON file: {e}") from None


def file_variant(path, overrides: dict[str, Any] | None = None) -> Variant:
    """The variant of one DistrConfig file: ``cfg:<stem>``, G = the largest G its settings name (the base's
    and every layer override's; the file alone does not say which layers the base covers)."""
    distr = load_config_file(path, overrides)
    stem = Path(path).stem
    g = max([distr["group_size"], *(o.get("group_size", distr["group_size"])
                                    for o in distr.get("layer_overrides", {}).values())])
    return Variant(f"cfg:{stem}", g, f"file:{stem}", distr)


def build_variants(group_sizes: list[int], settings: list[str], overrides: dict[str, Any] | None = None,
                   config_files: list[str] | tuple = ()) -> list[Variant]:
    if group_sizes and "group_size" in (overrides or {}):
        raise ConfigError(f"--distr group_size={overrides['group_size']}: the variants take G from --group-sizes "
                          f"({','.join(map(str, group_sizes))}); drop it from --distr (per layer: layer_overrides)")
    variants = [Variant("exact")]
    for g in group_sizes:
        for setting in (settings[:1] if g == 1 else settings):
            name = "G1" if g == 1 else (f"G{g}" if len(settings) == 1 else f"G{g}-{SHORT[setting]}")
            variants.append(Variant(name, g, setting, distr_config_dict(setting, g, dict(overrides or {}))))
    for path in config_files:
        v = file_variant(path, overrides)
        if any(v.name == u.name for u in variants):
            raise ConfigError(f"--distr-configs: two files named {v.name[4:]!r}; variants are named by file stem")
        variants.append(v)
    if len(variants) == 1:
        raise ConfigError("--group-sizes/--distr-configs: no DistrAttention variant to compare with exact attention")
    return variants


def check_variants(model, variants: list[Variant]) -> None:
    """A ConfigError, before anything runs, for a variant whose settings ``model`` cannot take (a layer or head
    index it lacks, a group size that does not divide its head dim)."""
    DistrConfig, _ = _patcher()
    from ..patching.registry import check_patchable

    for v in variants:
        if v.is_exact:
            continue
        try:
            check_patchable(model, DistrConfig.from_dict(v.distr))
        except (TypeError, ValueError, RuntimeError) as e:
            source = f" (--distr-configs {v.setting[5:]})" if (v.setting or "").startswith("file:") else ""
            raise ConfigError(f"variant {v.name}{source} does not fit this model: {e}") from None


@contextlib.contextmanager
def applied(model, variant: Variant):
    """Patch ``model`` for ``variant`` for the duration of the block (exact: leave it as it is)."""
    if variant.is_exact:
        yield model
        return
    DistrConfig, patched = _patcher()
    with patched(model, DistrConfig.from_dict(variant.distr)):
        yield model
