"""The loop every run shares: each variant patched in turn, recorded and saved as it finishes.

Ctrl-C stops the run between or inside a variant: the file keeps the finished variants with
``status: interrupted``, and the table and plots are still written from them.
"""
from __future__ import annotations

import contextlib
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import DEVICE_MAP_STRATEGIES, RunConfig
from .distributed import Shard, check_device, process_state
from .results import ResultFile
from .variants import Variant, applied, check_variants

CPU_NOTE = ("CPU run: DistrAttention times measure its PyTorch reference path (fp32, chunked), not the Triton "
            "kernel; run `distr-patch bench model` on a GPU for speed.")

# evaluate(variant) -> (metrics {name: (value, dataset key)}, latency {what: timing})
EvaluateFn = Callable[[Variant], tuple[dict, dict]]


@dataclass
class RunOutput:
    result: ResultFile
    directory: Path
    interrupted: bool


def pick_device(cfg: RunConfig) -> torch.device:
    """The run's device (``--device``, else the process's); a ``--device-map`` that names a device is checked too."""
    if cfg.device_map and cfg.device_map not in DEVICE_MAP_STRATEGIES:
        check_device(cfg.device_map, "--device-map")
    if cfg.device:
        check_device(cfg.device)
        return torch.device(cfg.device)
    return process_state(cfg.device).device


@contextlib.contextmanager
def compiled(model, mode: str | None, *, shapes: int):
    """``torch.compile(model, mode=mode)`` (the model itself when ``mode`` is None; "default" is torch's default
    mode) from an empty Dynamo cache, since each variant patches the model anew; one static graph per input shape,
    with the recompile limit raised to ``shapes`` (the distinct input shapes the run will feed it); the cache
    emptied again after."""
    if mode is None:
        yield model
        return
    import torch._dynamo

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch({limit: max(8, shapes + 2)}):
            yield torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)
    finally:
        torch._dynamo.reset()


def run_directory(cfg: RunConfig, kind: str) -> Path:
    """Where the run writes (``--output-dir``/``--run-name``); with plots on, matplotlib is checked here, before
    the run, not after it."""
    if cfg.plots:
        from .report import pyplot

        pyplot()  # ImportError naming the extra and --no-plots
    name = cfg.run_name
    if not name:
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", (cfg.model or "model").rsplit("/", 1)[-1]).strip("-")
        name = f"{kind}-{slug}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return Path(cfg.output_dir) / name


def run_variants(model, variants: list[Variant], evaluate: EvaluateFn, result: ResultFile, *,
                 shard: Shard = Shard(), progress: bool = True) -> bool:
    """Evaluate each variant on ``model``; returns False when interrupted by Ctrl-C. Every variant's settings are
    checked against the model first (``check_variants``), so a bad one stops the run before any runs."""
    from tqdm.auto import tqdm

    check_variants(model, variants)

    try:
        for variant in tqdm(variants, desc="variants", disable=not (progress and shard.is_main)):
            with applied(model, variant):
                metrics, latency = evaluate(variant)
            result.add_variant(variant, metrics, latency)
    except KeyboardInterrupt:
        result.save("interrupted")
        return False
    result.save("complete")
    return True


def finish(result: ResultFile, directory: Path, *, plots: bool, interrupted: bool, shard: Shard = Shard()) -> str:
    """Write report.md and the plots next to the JSON; print the table and where everything went."""
    from .report import markdown, write_plots

    if not shard.is_main:
        return ""
    table = markdown([result.data])
    (directory / "report.md").write_text(table)
    print("\n" + table)
    written = write_plots([result.data], directory) if plots else []
    if interrupted:
        print("Interrupted: the results of the finished variants are kept.")
    print(f"results: {result.path}")
    print(f"table:   {directory / 'report.md'}")
    for p in written:
        print(f"plot:    {p}")
    return table
