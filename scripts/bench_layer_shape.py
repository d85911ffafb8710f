"""The operator at one model layer's shape, in the layout transformers hands it, next to SDPA.

    python scripts/bench_layer_shape.py                                  # SmolLM2-135M: B=4, 9/3 heads, N=4096, d=64
    python scripts/bench_layer_shape.py --batch 1 --heads 32 --kv-heads 8 --d 64     # Llama-3.2-1B
    python scripts/bench_layer_shape.py --device cpu --n 64 --batch 1              # smoke run (interpreter)

q, k, v are views of [B, N, H, d] tensors transposed to [B, H, N, d] (as a Llama attention layer passes
them), or contiguous [B, H, N, d] with ``--contiguous``. Each variant's time is the median of
``triton.testing.do_bench`` (GPU time of back-to-back calls, so host work that the GPU hides is not in it).
Prints a table: ms, ratio to SDPA (flash backend, GQA by ``enable_gqa``), and the ratio to our G=1. "sdpa (PyTorch's
choice)" is SDPA with the backend PyTorch picks (cuDNN on the H200 with torch 2.11): a model's exact attention;
the "sdpa" variants are ``backend="sdpa"`` (Q_eff by our launches, then that same SDPA).
"""
from __future__ import annotations

import argparse

import torch

VARIANTS = {
    "G1": dict(group_size=1),
    "G2 mean": dict(group_size=2, fusion="mean"),
    "G2 rank1": dict(group_size=2, fusion="rank1"),
    "G2 rank1 W128 c0.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
    "G2 mean sdpa": dict(group_size=2, fusion="mean", backend="sdpa"),
    "G2 rank1 sdpa": dict(group_size=2, fusion="rank1", backend="sdpa"),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=9, help="query heads")
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--causal", type=int, default=1, choices=[0, 1])
    p.add_argument("--contiguous", action="store_true", help="contiguous [B, H, N, d] inputs")
    p.add_argument("--rep-ms", type=int, default=50)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = p.parse_args(argv)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from distr_patch.ops import distr_attention

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(0)

    def make(h):
        x = torch.randn(a.batch, a.n, h, a.d, device=dev, dtype=dtype, generator=gen)
        return x.transpose(1, 2).contiguous() if a.contiguous else x.transpose(1, 2)

    q, k, v = make(a.heads), make(a.kv_heads), make(a.kv_heads)
    causal = bool(a.causal)

    def sdpa():
        backends = [SDPBackend.FLASH_ATTENTION] if dev.type == "cuda" else [SDPBackend.MATH]
        with sdpa_kernel(backends):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    def sdpa_default():  # the backend PyTorch picks itself, as a transformers model's exact attention gets it
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    fns = {"sdpa-flash": sdpa, "sdpa (PyTorch's choice)": sdpa_default}
    for name, kw in VARIANTS.items():
        kw = {"backend": "triton", **kw}  # the fused kernel unless the variant names "sdpa"
        fns[name] = (lambda kw: lambda: distr_attention(q, k, v, causal=causal, **kw))(kw)
    if dev.type == "cuda":
        from triton.testing import do_bench
        times = {name: do_bench(fn, rep=a.rep_ms) for name, fn in fns.items()}
    else:
        import time
        times = {}
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            times[name] = (time.perf_counter() - t0) * 1e3
    layout = "contiguous" if a.contiguous else "[B, N, H, d] transposed"
    print(f"\nB={a.batch} Hq={a.heads} Hkv={a.kv_heads} N={a.n} d={a.d} causal={a.causal}, {layout}, {dtype}")
    print("| variant | ms | vs sdpa-flash | vs G1 |\n|---|---|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.4f} | {times['sdpa-flash'] / ms:.2f}x | {times['G1'] / ms:.2f}x |")
    return times


if __name__ == "__main__":
    main()
