"""Model patcher: model_type -> replacement entry, ``patch_model``, ``unpatch_model``, ``patched``.

Patching never rewrites modules. It (1) attaches each attention module's resolved settings as a
plain attribute ``module._distr_settings`` (no parameter, no buffer), (2) stores the DistrConfig in
``model.config.distr_config`` and (3) switches ``config._attn_implementation`` to "distr" through
``model.set_attn_implementation``, so transformers' own attention call dispatches to
``integrations.hf.distr_attention_forward``. Unpatching undoes the three.

An entry says which model types are supported and how to find their attention modules in layer
order. The built-in finder takes the modules that transformers hands to the attention function
(those with ``is_causal`` and ``scaling`` attributes), so it follows layout changes between
releases (Dinov2's attention moved from ``Dinov2SelfAttention`` in 5.17 to ``Dinov2Attention``).
Hybrid models (attention in some layers only) use ``attention_modules_by_layer_index``. Per-layer settings,
calibration and reports count layers in the entry's list (``patched_modules``), not the model's layers.
"""
from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..config import DistrConfig
from ..integrations.hf import ATTN_IMPLEMENTATION, register
from ..ops.validate import TRITON_HEAD_DIMS, check_group_size



class _Missing:
    """The marker for "no value before patching" (no ``distr_config`` on the config, no settings on a module). One
    instance, which copy.deepcopy and pickle keep (a copied or unpickled patched model still unpatches exactly)."""
    def __reduce__(self):
        return "_MISSING"  # pickle and copy: this module's global, not a new object

    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


class UnsupportedModelError(ValueError):
    """The model itself, not the settings, stands in the way: its ``config.model_type`` has no entry in the replacement
    registry, its attention computes what DistrAttention does not (softcapping, sinks, MLA), or it lives on CUDA
    with a head dim the Triton kernel lacks."""


def is_attention_module(module: torch.nn.Module) -> bool:
    """True for the modules transformers passes to the attention function (they carry is_causal and scaling)."""
    from transformers import PreTrainedModel

    return hasattr(module, "is_causal") and hasattr(module, "scaling") and not isinstance(module, PreTrainedModel)


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's attention modules in layer order (by ``layer_idx`` where they have one)."""
    mods = [m for m in model.modules() if is_attention_module(m)]
    if mods and all(isinstance(getattr(m, "layer_idx", None), int) for m in mods):
        mods.sort(key=lambda m: m.layer_idx)
        if [m.layer_idx for m in mods] != list(range(len(mods))):
            raise RuntimeError(f"attention modules of {type(model).__name__} have layer indices "
                               f"{[m.layer_idx for m in mods]}, expected 0..{len(mods) - 1}")
    return mods


def attention_modules_by_layer_index(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Hybrid models (attention in some layers, convolutions or linear attention in the others): the attention
    modules sorted by their ``layer_idx``, which skip the other layers. Per-layer settings count these modules
    (0 = the first attention layer), not the model's layers."""
    mods = [m for m in model.modules() if is_attention_module(m)]
    idx = [getattr(m, "layer_idx", None) for m in mods]
    if not all(isinstance(i, int) for i in idx) or len(set(idx)) != len(idx):
        raise RuntimeError(f"attention modules of {type(model).__name__} need distinct layer indices, got {idx}")
    return [m for _, m in sorted(zip(idx, mods), key=lambda pair: pair[0])]


@dataclass(frozen=True)
class AttentionReplacement:
    """How to patch one ``model_type``: ``find_attention(model)`` lists its attention modules in layer order."""
    model_type: str
    find_attention: Callable[[torch.nn.Module], list] = attention_modules
    family: str = "custom"


# Decoders whose attention calls the interface like Llama's (RoPE, GQA, causal + padding + sliding-window and chunked
# masks from masking_utils), each checked on a tiny model on transformers 5.0 and the newest release (exact at G=1 with
# right and left padding, generate(), unpatch; tests/patching). Not here: logit softcapping (Gemma 2, VaultGemma),
# attention sinks (gpt-oss) and a value head dim other than the query's (DeepSeek-V2/V3's MLA), which patch_model
# refuses by name; hybrid models (below); multimodal wrappers (Mistral 3, Llama 4, Gemma 3 with vision), whose vision
# encoder the finder would count as layers.
DECODER_MODEL_TYPES = (
    "llama", "llama4_text", "mistral", "ministral", "ministral3", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "phi", "phi3", "phimoe", "gemma", "gemma3_text", "olmo", "olmo2", "olmo3", "olmoe", "flex_olmo", "granite",
    "granitemoe", "granitemoeshared", "smollm3", "cohere", "cohere2", "glm", "glm4", "glm4_moe", "stablelm",
    "starcoder2", "gpt_neox", "ernie4_5", "ernie4_5_moe", "seed_oss", "exaone4", "hunyuan_v1_dense", "hunyuan_v1_moe",
    "apertus", "arcee", "helium", "bitnet", "dots1",
)
# Hybrid decoders: Llama-like attention in some layers only (LFM2: short convolutions, Qwen3-Next: linear attention in
# the others), found by attention_modules_by_layer_index.
HYBRID_MODEL_TYPES = ("lfm2", "qwen3_next")
# Vision encoders: bidirectional, no mask, N = 1 + patches (+ distillation token for DeiT).
VISION_MODEL_TYPES = ("vit", "deit", "dinov2")

_REGISTRY: dict[str, AttentionReplacement] = {}


def register_attention_replacement(model_type: str, find_attention: Callable | None = None, *,
                                   family: str = "custom", overwrite: bool = False) -> AttentionReplacement:
    """Add ``model_type`` to the registry and return its entry.

    ``find_attention(model) -> list[nn.Module]`` lists the attention modules in layer order (default:
    ``attention_modules``). The model's attention must call ``ALL_ATTENTION_FUNCTIONS.get_interface``.
    ``family``: a free label kept on the entry ("decoder", "vision" for the built-in types; "custom" by default).
    ``overwrite``: replace an existing entry of ``model_type`` (else registering it twice is a ValueError).
    """
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"model_type must be a non-empty string (a config's model_type), got {model_type!r}")
    if find_attention is not None and not callable(find_attention):
        raise TypeError("find_attention must be callable(model) -> list of modules, "
                        f"got {type(find_attention).__name__}")
    if model_type in _REGISTRY and not overwrite:
        raise ValueError(f"model_type {model_type!r} is already registered; pass overwrite=True to replace it")
    entry = AttentionReplacement(model_type, find_attention or attention_modules, family)
    _REGISTRY[model_type] = entry
    return entry


def supported_model_types() -> list[str]:
    """The registered ``model_type`` names (config.model_type values ``patch_model`` takes), sorted."""
    return sorted(_REGISTRY)


# What DistrAttention does not compute, as patch_model names it, and the types known to use it (patch_model would
# refuse them by name even if registered).
SOFTCAPPING, SINKS, MLA = ("logit softcapping", "attention sinks",
                           "a value head dim other than the query/key head dim (MLA)")
KNOWN_UNSUPPORTED = {"gemma2": SOFTCAPPING, "vaultgemma": SOFTCAPPING, "gpt_oss": SINKS, "deepseek_v2": MLA,
                     "deepseek_v3": MLA}


def get_replacement(model_type: str | None) -> AttentionReplacement:
    """The registry entry of ``model_type``; UnsupportedModelError lists the supported types."""
    if model_type not in _REGISTRY and model_type in KNOWN_UNSUPPORTED:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported by distr_patch: its attention uses "
            f"{KNOWN_UNSUPPORTED[model_type]}, which DistrAttention does not compute; keep it on "
            "attn_implementation='sdpa' or 'eager'")
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported by distr_patch; supported: {supported_model_types()}. "
            "A model whose attention goes through transformers' AttentionInterface can be added with "
            "distr_patch.register_attention_replacement(model_type) (distr_patch/patching/registry.py)")
    return _REGISTRY[model_type]


def patched_modules(model) -> list[torch.nn.Module]:
    """The attention modules ``patch_model`` puts settings on, as ``model``'s registry entry finds them (layer order:
    per-layer settings and calibration count layers in this list)."""
    entry = get_replacement(getattr(getattr(model, "config", None), "model_type", None))
    modules = list(entry.find_attention(model))  # (a user's finder may hand back any iterable)
    if not modules:
        raise RuntimeError(f"found no attention module in {type(model).__name__} ({entry.model_type})")
    return modules


for _t in DECODER_MODEL_TYPES:
    register_attention_replacement(_t, family="decoder")
for _t in HYBRID_MODEL_TYPES:
    register_attention_replacement(_t, attention_modules_by_layer_index, family="hybrid")
for _t in VISION_MODEL_TYPES:
    register_attention_replacement(_t, family="vision")


# --------------------------------------------------------------------------- patching
@dataclass
class _PatchState:
    attn_implementation: str | None
    distr_config: object  # the config's previous distr_config, or _MISSING


def _unsupported_attention(module) -> str | None:
    """What in ``module``'s attention DistrAttention cannot compute (None: nothing). Checked at patch time, for every
    layer: a layer kept exact runs SDPA, which would drop a softcap or sinks without a word."""
    softcap = getattr(module, "attn_logit_softcapping", None)
    if softcap is not None:
        return f"{SOFTCAPPING} (attn_logit_softcapping={softcap})"
    if getattr(module, "sinks", None) is not None:
        return SINKS
    qk, v = getattr(module, "qk_head_dim", None), getattr(module, "v_head_dim", None)
    if isinstance(qk, int) and isinstance(v, int) and qk != v:
        return f"a value head dim ({v}) other than the query/key head dim ({qk})"  # MLA, with the two dims
    return None


def _head_dim(module, model_config) -> int:
    for name in ("head_dim", "attention_head_size"):
        if isinstance(getattr(module, name, None), int):
            return getattr(module, name)
    return getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads


def _as_config(model, config) -> DistrConfig:
    if config is None:  # the model's own settings (from before any patch_model), else the defaults
        state = getattr(model, "_distr_patch_state", None)
        raw = getattr(model.config, "distr_config", None) if state is None else state.distr_config
        return DistrConfig() if raw is None or raw is _MISSING else DistrConfig.from_dict(raw)
    if isinstance(config, dict):
        return DistrConfig.from_dict(config)
    if not isinstance(config, DistrConfig):
        raise TypeError(f"config must be a DistrConfig, a dict or None, got {type(config).__name__}")
    return config.replace()  # re-validated copy: fields may have been edited after construction


# id(config) -> the model patch_model switched through that config object. transformers keeps attn_implementation on
# the config, so another model built from the same config object switches too; the adapter warns when one runs.
_PATCHED_CONFIGS: "weakref.WeakValueDictionary[int, torch.nn.Module]" = weakref.WeakValueDictionary()


def patched_through(config):
    """The model that ``patch_model`` switched through this config object, or None."""
    return _PATCHED_CONFIGS.get(id(config))


def _set_attn_implementation(model, name) -> None:
    try:
        model.set_attn_implementation(name)
    except (ValueError, OSError, TypeError) as e:
        raise RuntimeError(f"{type(model).__name__} refused attn_implementation={name!r}: {e}") from e
    if model.config._attn_implementation != name:
        raise RuntimeError(f"transformers did not switch {type(model).__name__} to attn_implementation={name!r} "
                           "(its log says why: a model that does not dispatch attention through AttentionInterface, "
                           "or whose class source transformers cannot read, e.g. one defined in a notebook cell)")


def is_patched(model) -> bool:
    """True while ``model`` is patched by ``patch_model``."""
    return getattr(model, "_distr_patch_state", None) is not None


def _resolve(model, config, layers):
    """(attention modules, DistrConfig, per-layer settings) for patching ``model``; raises what patch_model raises
    for a config the model cannot take (layer or head indices out of range, G not dividing the head dim, a head dim
    the Triton kernel lacks on a model on CUDA)."""
    register()
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"patch_model: model must be a loaded transformers model (a torch.nn.Module with a .config), "
                        f"got {type(model).__name__}")
    modules = patched_modules(model)
    n = len(modules)
    for i, module in enumerate(modules):
        reason = _unsupported_attention(module)
        if reason is not None:
            raise UnsupportedModelError(f"patch_model: {type(module).__name__} (layer {i}) uses {reason}, which "
                                        "DistrAttention does not compute; keep this model on "
                                        "attn_implementation='sdpa' or 'eager'")
    cfg = _as_config(model, config)
    if layers is not None:
        if not isinstance(layers, Iterable) or isinstance(layers, (str, bytes)):
            raise TypeError(f"patch_model: layers must be a list of layer indices, got {layers!r}")
        layers = list(layers)  # a generator is read once
        bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool)]
        if bad:
            raise TypeError(f"patch_model: layers must hold int layer indices, got {bad[0]!r}")
        keep = {cfg._resolve_index(i, n, "layers entry") for i in layers}
        cfg = cfg.replace(exact_layers=tuple(i for i in range(n) if i not in keep), exact_first=0, exact_last=0)
    cfg.check_layers(n, getattr(model.config, "num_attention_heads", None))
    settings = [cfg.for_layer(i, n) for i in range(n)]
    if all(s.exact for s in settings):
        warnings.warn(f"patch_model: this config keeps all {n} layers exact (exact_first, exact_last, exact_layers or "
                      "layers): the model runs exact attention only", stacklevel=3)
    on_cuda = _on_cuda(model)
    for i, (module, s) in enumerate(zip(modules, settings)):
        if not s.exact:
            d = _head_dim(module, model.config)
            for where, g in [(f"layer {i}", s.group_size),
                             *((f"layer {i} head {h}", hs.group_size) for h, hs in s.heads.items())]:
                try:
                    check_group_size(g, d)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
            if on_cuda and d not in TRITON_HEAD_DIMS:  # each grouped call would fail (either engine)
                raise UnsupportedModelError(
                    f"patch_model: layer {i}: head dim {d} on CUDA: the Triton kernel takes head dims "
                    f"{', '.join(map(str, TRITON_HEAD_DIMS))}; keep this model on attn_implementation='sdpa', or run "
                    "DistrAttention on the CPU (the PyTorch reference)")
    return modules, cfg, settings


def _on_cuda(model) -> bool:
    """True when a parameter of ``model`` lives on a CUDA device (where DistrAttention runs the Triton kernel)."""
    return any(p.is_cuda for p in model.parameters())


def check_patchable(model, config: DistrConfig | dict | None = None, layers: Iterable[int] | None = None) -> None:
    """Raise what ``patch_model(model, config, layers)`` would raise for a config the model cannot take, without
    patching (e.g. to check every variant of a run before the first one runs)."""
    _resolve(model, config, layers)


def _put_back(model, module_settings, distr_config) -> None:
    """Each (module, its ``_distr_settings`` or _MISSING) and ``config.distr_config`` (or _MISSING) as they were."""
    for module, settings in module_settings:
        if settings is _MISSING:
            module.__dict__.pop("_distr_settings", None)
        else:
            module._distr_settings = settings
    if distr_config is _MISSING:
        model.config.__dict__.pop("distr_config", None)
    else:
        model.config.distr_config = distr_config


def patch_model(model, config: DistrConfig | dict | None = None, layers: Iterable[int] | None = None):
    """Put DistrAttention into ``model`` in place and return it.

    Args:
        model: a transformers ``PreTrainedModel`` whose ``config.model_type`` is registered.
        config: DistrConfig (or its dict); None: the model's own ``config.distr_config`` (as loaded,
            before any ``patch_model``) if set, else ``DistrConfig()``.
        layers: if given, only these layer indices use DistrAttention; all others stay exact
            (replaces the config's exact-layer selection).

    Parameters, buffers and the state_dict are untouched; ``unpatch_model`` restores the model exactly.
    Patching a patched model replaces its settings (unpatch still restores the original). A config the model
    cannot take, or a switch transformers refuses, raises and leaves the model as it was.
    ``save_pretrained`` keeps ``config.distr_config`` but not the switch (config.json holds no attention
    implementation): reload with ``attn_implementation="distr"``, or ``patch_model(model)`` after loading.
    """
    modules, cfg, settings = _resolve(model, config, layers)
    state = getattr(model, "_distr_patch_state", None)
    before = [module.__dict__.get("_distr_settings", _MISSING) for module in modules]
    config_before = model.config.__dict__.get("distr_config", _MISSING)
    if state is None:
        state = _PatchState(model.config._attn_implementation, config_before)
    for module, s in zip(modules, settings):
        module._distr_settings = s
    model.config.distr_config = cfg.to_dict()
    try:
        _set_attn_implementation(model, ATTN_IMPLEMENTATION)
    except BaseException:  # leave the model as it was
        _put_back(model, zip(modules, before), config_before)
        raise
    model._distr_patch_state = state
    _PATCHED_CONFIGS[id(model.config)] = model
    return model


def unpatch_model(model):
    """Undo ``patch_model`` in place (outputs bit-identical to before patching) and return the model."""
    state = getattr(model, "_distr_patch_state", None)
    if state is None:
        raise ValueError(f"unpatch_model: this {type(model).__name__} is not patched by distr_patch.patch_model")
    for module in model.modules():
        for attr in ("_distr_settings", "_distr_settings_auto"):
            module.__dict__.pop(attr, None)
    if state.distr_config is _MISSING:
        model.config.__dict__.pop("distr_config", None)
    else:
        model.config.distr_config = state.distr_config
    _set_attn_implementation(model, state.attn_implementation)
    del model._distr_patch_state
    _PATCHED_CONFIGS.pop(id(model.config), None)
    return model


@contextlib.contextmanager
def patched(model, config: DistrConfig | dict | None = None, layers: Iterable[int] | None = None):
    """``with patched(model, cfg): ...`` runs the block with DistrAttention, then restores the model.

    ``config`` and ``layers`` are ``patch_model``'s: a DistrConfig (or its dict; None: ``DistrConfig()``), and the
    layer indices to patch (None: every layer the config groups; the others run exact attention).

    On an already patched model the block runs with ``config``, and the settings the model ran with before it come
    back as they were (each layer's, and ``config.distr_config`` as it stood, edited or not).
    """
    if not is_patched(model):
        patch_model(model, config, layers)
        try:
            yield model
        finally:
            if is_patched(model):  # (the block may have unpatched it itself)
                unpatch_model(model)
        return
    saved = [(m, m.__dict__.get("_distr_settings", _MISSING)) for m in model.modules()]
    config_saved = model.config.__dict__.get("distr_config", _MISSING)
    patch_model(model, config, layers)
    try:
        yield model
    finally:
        if not is_patched(model):  # the block unpatched it: switch back first, then put the settings back
            patch_model(model)
        for module, _ in saved:
            module.__dict__.pop("_distr_settings_auto", None)
        _put_back(model, saved, config_saved)
