"""``bench model``: whole-model latency, exact (the model's sdpa) vs DistrAttention at each G.

LMs: prefill time per (batch, sequence length) and ``generate()`` decode tokens/s with the KV cache;
vision models: images/s per batch size. Random inputs (only the time matters), warm-up, then p20/p50/p80
of the repeats (CUDA events on the GPU) and the peak GPU memory. With ``cuda_graph`` the prefill and image
batches are timed as replays of a captured CUDA graph (the GPU's time, without the host's launch overhead); with
``compile`` (a torch.compile mode) through ``torch.compile(model)``, compiled afresh for each variant.
Imports neither ``datasets`` nor ``evaluate``, so it runs on machines without them.
"""
from __future__ import annotations

import dataclasses

import torch

from ..models import load_model
from ..models.presets import VISION_TYPES
from .config import COMPILE_WARMUP, ConfigError, RunConfig
from .distributed import Shard
from .provenance import provenance
from .results import ResultFile, model_info
from .runner import CPU_NOTE, RunOutput, compiled, finish, pick_device, run_directory, run_variants
from .timing import cuda_graphed, measure
from .variants import Variant, build_variants


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _timed(fn, cfg: RunConfig, device, model) -> dict:
    """p20/p50/p80 of fn (a call of ``model`` on fixed inputs), eagerly or, with ``cfg.cuda_graph``, as graph
    replays; with ``cfg.compile`` at least ``COMPILE_WARMUP`` untimed calls first (the compile and the graphs'
    recording). Timed on every device the model is on (``timing.Timer``)."""
    if cfg.cuda_graph:
        fn = cuda_graphed(fn, device, warmup=cfg.warmup)
    warmup = max(cfg.warmup, COMPILE_WARMUP) if cfg.compile else cfg.warmup
    return measure(fn, model, warmup=warmup, repeats=cfg.repeats)


def _point(measure_name, batch, seq_len, timing, work, unit, device) -> dict:
    return {"measure": measure_name, "batch": batch, "seq_len": seq_len, **timing,
            "throughput": work / (timing["p50_ms"] / 1e3), "throughput_unit": unit, "peak_mem_mib": _peak_mib(device)}


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
        _peak_reset(device)
        t = _timed(lambda: forward(ids, use_cache=False), cfg, device, model)
        prefill.append(_point("prefill", b, n, t, b * n, "tokens/s", device))
    for b in tqdm(cfg.batch_sizes, desc="generate", disable=not progress, leave=False):
        ids = torch.randint(vocab, (b, cfg.gen_prompt_len), generator=g).to(device)
        kw = dict(max_new_tokens=cfg.gen_tokens, min_new_tokens=cfg.gen_tokens, do_sample=False, use_cache=True,
                  pad_token_id=0, attention_mask=torch.ones_like(ids))
        _peak_reset(device)
        # a decode loop is Python-bound and noisy: at least one warm-up and the median of >= 3 runs
        t = measure(lambda: model.generate(ids, **kw), model, warmup=max(1, min(cfg.warmup, 2)),
                    repeats=max(3, cfg.repeats // 3))
        point = _point("generate", b, cfg.gen_prompt_len, t, b * cfg.gen_tokens, "new tokens/s", device)
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
        _peak_reset(device)
        t = _timed(lambda: forward(pixel_values=x), cfg, device, model)
        out.append(_point("images", b, n_tokens, t, b, "images/s", device))
    return {"images": out}


def run_bench(cfg: RunConfig, *, progress: bool = True) -> RunOutput:
    if not cfg.model:
        raise ConfigError("--model: required (e.g. preset:llama-3.2-1b, a local path, or a hub id)")
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg)
    if cfg.cuda_graph and device.type != "cuda":
        raise ConfigError(f"--cuda-graph: CUDA graphs need a CUDA device, but this run is on {device}")
    variants = build_variants(cfg.group_sizes, cfg.settings, cfg.distr, cfg.distr_configs)
    is_vision = cfg.model.startswith("preset:") and _preset_is_vision(cfg.model)
    loaded = load_model(cfg.model, "vit" if is_vision else "lm", dtype=cfg.dtype, device_map=cfg.device_map)
    model = loaded.model if cfg.device_map else loaded.model.to(device)
    if not cfg.model.startswith("preset:"):
        is_vision = model.config.model_type in VISION_TYPES
    directory = run_directory(cfg, "bench-model")
    notes = [CPU_NOTE] if device.type == "cpu" else []
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


def _preset_is_vision(spec: str) -> bool:
    from ..models.presets import PRESETS

    return PRESETS.get(spec.split(":", 1)[1], {}).get("model_type") in VISION_TYPES
