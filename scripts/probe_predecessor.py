"""Does what ran just before a timing change it? (The operator bench read the same kernel config 8-10% apart at
d=128 N=4096 on an H100 and an H200 even as the median of three rotated passes; in every pass one of the two was
timed right after cuDNN.)

For each target (exact attention by our kernel, the same through the bench's switch wrapper, cuDNN, G=2 mean), in
``--rounds`` rounds: run a "before" load for ``--load-ms``, then time the target at once as the bench does
(``triton.testing.do_bench``, ``--rep-ms``, median) and read the SM clock (pynvml, where importable). Loads: idle
(one second asleep), cudnn (cuDNN's attention at the same shape), self (the target itself), copy (a memory-bound
copy). Prints one table: median ms per (target, before) and the ratio to "self".

    python scripts/probe_predecessor.py [--d 128] [--causal 1] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sm_clock():
    """The SM clock in MHz now, or None without pynvml."""
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        return pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
    except Exception:  # noqa: BLE001  no pynvml or no NVML: the table leaves the clock out
        return None


def main(argv=None):
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench_attention import _with_switches, run_for
    from distr_patch.ops import distr_attention

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--causal", type=int, default=1, choices=[0, 1])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--load-ms", type=float, default=300.0, help="how long the 'before' load runs (ms)")
    p.add_argument("--rep-ms", type=int, default=10, help="do_bench's timing budget (the device check's)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU: it times kernels against the clocks other kernels leave (none is visible here)")
    d, N, causal = args.d, args.n, bool(args.causal)
    H, B = 2048 // d, 32768 // N
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def cudnn():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    src = torch.empty(256 * 2**20, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    targets = {
        "distr G=1": lambda: distr_attention(q, k, v, group_size=1, causal=causal, backend="triton"),
        "distr G=1 switched": _with_switches({"configs.DEFAULT_FWD_SCALE_AFTER_MAX": False}, lambda: distr_attention(
            q, k, v, group_size=1, causal=causal, backend="triton")),
        "distr G=2 mean": lambda: distr_attention(q, k, v, group_size=2, block_m=128, causal=causal,
                                                  backend="triton"),
        "sdpa-cudnn": cudnn,
    }
    loads = {"idle": None, "cudnn": cudnn, "self": "self", "copy": lambda: dst.copy_(src)}
    for fn in [*targets.values(), loads["copy"]]:
        fn()
    torch.cuda.synchronize()
    ms = {(t, b): [] for t in targets for b in loads}
    clock = {(t, b): [] for t in targets for b in loads}
    for r in range(args.rounds):
        for t, fn in targets.items():
            for b, load in loads.items():
                if load is None:
                    torch.cuda.synchronize()
                    time.sleep(1.0)
                else:
                    torch.cuda.synchronize()
                    run_for(fn if load == "self" else load, args.load_ms)
                ms[t, b].append(triton.testing.do_bench(fn, warmup=10, rep=args.rep_ms, return_mode="median"))
                c = _sm_clock()
                if c is not None:
                    clock[t, b].append(c)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\nd={d} N={N} B={B} H={H} causal={int(causal)} {torch.cuda.get_device_name()} | "
          f"load {args.load_ms:.0f} ms, do_bench rep {args.rep_ms} ms, {args.rounds} rounds (median)\n")
    print("| target | before | ms | vs 'self' | SM MHz after |")
    print("|---|---|---|---|---|")
    for t in targets:
        own = statistics.median(ms[t, "self"])
        for b in loads:
            m = statistics.median(ms[t, b])
            c = f"{statistics.median(clock[t, b]):.0f}" if clock[t, b] else "–"
            print(f"| {t} | {b} | {m:.3f} | {m / own:.3f} | {c} |")


if __name__ == "__main__":
    main()
