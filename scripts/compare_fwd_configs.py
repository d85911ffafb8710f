"""Forward-kernel launch configs side by side on the GPU (the v5-v7 table of docs/benchmarks.md).

For each shape (bf16, B·N = 32768, H = 2048/d) and variant it times ``_triton_forward`` with a few
``FwdConfig``s next to SDPA-flash, and checks each against the PyTorch reference on 2 heads:

    base   64-key tiles, Q̃ formed in registers (the table before v6)
    +qts   the same with Q̃ through a global scratch (read by the dot from shared memory)
    bn128  128-key tiles with the scratch (grouped, no window: the table since v7)
    st2/w8 window variants: 2 stages, or 8 warps (d = 64)

    python scripts/compare_fwd_configs.py           # prints one markdown table last
"""
import itertools

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import distr_patch.ops.distr_attn as da
from distr_patch.ops import reference_distr_attention
from distr_patch.ops.configs import FwdConfig


def bench(fn, ms=20):
    return triton.testing.do_bench(fn, warmup=10, rep=ms)


def configs(d, G, window):
    """(name, FwdConfig) to compare for one variant."""
    warps = 4 if d <= 64 else 8
    base = FwdConfig(128, 64, warps, 3, "transposed")
    if G == 1:
        return [("base", base)]
    out = [("base", base), ("base+qts", FwdConfig(128, 64, warps, 3, "transposed", qt_scratch=True))]
    if not window:
        out.append(("bn128+qts", FwdConfig(128, 128, warps, 3, "transposed", qt_scratch=True)))
    else:
        out.append(("st2+qts", FwdConfig(128, 64, warps, 2, "transposed", qt_scratch=True)))
        if d == 64:
            out.append(("w8+qts", FwdConfig(128, 64, 8, 3, "transposed", qt_scratch=True)))
    return out


VARIANTS = [("G1", dict(group_size=1)), ("G2 mean", dict(group_size=2, fusion="mean")),
            ("G2 rank1", dict(group_size=2, fusion="rank1")),
            ("G2 r1 W128 c.5", dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5))]

rows = []
for (d, N), causal in itertools.product([(64, 4096), (128, 4096), (128, 16384)], (False, True)):
    H, B = 2048 // d, max(1, 32768 // N)
    q, k, v = [torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        t_flash = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    for name, kw in VARIANTS:
        full = dict(group_size=kw["group_size"], block_m=128, fusion=kw.get("fusion", "mean"),
                    exact_window=kw.get("exact_window", 0), window_correction=kw.get("window_correction", 0.0),
                    causal=causal, attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None,
                    groups=None)
        for cname, cfg in configs(d, kw["group_size"], full["exact_window"] > 0):
            out = da._triton_forward(q, k, v, config=cfg, **full)
            r = reference_distr_attention(q[:1, :2].float(), k[:1, :2].float(), v[:1, :2].float(), **full)
            err = ((out[:1, :2].float() - r).norm() / r.norm()).item()
            t = bench(lambda: da._triton_forward(q, k, v, config=cfg, **full))
            rows.append((d, N, int(causal), name, cname, t, t_flash / t, err))
            print(rows[-1], flush=True)
    del q, k, v
    torch.cuda.empty_cache()
print("| d | N | causal | variant | config | ms | vs flash | rel err vs reference |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]:.2f} | {r[7]:.1e} |")
