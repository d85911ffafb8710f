"""Which SDPA backend runs a DistrAttention-on-SDPA call at a model layer's shape, and how fast (a quick probe).

    python scripts/probe_sdpa_layout.py [--batch 1 --heads 32 --kv-heads 8 --n 4096 --d 64]

q is contiguous (as Q_eff from the regroup launch), k and v are [B, N, H, d] tensors transposed to [B, H, N, d]
(as a Llama layer passes them). Times SDPA with PyTorch's own choice and with each backend forced (ms, CUDA events),
with and without ``scale=`` and ``enable_gqa``; a backend that refuses the call prints why.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=64)
    a = p.parse_args(argv)
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(a.batch, a.heads, a.n, a.d, device=dev, dtype=dt)
    k, v = (torch.randn(a.batch, a.n, a.kv_heads, a.d, device=dev, dtype=dt).transpose(1, 2) for _ in range(2))
    backends = {"choice": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    print("| call | " + " | ".join(backends) + " |\n|---|" + "---|" * len(backends))
    for label, kw in (("gqa, scale", dict(enable_gqa=True, scale=a.d ** -0.5)), ("gqa", dict(enable_gqa=True)),
                      ("repeated kv, scale", dict(scale=a.d ** -0.5))):
        kk, vv = (k, v) if "enable_gqa" in kw else (t.repeat_interleave(a.heads // a.kv_heads, 1) for t in (k, v))
        cells = []
        for name, be in backends.items():
            fn = lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True, **kw)  # noqa: E731
            try:
                if be is None:
                    cells.append(f"{ms(fn):.3f}")
                else:
                    with sdpa_kernel([be]):
                        cells.append(f"{ms(fn):.3f}")
            except RuntimeError as e:
                cells.append("refused" if "No available kernel" in str(e) or "viable" in str(e) else type(e).__name__)
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
