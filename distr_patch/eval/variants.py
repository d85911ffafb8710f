"""The variants a run compares: exact attention first, then DistrAttention per group size and setting.

A setting is a starting DistrConfig: ``paper`` (``DistrConfig.paper()``: mean fusion, no exact window)
or ``recommended`` (``DistrConfig()``: rank-1 fusion with an exact window). The run's ``distr`` fields
(e.g. the layer selection) are applied on top, then ``group_size``. G=1 is exact attention computed by
the patched path, so it appears once whatever the settings.
"""
from __future__ import annotations

import contextlib
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


def build_variants(group_sizes: list[int], settings: list[str], overrides: dict[str, Any] | None = None) -> list[Variant]:
    variants = [Variant("exact")]
    for g in group_sizes:
        for setting in (settings[:1] if g == 1 else settings):
            name = "G1" if g == 1 else (f"G{g}" if len(settings) == 1 else f"G{g}-{SHORT[setting]}")
            variants.append(Variant(name, g, setting, distr_config_dict(setting, g, dict(overrides or {}))))
    return variants


@contextlib.contextmanager
def applied(model, variant: Variant):
    """Patch ``model`` for ``variant`` for the duration of the block (exact: leave it as it is)."""
    if variant.is_exact:
        yield model
        return
    DistrConfig, patched = _patcher()
    with patched(model, DistrConfig.from_dict(variant.distr)):
        yield model
