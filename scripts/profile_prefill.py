"""Where a patched model's prefill spends its time: torch.profiler over one prefill, exact and DistrAttention.

    python scripts/profile_prefill.py [--model preset:smollm2-135m] [--batch 4] [--seq 4096] [--fusion mean]

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
    p.add_argument("--rows", type=int, default=12)
    a = p.parse_args(argv)
    model = load_model(a.model, "lm", dtype="bfloat16").model.cuda()
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seq), device="cuda")

    def prefill():
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)

    for name in ("exact", f"G2 {a.fusion} W{a.window}"):
        if name != "exact":
            patch_model(model, dict(group_size=2, fusion=a.fusion, exact_window=a.window,
                                     window_correction=0.5 if a.window else 0.0))
        for _ in range(3):
            prefill()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            prefill()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 10 * 1e3
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            prefill()
            torch.cuda.synchronize()
        print(f"\n=== {name}: {wall:.2f} ms per prefill (mean of 10)")
        ka = prof.key_averages()
        print(ka.table(sort_by="cuda_time_total", row_limit=a.rows))
        print(ka.table(sort_by="self_cpu_time_total", row_limit=a.rows))
    unpatch_model(model)


if __name__ == "__main__":
    main()
