"""``bench model``: whole-model latency, exact (the model's sdpa) vs DistrAttention at each G.

LMs: prefill time per (batch, sequence length) and ``generate()`` new tokens/s with the KV cache (batch x new
tokens over the whole call's time, which includes the prompt's prefill); vision models: images/s per batch size.
Random inputs (only the time matters), warm-up, then p20/p50/p80 of the repeats (CUDA events on the GPU) and the
peak GPU memory (MiB allocated, summed over the model's GPUs; None on the CPU). Each point records the warm-up and
timed calls it ran (``generate()``: a third of ``repeats``, at least 3, after 1-2 warm-up calls), and prefill and image
batches run back to back for ``settle_ms`` (200 ms on a GPU by default) after the warm-up. With
``cuda_graph`` the prefill and image batches are timed as replays of a captured CUDA graph (the GPU's time, without
the host's launch overhead); with ``compile`` (a torch.compile mode) through ``torch.compile(model)``, compiled afresh
for each variant.
Imports neither ``datasets`` nor ``evaluate``, so it runs on machines without them.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from ..models import load_model
from ..models.presets import VISION_TYPES
from .config import COMPILE_WARMUP, ConfigError, RunConfig
from .distributed import Shard, refuse_several_processes
from .provenance import provenance
from .results import ResultFile, model_info
from .runner import CPU_NOTE, RunOutput, compiled, finish, pick_device, run_directory, run_variants
from .timing import cuda_devices, cuda_graphed, measure
from .variants import Variant, build_variants


def _peak_reset(where) -> None:
    for d in cuda_devices(where):
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)


def _peak_mib(where) -> float | None:
    """Peak memory allocated on the CUDA devices of ``where`` (a device, or a model: all its GPUs) since
    ``_peak_reset``, in MiB, summed over the devices; None without a CUDA device (not measured)."""
    devices = cuda_devices(where)
    return sum(torch.cuda.max_memory_allocated(d) for d in devices) / 2**20 if devices else None


def settle_ms(cfg: RunConfig, device) -> float:
    """How long each timed point's call runs back to back before its timing: ``cfg.settle_ms``, or by default 200 ms
    on a CUDA device (what ran just before a timing sets the GPU's clocks: docs/benchmarks.md, thirty-second
    session) and none on the CPU."""
    if cfg.settle_ms is not None:
        return float(cfg.settle_ms)
    return 200.0 if torch.device(device).type == "cuda" else 0.0


def _timed(fn, cfg: RunConfig, device, model) -> dict:
    """p20/p50/p80 of fn (a call of ``model`` on fixed inputs), eagerly or, with ``cfg.cuda_graph``, as graph
    replays; with ``cfg.compile`` at least ``COMPILE_WARMUP`` untimed calls first (the compile and the graphs'
    recording); then ``settle_ms`` of untimed calls. Timed on every device the model is on (``timing.Timer``)."""
    if cfg.cuda_graph:
        fn = cuda_graphed(fn, device, warmup=cfg.warmup)
    warmup = max(cfg.warmup, COMPILE_WARMUP) if cfg.compile else cfg.warmup
    settle = settle_ms(cfg, device)
    return {**measure(fn, model, warmup=warmup, repeats=cfg.repeats, settle_ms=settle), "warmup": warmup,
            "settle_ms": settle, "repeats": cfg.repeats}


def _point(measure_name, batch, seq_len, timing, work, unit, where) -> dict:
    """One timed point: ``timing`` (p20/p50/p80 ms, warm-up and timed calls), ``work`` per call in ``unit``'s
    numerator, so throughput = work / p50 in ``unit`` (per second); peak memory on ``where``'s GPUs."""
    return {"measure": measure_name, "batch": batch, "seq_len": seq_len, **timing,
            "throughput": work / (timing["p50_ms"] / 1e3), "throughput_unit": unit, "peak_mem_mib": _peak_mib(where)}


@torch.no_grad()
def bench_lm(model, cfg: RunConfig, device, progress: bool, forward=None) -> dict:
    """Prefill and generate() timings; ``forward`` (default: the model) runs the prefills, e.g. a compiled model."""
    from tqdm.auto import tqdm

    forward = model if forward is None else forward
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(cfg.seed)
    prefill, generate = [], []
    points = [(b, n) for b in cfg.batch_sizes for n in cfg.seq_lens]
    for b, n in tqdm(points, desc="prefill", disable=not progress, leave=False):
        ids = torch.randint(vocab, (b, n), generator=g).to(device)
        _peak_reset(model)
        t = _timed(lambda: forward(ids, use_cache=False), cfg, device, model)
        prefill.append(_point("prefill", b, n, t, b * n, "tokens/s", model))
    for b in tqdm(cfg.batch_sizes, desc="generate", disable=not progress, leave=False):
        ids = torch.randint(vocab, (b, cfg.gen_prompt_len), generator=g).to(device)
        kw = dict(max_new_tokens=cfg.gen_tokens, min_new_tokens=cfg.gen_tokens, do_sample=False, use_cache=True,
                  pad_token_id=0, attention_mask=torch.ones_like(ids))
        _peak_reset(model)
        # a decode loop is Python-bound and noisy: at least one warm-up and the median of >= 3 runs
        warmup, repeats = max(1, min(cfg.warmup, 2)), max(3, cfg.repeats // 3)
        t = measure(lambda: model.generate(ids, **kw), model, warmup=warmup, repeats=repeats)
        point = _point("generate", b, cfg.gen_prompt_len, {**t, "warmup": warmup, "repeats": repeats},
                       b * cfg.gen_tokens, "new tokens/s", model)
        point["new_tokens"] = cfg.gen_tokens
        generate.append(point)
    return {"prefill": prefill, "generate": generate}


@torch.no_grad()
def bench_vision(model, cfg: RunConfig, device, progress: bool, forward=None) -> dict:
    """Images/s per batch size; ``forward`` (default: the model) runs the batches, e.g. a compiled model."""
    from tqdm.auto import tqdm

    forward = model if forward is None else forward
    c = model.config
    size = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
    n_tokens = (size // c.patch_size) ** 2 + (2 if c.model_type == "deit" else 1)
    out = []
    g = torch.Generator().manual_seed(cfg.seed)
    for b in tqdm(cfg.batch_sizes, desc="images", disable=not progress, leave=False):
        x = torch.randn(b, c.num_channels, size, size, generator=g).to(device, model.dtype)
        _peak_reset(model)
        t = _timed(lambda: forward(pixel_values=x), cfg, device, model)
        out.append(_point("images", b, n_tokens, t, b, "images/s", model))
    return {"images": out}


def run_bench(cfg: RunConfig, *, progress: bool = True) -> RunOutput:
    if not cfg.model:
        raise ConfigError("--model: required (e.g. preset:llama-3.2-1b, a local path, or a hub id)")
    refuse_several_processes("bench model", "its timings would share the machine with the other processes' and "
                             "each process would write the same results")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg)
    if cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph: CUDA graphs need a CUDA device, but this run is on {device}")
    variants = build_variants(cfg.group_sizes, cfg.settings, cfg.distr, cfg.distr_configs)
    is_vision = _is_vision(cfg.model)
    loaded = load_model(cfg.model, "vit" if is_vision else "lm", dtype=cfg.dtype, device_map=cfg.device_map,
                        processor=False)  # random inputs: presets too
    model = loaded.model if cfg.device_map else loaded.model.to(device)
    is_vision = model.config.model_type in VISION_TYPES
    directory = run_directory(cfg, "bench-model")
    notes = [CPU_NOTE] if device.type == "cpu" else []
    if not is_vision:
        notes += _past_max_positions(cfg, getattr(model.config, "max_position_embeddings", None))
    if cfg.cuda_graph:
        notes.append("--cuda-graph: prefill / image batches timed as CUDA-graph replays (GPU time without the host's "
                     "launch overhead, exact and DistrAttention alike); generate() ran eagerly")
    if cfg.compile:
        notes.append(f"--compile {cfg.compile}: prefill / image batches through torch.compile(model, mode="
                     f"{cfg.compile!r}), exact and DistrAttention alike, compiled afresh per variant, one static "
                     f"graph per shape, at least {COMPILE_WARMUP} warm-up calls (the compile, CUDA-graph recording); "
                     "generate() ran eagerly")
    result = ResultFile(directory / "result.json", kind="bench-model",
                        model=model_info(model, cfg.model, loaded.source, cfg.dtype),
                        config=dataclasses.asdict(cfg), provenance=provenance(device, seed=cfg.seed), notes=notes)
    result.add_dataset("inputs", "random", 0, unit="random token ids / pixels")

    def evaluate(variant: Variant) -> tuple[dict, dict]:
        with compiled(model, cfg.compile, shapes=len(cfg.batch_sizes) * len(cfg.seq_lens)) as forward:
            return {}, (bench_vision if is_vision else bench_lm)(model, cfg, device, progress, forward)

    finished = run_variants(model, variants, evaluate, result, shard=Shard(), progress=progress)
    finish(result, directory, plots=cfg.plots, interrupted=not finished)
    return RunOutput(result, directory, not finished)


def _is_vision(spec: str) -> bool:
    """Whether ``--model`` is a vision model (ViT, DeiT, DINOv2), by its config, read before loading it: a preset's,
    a local directory's config.json, else a hub id's (an alias or a .gguf file is an LM)."""
    from ..models.loading import MODEL_ALIASES
    from ..models.presets import PRESETS

    if spec.startswith("preset:"):
        return PRESETS.get(spec.split(":", 1)[1], {}).get("model_type") in VISION_TYPES
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") in VISION_TYPES
        except (OSError, ValueError, AttributeError):
            return False  # loading says what is wrong with the directory
    if path.exists() or spec in MODEL_ALIASES:
        return False
    try:
        from transformers import AutoConfig

        from ..hub import hub_kwargs

        return AutoConfig.from_pretrained(spec, **hub_kwargs()).model_type in VISION_TYPES
    except Exception:  # offline, not a model: loading it says why
        return False


def _past_max_positions(cfg: RunConfig, max_positions: int | None) -> list[str]:
    """Notes (also printed) for prefill or generate() lengths past the model's ``max_position_embeddings``: timed
    anyway (random inputs), but past the context the model was built for."""
    if not isinstance(max_positions, int):
        return []
    notes = []
    longer = [n for n in cfg.seq_lens if n > max_positions]
    if longer:
        notes.append(f"--seq-lens {','.join(map(str, longer))}: longer than the model's max_position_embeddings "
                     f"({max_positions}); timed anyway")
    if cfg.gen_prompt_len + cfg.gen_tokens > max_positions:
        notes.append(f"--gen-prompt-len {cfg.gen_prompt_len} + --gen-tokens {cfg.gen_tokens}: longer than the "
                     f"model's max_position_embeddings ({max_positions}); timed anyway")
    for n in notes:
        print(f"distr-patch: warning: {n}", file=sys.stderr)
    return notes
