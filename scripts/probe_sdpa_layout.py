"""Why backend="sdpa" can lose inside a model: its call decomposed at one layer's shape (a quick probe).

    python scripts/probe_sdpa_layout.py [--batch 1 --heads 32 --kv-heads 8 --n 4096 --d 64]

q, k and v are [B, N, H, d] tensors transposed to [B, H, N, d], as a Llama layer passes them. The first table times
(ms, CUDA events) exact SDPA with PyTorch's own choice and with each backend forced, for a q in the model's layout and
for a contiguous q (Q_eff from the regroup launch is contiguous), with ``enable_gqa``; a backend that refuses the call
prints why. The second table times the SDPA engine's parts (the grouping and regroup launches, then SDPA) and whole
calls of both engines, and names the CUDA kernels each launches (torch.profiler), so a fallback or a copy shows.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from distr_patch.ops import distr_attention
from distr_patch.ops.sdpa_engine import query_effective


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


def kernels(fn) -> str:
    """The CUDA kernels one call launches (short names, in order of first launch)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = []
    for e in prof.events():
        if e.device_type.name == "CUDA" and e.name not in names:
            names.append(e.name)
    return "; ".join(n.split("(")[0].split("<")[0][:48] for n in names)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=64)
    a = p.parse_args(argv)
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    qm, k, v = (torch.randn(a.batch, a.n, h, a.d, device=dev, dtype=dt).transpose(1, 2)
                for h in (a.heads, a.kv_heads, a.kv_heads))
    qc = qm.contiguous()
    print(f"B={a.batch} Hq={a.heads} Hkv={a.kv_heads} N={a.n} d={a.d} bf16, causal, enable_gqa")
    backends = {"choice": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION}
    print("| exact SDPA, q layout | " + " | ".join(backends) + " |\n|---|" + "---|" * len(backends))
    for label, q in (("model (transposed view)", qm), ("contiguous (as Q_eff)", qc)):
        cells = []
        for be in backends.values():
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
            try:
                if be is None:
                    cells.append(f"{ms(fn):.3f}")
                else:
                    with sdpa_kernel([be]):
                        cells.append(f"{ms(fn):.3f}")
            except RuntimeError as e:
                cells.append("refused" if "No available kernel" in str(e) or "viable" in str(e) else type(e).__name__)
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)

    kw = dict(group_size=2, block_m=128, fusion="mean", num_hash_bits=16, seed=0, query_valid=None, groups=None)
    qe = query_effective(qm, **kw)
    rows = [
        ("exact SDPA, model layout", lambda: F.scaled_dot_product_attention(qm, k, v, is_causal=True, enable_gqa=True)),
        ("Q_eff (grouping + regroup), model layout", lambda: query_effective(qm, **kw)),
        ("Q_eff, contiguous q", lambda: query_effective(qc, **kw)),
        ("SDPA on Q_eff", lambda: F.scaled_dot_product_attention(qe, k, v, is_causal=True, enable_gqa=True)),
        ("SDPA on Q_eff as a transposed view",
         lambda: F.scaled_dot_product_attention(qe.transpose(1, 2).contiguous().transpose(1, 2), k, v, is_causal=True,
                                                enable_gqa=True)),
    ]
    for fusion in ("mean", "rank1"):
        for backend in ("sdpa", "triton"):
            rows.append((f"distr G2 {fusion} backend={backend}, model layout",
                         lambda f=fusion, b=backend: distr_attention(qm, k, v, group_size=2, fusion=f, causal=True,
                                                                     backend=b)))
    print("\n| call | ms | CUDA kernels |\n|---|---|---|")
    for label, fn in rows:
        print(f"| {label} | {ms(fn):.3f} | {kernels(fn)} |", flush=True)


if __name__ == "__main__":
    main()
