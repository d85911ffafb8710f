"""backend="sdpa" with an exact window, taken apart on the GPU: each piece's time, and the band kernel's tiles.

    python scripts/bench_window_sdpa.py                      # d=64 and 128, N=4096, causal and not
    python scripts/bench_window_sdpa.py --tiles 128,64,8,2 64,64,4,2 64,32,4,3
    # each tile: block_m,block_n,num_warps,num_stages
    python scripts/bench_window_sdpa.py --tiles 64,32,4,2 64,64,4,2 --deferred   # each with the σ² sums deferred too

Shapes as ``bench_attention.py`` (H = 2048 // d, B = tokens // N, bf16, G=2 rank1, W=128, c=0.5). Pieces: Q_eff,
the reversed copies (not causal; ``reverse_rows``, and torch.flip beside it), the grouped SDPA calls with
log-sum-exps, the band kernel at each tile (checked against the default tile's output); then the whole call beside
the fused kernel, backend="sdpa" without the window, SDPA-flash and cuDNN. Times in ms (triton.testing.do_bench,
median).
"""
import argparse
from dataclasses import replace

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from distr_patch.ops import distr_attention
from distr_patch.ops.configs import band_config, parse_band_tiles
from distr_patch.ops.reverse_rows import reverse_rows
from distr_patch.ops.sdpa_engine import _attention_lse, query_effective
from distr_patch.ops.window_merge import band_merge


def ms(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=32768, help="B*N")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--tiles", nargs="*", default=["128,64,8,2", "64,64,4,2", "64,32,4,2", "64,64,4,3", "32,32,4,2"],
                    help="block_m,block_n,num_warps,num_stages")
    ap.add_argument("--deferred", action="store_true",
                    help="each tile also with the σ² sums deferred to after the band loop (BandConfig.deferred_sums)")
    args = ap.parse_args()
    W, N = args.window, args.n
    tiles = [parse_band_tiles(t, "--tiles") for t in args.tiles]
    if args.deferred:
        tiles = [c for t in tiles for c in (replace(t, deferred_sums=False), replace(t, deferred_sums=True))]
    torch.manual_seed(0)
    rows = []
    for d in args.d:
        B, H = max(1, args.tokens // N), 2048 // d
        q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        kw = dict(group_size=2, fusion="rank1", block_m=128)
        qe = query_effective(q, num_hash_bits=16, seed=0, query_valid=None, groups=None, **kw)
        scale = d ** -0.5
        for causal in (True, False):
            def pieces():
                left = _attention_lse(qe[:, :, W:], k[:, :, : N - W], v[:, :, : N - W], causal=True, scale=scale)
                right = None if causal else _attention_lse(reverse_rows(qe[:, :, : N - W]), reverse_rows(k[:, :, W:]),
                                                           reverse_rows(v[:, :, W:]), causal=True, scale=scale)
                return left, right
            sides = (qe[:, :, : N - W], k[:, :, W:], v[:, :, W:])  # what the right piece reverses
            left, right = pieces()
            bkw = dict(causal=causal, window=W, scale=scale, window_correction=0.5)
            ref = band_merge(q, qe, k, v, left, right, **bkw)
            r = {"d": d, "causal": int(causal),
                 "Q_eff": ms(lambda: query_effective(q, num_hash_bits=16, seed=0, query_valid=None, groups=None, **kw)),
                 "reversed copies": 0.0 if causal else ms(lambda: [reverse_rows(t) for t in sides]),
                 "same by torch.flip": 0.0 if causal else ms(lambda: [t.flip(2) for t in sides]),
                 "SDPA calls (incl. copies)": ms(pieces)}
            default = band_config(causal)
            for cfg in tiles:
                try:
                    out = band_merge(q, qe, k, v, left, right, config=cfg, **bkw)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    cell = f"{ms(lambda c=cfg: band_merge(q, qe, k, v, left, right, config=c, **bkw)):.3f}"
                    cell += "" if err < 1e-2 else f" (differs: {err:.1e})"
                except Exception as e:  # a tile that does not compile (shared memory) is reported, not fatal
                    cell = type(e).__name__
                name = f"band {cfg.block_m},{cfg.block_n},{cfg.num_warps},{cfg.num_stages}"
                r[name + (" deferred" if cfg.deferred_sums else "")] = cell + (
                    " (default)" if cfg == default else "")
            full = dict(causal=causal, exact_window=W, window_correction=0.5, **kw)
            with torch.no_grad():
                r["whole sdpa W"] = ms(lambda: distr_attention(q, k, v, backend="sdpa", **full))
                r["fused W"] = ms(lambda: distr_attention(q, k, v, backend="triton", **full))
                r["sdpa no W"] = ms(lambda: distr_attention(q, k, v, backend="sdpa", causal=causal, **kw))
            for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                def exact(be=be):
                    with sdpa_kernel(be):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                r[name] = ms(exact)
            rows.append(r)
            print(r, flush=True)
        del q, k, v, qe
        torch.cuda.empty_cache()
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
