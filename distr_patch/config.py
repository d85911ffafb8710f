"""DistrConfig: the DistrAttention settings of a patched model, per layer and per query head.

One dataclass, validated on construction. ``for_layer(i, num_layers)`` resolves the
settings that layer ``i`` runs with (base fields < ``layer_overrides[i]``; layers kept
exact). ``to_dict``/``from_dict`` and ``save``/``load`` (JSON) round-trip it; the patcher
stores ``to_dict()`` in ``model.config.distr_config`` so ``save_pretrained`` keeps it.

Per head: ``head_overrides = {layer: {query head: {field: value}}}`` takes the same fields as
``layer_overrides`` and applies on top of the layer's settings (base < ``layer_overrides[i]`` <
``head_overrides[i][h]``); ``{"group_size": 1}`` keeps a head exact. ``for_layer`` still returns the
layer's ``LayerSettings``; its ``heads`` maps each overridden head to that head's resolved
``LayerSettings`` and ``LayerSettings.for_head(h)`` gives any head's (the layer's own for heads not
listed). Layer keys count from the end when negative, like ``layer_overrides``; head indices are
query-head indices >= 0 (GQA: head h reads KV head h // (Hq // Hkv)). A layer kept exact stays exact
whatever its heads say. ``check_layers(num_layers, num_heads)`` checks the indices against a model.

Defaults are the product's recommendation, not the paper's: G=2 with rank-1 fusion, a
128-token exact window and window correction 0.5. It is the most accurate G=2 setting the
operator's measurements point to so far (``scripts/demo_operator.py``, random causal
inputs, N=512, d=64: relative error 0.22 vs 0.54 for the paper's setting) and keeps the
fused kernel's cost (one pass; the band is 2·128 of N keys). Revisit with model-level
results from the evaluation harness. ``DistrConfig.paper()`` is the paper's setting
(mean fusion, block_m 128, no exact window).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field

from .ops.grouping import FUSIONS
from .ops.validate import check_block_m, check_group_size, check_hash_bits, check_seed, check_window_correction

# Calls with fewer query rows than this run exact attention: a KV-cache decode step (1 row)
# or a short speculative/assisted chunk reads all of K/V whatever G is, so grouping saves
# nothing there, and an LSH grouping fitted to a handful of rows is a poor one.
DEFAULT_EXACT_BELOW = 16

# DistrConfig.engine values: the operator's own choice, or SDPA on Q_eff wherever it runs the call.
ENGINES = ("auto", "sdpa")

# Fields that ``layer_overrides`` may set for one layer.
LAYER_FIELDS = ("group_size", "block_m", "fusion", "exact_window", "window_correction", "num_hash_bits", "seed",
                "exact_below")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_layer_fields(values: dict, where: str) -> None:
    """Validate the per-layer fields in ``values``; messages name ``where`` (e.g. 'layer_overrides[3]')."""
    def named(fn, key):
        try:
            fn(values[key])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    if "group_size" in values:
        named(check_group_size, "group_size")
    if "block_m" in values:
        named(check_block_m, "block_m")
    if "num_hash_bits" in values:
        named(check_hash_bits, "num_hash_bits")
    if "fusion" in values and values["fusion"] not in FUSIONS:
        raise ValueError(f"{where}: fusion must be one of {FUSIONS}, got {values['fusion']!r}")
    if "exact_window" in values and (not _is_int(values["exact_window"]) or values["exact_window"] < 0):
        raise ValueError(f"{where}: exact_window must be an int >= 0, got {values['exact_window']!r}")
    if "window_correction" in values:
        named(check_window_correction, "window_correction")
    if "seed" in values:
        named(check_seed, "seed")
    if "exact_below" in values and (not _is_int(values["exact_below"]) or values["exact_below"] < 1):
        raise ValueError(f"{where}: exact_below must be an int >= 1, got {values['exact_below']!r}")


def _index(key, what: str, kind: str) -> int:
    """An int index from a dict key (JSON turns int keys into strings: '3' and '-1' are accepted)."""
    idx = key
    if isinstance(key, str):
        try:
            idx = int(key)
        except ValueError:
            raise TypeError(f"{what} must be int {kind} indices, got {key!r}") from None
    if not _is_int(idx):
        raise TypeError(f"{what} must be int {kind} indices, got {key!r}")
    return idx


def _fields(values, where: str) -> dict:
    """A validated copy of one override dict {field: value} (``where`` names it in errors)."""
    if not isinstance(values, dict):
        raise TypeError(f"{where} must be a dict of fields, got {type(values).__name__}")
    _unknown(values, LAYER_FIELDS, where)
    _check_layer_fields(values, where)
    return dict(values)


def _unknown(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; allowed: {sorted(allowed)}"
            raise ValueError(f"{where}: unknown field {key!r}{hint}")


@dataclass(frozen=True)
class LayerSettings:
    """Resolved settings of one attention layer (what the attention adapter reads)."""
    group_size: int
    block_m: int
    fusion: str
    exact_window: int
    window_correction: float
    num_hash_bits: int
    seed: int
    exact_below: int
    exact: bool = False  # True: the layer runs transformers' exact SDPA attention
    engine: str = "auto"  # DistrConfig.engine (model-wide)
    # Query heads whose settings differ from the layer's: {head index: resolved settings} (empty: all alike).
    heads: dict[int, "LayerSettings"] = field(default_factory=dict, hash=False)

    def for_head(self, head: int) -> "LayerSettings":
        """The settings query head ``head`` runs with (``heads[head]``, else the layer's own, without ``heads``)."""
        if head in self.heads:
            return self.heads[head]
        return dataclasses.replace(self, heads={}) if self.heads else self

    def operator_kwargs(self) -> dict:
        """Keyword arguments for ``distr_attention`` (everything but the tensors, masks and scale)."""
        return dict(group_size=self.group_size, block_m=self.block_m, fusion=self.fusion,
                    exact_window=self.exact_window, window_correction=self.window_correction,
                    num_hash_bits=self.num_hash_bits, seed=self.seed)


@dataclass
class DistrConfig:
    """DistrAttention settings for a model; see the module docstring for the defaults.

    Args:
        group_size: G in {1, 2, 4, 8}, dividing the head dim (G=1: the operator computes exact attention).
        block_m: query rows per grouping block, in {32, 64, 128}.
        fusion: "rank1" (recommended) or "mean" (the paper).
        exact_window: W >= 0; scores within W tokens of the diagonal use the full head dim.
        window_correction: c >= 0; lowers grouped scores outside the band by c·σ²/2.
        num_hash_bits, seed: the LSH (hash directions come from a generator seeded by ``seed``).
        exact_below: calls with fewer query rows run exact attention (default 16: decode steps).
        exact_layers: layer indices kept exact (negative ones count from the end).
        exact_first, exact_last: keep the first / last k layers exact.
        layer_overrides: {layer index: {field: value}} for the fields in ``LAYER_FIELDS``.
        head_overrides: {layer index: {query head index: {field: value}}}, the same fields, on top of the
            layer's settings; {"group_size": 1} keeps a head exact.
        engine: "auto" (the operator's choice: the fused Triton kernel on CUDA, the PyTorch reference on CPU)
            or "sdpa": each call that torch's SDPA on Q_eff can run goes there (no tensor mask, N == M when
            causal; with an exact window also N == M and no gradient, i.e. inference), the others to "auto"
            (``ops.configs.sdpa_runs``). Model-wide.
    """
    group_size: int = 2
    block_m: int = 128
    fusion: str = "rank1"
    exact_window: int = 128
    window_correction: float = 0.5
    num_hash_bits: int = 16
    seed: int = 0
    exact_below: int = DEFAULT_EXACT_BELOW
    exact_layers: tuple[int, ...] = ()
    exact_first: int = 0
    exact_last: int = 0
    layer_overrides: dict[int, dict] = field(default_factory=dict)
    head_overrides: dict[int, dict[int, dict]] = field(default_factory=dict)
    engine: str = "auto"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if isinstance(self.exact_layers, (str, bytes)) or not hasattr(self.exact_layers, "__iter__"):
            raise TypeError(f"exact_layers must be a list of layer indices, got {self.exact_layers!r}")
        self.exact_layers = tuple(self.exact_layers)
        for i in self.exact_layers:
            if not _is_int(i):
                raise TypeError(f"exact_layers must hold int layer indices, got {i!r}")
        for name in ("exact_first", "exact_last"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.layer_overrides, dict):
            raise TypeError(f"layer_overrides must be a dict {{layer index: {{field: value}}}}, "
                            f"got {type(self.layer_overrides).__name__}")
        overrides = {}
        for key, values in self.layer_overrides.items():
            idx = _index(key, "layer_overrides keys", "layer")
            overrides[idx] = _fields(values, f"layer_overrides[{idx}]")
        self.layer_overrides = overrides
        if not isinstance(self.head_overrides, dict):
            raise TypeError(f"head_overrides must be a dict {{layer index: {{head index: {{field: value}}}}}}, "
                            f"got {type(self.head_overrides).__name__}")
        heads: dict[int, dict[int, dict]] = {}
        for key, per_head in self.head_overrides.items():
            idx = _index(key, "head_overrides keys", "layer")
            if not isinstance(per_head, dict):
                raise TypeError(f"head_overrides[{idx}] must be a dict {{head index: {{field: value}}}}, "
                                f"got {type(per_head).__name__}")
            layer = heads.setdefault(idx, {})
            for hkey, values in per_head.items():
                h = _index(hkey, f"head_overrides[{idx}] keys", "query head")
                if h < 0:
                    raise ValueError(f"head_overrides[{idx}] keys must be query head indices >= 0, got {hkey!r}")
                layer[h] = _fields(values, f"head_overrides[{idx}][{h}]")
        self.head_overrides = heads
        _check_layer_fields({f: getattr(self, f) for f in LAYER_FIELDS}, "DistrConfig")

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **changes) -> "DistrConfig":
        """The paper's setting: mean fusion, block_m 128, no exact window, G=2."""
        base = dict(group_size=2, block_m=128, fusion="mean", exact_window=0, window_correction=0.0)
        return cls(**{**base, **changes})

    @classmethod
    def exact(cls, **changes) -> "DistrConfig":
        """G=1 everywhere: the operator computes exact attention (a baseline for tests and evaluations)."""
        return cls(**{**dict(group_size=1, exact_window=0, window_correction=0.0), **changes})

    def replace(self, **changes) -> "DistrConfig":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ per layer
    def _resolve_index(self, i: int, num_layers: int | None, what: str) -> int:
        given = i
        if i < 0:
            if num_layers is None:
                raise ValueError(f"{what} {i} counts from the end: the number of layers is needed")
            i += num_layers
        if num_layers is not None and not 0 <= i < num_layers:
            raise ValueError(f"{what} {given} is out of range for a model with {num_layers} layers "
                             f"(valid: {-num_layers} .. {num_layers - 1})")
        return i

    def is_layer_uniform(self) -> bool:
        """True when every layer resolves to the same settings (no layer index needed)."""
        return not (self.exact_layers or self.exact_first or self.exact_last or self.layer_overrides
                    or self.head_overrides)

    def check_layers(self, num_layers: int, num_heads: int | None = None) -> None:
        """Raise ValueError if a layer index in this config does not exist in a ``num_layers``-layer model, or
        (given ``num_heads``, query heads per layer) a head index in ``head_overrides`` does not."""
        for name in ("exact_first", "exact_last"):
            if getattr(self, name) > num_layers:
                raise ValueError(f"{name}={getattr(self, name)} is more than the model's {num_layers} layers")
        for i in self.exact_layers:
            self._resolve_index(i, num_layers, "exact_layers entry")
        self._one_key_per_layer("layer_overrides", num_layers)
        self._one_key_per_layer("head_overrides", num_layers)
        for i, per_head in self.head_overrides.items():
            for h in per_head:
                if num_heads is not None and h >= num_heads:
                    raise ValueError(f"head_overrides[{i}]: query head {h} is out of range for a model with "
                                     f"{num_heads} attention heads")

    def _one_key_per_layer(self, name: str, num_layers: int | None) -> dict[int, int]:
        """{layer: key} of ``layer_overrides`` or ``head_overrides``; a ValueError when two keys (such as 1 and -1 in
        a 2-layer model) name one layer: which one applied would depend on the dict's order, which saving sorts."""
        layers: dict[int, int] = {}
        for key in getattr(self, name):
            i = self._resolve_index(key, num_layers, f"{name} key")
            if i in layers:
                raise ValueError(f"{name} keys {layers[i]} and {key} both name layer {i} of a {num_layers}-layer "
                                 "model; give each layer one key")
            layers[i] = key
        return layers

    def for_layer(self, layer_idx: int | None, num_layers: int | None = None) -> LayerSettings:
        """Settings of layer ``layer_idx`` of a ``num_layers``-layer model (None: a layer-uniform config)."""
        if layer_idx is None:
            if not self.is_layer_uniform():
                raise ValueError("this DistrConfig has per-layer settings, so the layer index is needed")
            values = {f: getattr(self, f) for f in LAYER_FIELDS}
            return LayerSettings(**values, exact=False, engine=self.engine)
        if self.exact_last and num_layers is None:
            raise ValueError("exact_last needs the number of layers")
        i = self._resolve_index(layer_idx, num_layers, "layer index")
        values = {f: getattr(self, f) for f in LAYER_FIELDS}
        key = self._one_key_per_layer("layer_overrides", num_layers).get(i)
        if key is not None:
            values.update(self.layer_overrides[key])
        exact = (i < self.exact_first
                 or (num_layers is not None and i >= num_layers - self.exact_last)
                 or any(self._resolve_index(j, num_layers, "exact_layers entry") == i for j in self.exact_layers))
        key = self._one_key_per_layer("head_overrides", num_layers).get(i)
        per_head = {h: dict(over) for h, over in self.head_overrides[key].items()} if key is not None else {}
        heads = {} if exact else {h: LayerSettings(**{**values, **over}, engine=self.engine)
                                  for h, over in sorted(per_head.items())}
        return LayerSettings(**values, exact=exact, heads=heads, engine=self.engine)

    def for_head(self, layer_idx: int, head: int, num_layers: int | None = None) -> LayerSettings:
        """Settings of query head ``head`` of layer ``layer_idx`` (``for_layer(...).for_head(head)``)."""
        return self.for_layer(layer_idx, num_layers).for_head(head)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """A JSON-able dict (layer and head indices become strings in JSON; ``from_dict`` accepts both)."""
        d = dataclasses.asdict(self)
        d["exact_layers"] = list(self.exact_layers)
        d["layer_overrides"] = {int(k): dict(v) for k, v in self.layer_overrides.items()}
        d["head_overrides"] = {int(k): {int(h): dict(v) for h, v in heads.items()}
                               for k, heads in self.head_overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DistrConfig":
        """Inverse of ``to_dict``; unknown keys raise ValueError with the nearest field name."""
        if isinstance(d, DistrConfig):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"DistrConfig.from_dict needs a dict, got {type(d).__name__}")
        names = _FIELDS if cls is DistrConfig else [f.name for f in dataclasses.fields(cls)]
        _unknown(d, names, "DistrConfig")
        return cls(**d)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DistrConfig":
        """Read a JSON file written by ``save``."""
        with open(path) as f:
            return cls.from_dict(json.load(f))


_FIELDS = [f.name for f in dataclasses.fields(DistrConfig)]  # at import: torch.compile cannot trace fields()
