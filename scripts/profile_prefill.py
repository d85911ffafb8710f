"""Where a patched model's prefill spends its time: torch.profiler over one prefill, exact and DistrAttention.

    python scripts/profile_prefill.py [--model preset:smollm2-135m] [--batch 4] [--seq 4096] [--fusion mean]
                                      [--engines auto sdpa]   # one patched variant per DistrConfig.engine
    python scripts/profile_prefill.py --device cpu --seq 64 --batch 1     # smoke run (the PyTorch reference path)

Prints, for each variant, the wall time of one prefill and the top operators by CUDA time and by CPU time
(a model whose GPU work per layer is small can be bound by the host's launch work instead).
"""
import argparse
import time

import torch

from distr_patch.models.loading import load_model
from distr_patch.patching.registry import patch_model, unpatch_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="preset:smollm2-135m")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--fusion", default="mean")
    p.add_argument("--window", type=int, default=0, help="exact_window (window_correction 0.5 when > 0)")
    p.add_argument("--engines", nargs="+", default=["auto"], choices=["auto", "sdpa"],
                   help="DistrConfig.engine of each patched variant (auto: the fused kernel on CUDA)")
    p.add_argument("--rows", type=int, default=12)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    model = load_model(a.model, "lm", dtype="bfloat16" if dev.type == "cuda" else "float32", processor=False).model.to(dev)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if dev.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    walls = {}

    def prefill():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    variants = {"exact": None}
    for engine in a.engines:
        variants[f"G2 {a.fusion} W{a.window} {engine}"] = dict(
            group_size=2, fusion=a.fusion, exact_window=a.window, window_correction=0.5 if a.window else 0.0,
            engine=engine)
    for name, settings in variants.items():
        if getattr(model, "_distr_patch_state", None) is not None:
            unpatch_model(model)
        if settings is not None:
            patch_model(model, settings)
        for _ in range(3):
            prefill()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            prefill()
        sync()
        walls[name] = (time.perf_counter() - t0) / a.repeats * 1e3
        with torch.profiler.profile(activities=activities) as prof:
            prefill()
            sync()
        print(f"\n=== {name}: {walls[name]:.2f} ms per prefill (mean of {a.repeats})")
        ka = prof.key_averages()
        if dev.type == "cuda":
            print(ka.table(sort_by="cuda_time_total", row_limit=a.rows))
        print(ka.table(sort_by="self_cpu_time_total", row_limit=a.rows))
    unpatch_model(model)
    print("\n| variant | ms per prefill | vs exact |\n|---|---|---|")
    for name, ms in walls.items():
        print(f"| {name} | {ms:.2f} | {walls['exact'] / ms:.2f}x |")
    return walls


if __name__ == "__main__":
    main()
