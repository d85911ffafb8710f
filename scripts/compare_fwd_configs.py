"""Forward-kernel launch configs side by side on the GPU.

For each shape (bf16, B·N = 32768, H = 2048/d) and variant it times ``_triton_forward`` with a few
``FwdConfig``s next to SDPA-flash, and checks each against the PyTorch reference on 2 heads:

    default        the table in ``ops/configs.py`` now
    +fused-grouping  the same, each program computing its block's grouping (no grouping launch)
    bn64+qts       64-key tiles, Q̃ from the scratch (grouped, no window; the v6 table)
    before         the window's table before band sub-tiles: 64-key tiles everywhere, 8 warps
    bn128 bandX wY 128-key plain tiles, X-key tiles where the exact band is, Y warps

    python scripts/compare_fwd_configs.py                    # the window variants at N=4096
    python scripts/compare_fwd_configs.py --variants all --n 4096 16384
    python scripts/compare_fwd_configs.py --variants "G2 mean" "G2 rank1" --d 64 128   # fused grouping

Prints one markdown table last. (The v5-v7 table of docs/benchmarks.md came from an earlier
version of this script, which compared the no-window configs.)
"""
import argparse
import itertools
from dataclasses import replace

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import distr_patch.ops.distr_attn as da
from distr_patch.ops import reference_distr_attention
from distr_patch.ops.configs import FwdConfig, fwd_config


def bench(fn, ms=20):
    return triton.testing.do_bench(fn, warmup=10, rep=ms)


def configs(d, G, window):
    """(name, FwdConfig) to compare for one variant at block_m=128."""
    out = [("default", fwd_config(d, G, 128, exact_window=128 if window else 0))]
    if G == 1:
        return out
    out.append(("default+fused-grouping", replace(out[0][1], fused_grouping=True)))
    warps = 4 if d <= 64 else 8
    if not window:
        return out + [("bn64+qts", FwdConfig(128, 64, warps, 3, "transposed", qt_scratch=True))]
    out.append(("before", FwdConfig(128, 64, 8, 3, "transposed")))
    for band, w in ([(32, 4), (64, 4), (32, 8), (64, 8)] if d <= 64 else [(32, 8), (64, 8)]):
        cfg = FwdConfig(128, 128, w, 3, "transposed", qt_scratch=True, band_block_n=band)
        if cfg != out[0][1]:
            out.append((f"bn128 band{band} w{w}", cfg))
    return out


ALL = {"G1": dict(group_size=1), "G2 mean": dict(group_size=2, fusion="mean"),
       "G2 rank1": dict(group_size=2, fusion="rank1"),
       "G2 r1 W128 c.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
       "G2 mean W128 c.5": dict(group_size=2, fusion="mean", exact_window=128, window_correction=0.5)}
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--variants", nargs="+", default=["G2 r1 W128 c.5"], help=f"'all' or some of {list(ALL)}")
ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
ap.add_argument("--n", nargs="+", type=int, default=[4096])
ap.add_argument("--causal", nargs="+", type=int, default=[0, 1])
args = ap.parse_args()
VARIANTS = [(n, ALL[n]) for n in (ALL if args.variants == ["all"] else args.variants)]

rows = []
for d, N, causal in itertools.product(args.d, args.n, [bool(c) for c in args.causal]):
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
