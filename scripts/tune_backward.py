"""Sweep the backward's launch configs (``ops/configs.py:BwdConfig``) on the GPU.

For each shape (bf16, N = 4096 or ``--n``, B·N = 32768, H = 2048/d) and variant it times the dK/dV kernel
(``need_dq=False``) and the dQ kernel (``need_dkdv=False``) of ``_triton_backward`` under each
candidate tile config, next to SDPA-flash's backward alone, and checks every config's gradients
against those of the current default config (a config that computes something else is dropped,
not timed). Kernels are compiled first in parallel worker processes (Triton's on-disk cache), so
the sweep is bounded by timing, not compilation.

    python scripts/tune_backward.py --d 128         # G=1, G=2 mean (causal or not), G=2 rank1 W128 c.5 causal
    python scripts/tune_backward.py --json out.json
    python scripts/tune_backward.py --d 64 --n 16384 --variants "G=2 mean" --causal 0

Prints one markdown table last: per shape the default and best of each kernel, in ms.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from dataclasses import asdict, replace

import torch

# (block_m, block_n, warps, stages) candidates of each kernel
KV = [(16, 64, 8, 2), (16, 128, 8, 2), (32, 64, 4, 3), (32, 64, 8, 2), (32, 128, 4, 3), (32, 128, 8, 2),
      (32, 128, 8, 3), (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2)]
Q = [(64, 16, 4, 3), (64, 32, 4, 2), (64, 32, 8, 2), (64, 64, 4, 2), (64, 64, 8, 2), (128, 16, 8, 2),
     (128, 32, 4, 2), (128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 2)]
# with a window, also the default's block tiles under each band sub-tile (kv_band_m / q_band_n)
BANDS = [16, 32, 64]
VARIANTS = {
    "G=1": dict(group_size=1),
    "G=2 mean": dict(group_size=2, fusion="mean"),
    "G=2 rank1 W128 c.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
}
# the window variant is tuned causal only (the LM case); the others both ways
SHAPES = [("G=1", False), ("G=1", True), ("G=2 mean", False), ("G=2 mean", True), ("G=2 rank1 W128 c.5", True)]


def _opts(kw, causal):
    full = dict(group_size=2, block_m=128, fusion="mean", exact_window=0, window_correction=0.0, causal=causal,
                attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    full.update(kw)
    return full


def _fit(cfg):
    """cfg with its band sub-tiles (window only) cut to divide the block tiles (all powers of 2)."""
    if cfg.kv_band_m is not None:
        cfg = replace(cfg, kv_band_m=min(cfg.kv_band_m, cfg.kv_block_m))
    if cfg.q_band_n is not None:
        cfg = replace(cfg, q_band_n=min(cfg.q_band_n, cfg.q_block_n))
    return cfg


def _candidates(d, kw, causal, n):
    """The default config at this shape (on the two-kernel path: the sweep times dK/dV and dQ apart) and the
    dK/dV and dQ candidates around it."""
    from distr_patch.ops.configs import bwd_config
    base = replace(bwd_config(d, kw["group_size"], kw.get("exact_window", 0), causal=bool(causal), keys=n),
                   dq_atomic=False)
    kvs = [_fit(replace(base, kv_block_m=a, kv_block_n=b, kv_warps=w, kv_stages=s)) for a, b, w, s in KV]
    qs = [_fit(replace(base, q_block_m=a, q_block_n=b, q_warps=w, q_stages=s)) for a, b, w, s in Q]
    if base.kv_band_m is not None:
        kvs += [replace(base, kv_band_m=m) for m in BANDS if m <= base.kv_block_m and m != base.kv_band_m]
    if base.q_band_n is not None:
        qs += [replace(base, q_band_n=n) for n in BANDS if n <= base.q_block_n and n != base.q_band_n]
    kvs = list(dict.fromkeys(kvs))  # cut bands can repeat a candidate
    qs = list(dict.fromkeys(qs))
    return base, kvs, qs


def _problem(d, kw, causal, B, H, N=4096, seed=0):
    from distr_patch.ops.distr_attn import _triton_forward
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    opts = _opts(kw, causal)
    out, lse, grp, wa, wb, qeff, inv = _triton_forward(q, k, v, return_lse=True, keep_qeff=True, **opts)
    opts.update(qeff=qeff, inv=inv)  # as in training: the backward reads the forward's Q_eff
    return (do, q, k, v, out, lse, grp, wa, wb), opts


def _bwd_call(args, opts, cfg, which):
    from distr_patch.ops.distr_bwd import _triton_backward
    keys = ("group_size", "block_m", "fusion", "exact_window", "window_correction", "causal", "attention_mask",
            "scale", "qeff", "inv")
    return _triton_backward(*args, **{k: opts[k] for k in keys}, need_dq=which == "q", need_dkdv=which == "kv",
                            config=cfg)


def _compile_job(job):
    """Worker: compile one (shape, config) by running it once on a small batch of the same strides."""
    d, vname, causal, cfg, which = job
    try:
        args, opts = _problem(d, VARIANTS[vname], causal, B=1, H=2)
        _bwd_call(args, opts, cfg, which)
        torch.cuda.synchronize()
        return None
    except Exception as e:  # too many registers / shared memory: reported, then skipped in the sweep
        return f"{type(e).__name__}: {e}"[:120]


def main(argv=None):
    import triton
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[64, 128])
    p.add_argument("--budget-s", type=float, default=480, help="stop starting new shapes after this many seconds")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--rep-ms", type=int, default=40)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="which variants of SHAPES to sweep (default: all)")
    p.add_argument("--n", type=int, default=4096, help="sequence length N = M (B = 32768 // N)")
    p.add_argument("--causal", type=int, nargs="+", choices=[0, 1], default=[0, 1],
                   help="which of SHAPES' causal settings to sweep")
    p.add_argument("--json")
    a = p.parse_args(argv)
    import time
    t0 = time.time()
    shapes = [(d, v, c) for d in a.d for v, c in SHAPES if v in a.variants and int(c) in a.causal]
    jobs = []
    for d, vname, causal in shapes:
        base, kvs, qs = _candidates(d, VARIANTS[vname], causal, a.n)
        jobs += [(d, vname, causal, c, "kv") for c in kvs] + [(d, vname, causal, c, "q") for c in qs]
    print(f"compiling {len(jobs)} kernels in {a.workers} processes", flush=True)
    with mp.get_context("spawn").Pool(a.workers) as pool:
        failed = {i: r for i, r in enumerate(pool.map(_compile_job, jobs, chunksize=1)) if r}
    bad = {(j[0], j[1], j[2], j[3], j[4]) for i, j in enumerate(jobs) if i in failed}
    print(f"{len(failed)} configs failed to compile/run; compiling took {time.time() - t0:.0f} s", flush=True)

    bench = lambda fn: triton.testing.do_bench(fn, warmup=5, rep=a.rep_ms, return_mode="median")  # noqa: E731
    rows = []
    for d, vname, causal in shapes:
        if time.time() - t0 > a.budget_s:
            print(f"time budget spent: skipping d={d} {vname} causal={int(causal)}", flush=True)
            continue
        H, N = 2048 // d, a.n
        B = max(1, 32768 // N)
        args, opts = _problem(d, VARIANTS[vname], causal, B=B, H=H, N=N)
        q, k, v = (t.detach().requires_grad_() for t in args[1:4])
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        flash_bwd = bench(lambda: torch.autograd.grad(o, (q, k, v), args[0], retain_graph=True))
        base, kvs, qs = _candidates(d, VARIANTS[vname], causal, N)
        ref_kv = _bwd_call(args, opts, base, "kv")
        ref_q = _bwd_call(args, opts, base, "q")
        res = {}
        for which, cands, ref in (("kv", kvs, ref_kv), ("q", qs, ref_q)):
            out = []
            for cfg in cands:
                if (d, vname, causal, cfg, which) in bad:
                    continue
                got = _bwd_call(args, opts, cfg, which)
                errs = [((x.float() - y.float()).norm() / y.float().norm()).item()
                        for x, y in zip(got, ref) if x is not None]
                if max(errs) > 1e-2:
                    print(f"  {which} {cfg} differs from the default config (err {max(errs):.1e}): dropped")
                    continue
                out.append((bench(lambda: _bwd_call(args, opts, cfg, which)), cfg))
            out.sort(key=lambda t: t[0])
            res[which] = out
        t_base_kv = bench(lambda: _bwd_call(args, opts, base, "kv"))
        t_base_q = bench(lambda: _bwd_call(args, opts, base, "q"))
        best_kv, best_q = res["kv"][0], res["q"][0]
        row = dict(d=d, variant=vname, causal=causal, flash_bwd_ms=flash_bwd, default_kv_ms=t_base_kv,
                   default_q_ms=t_base_q, best_kv_ms=best_kv[0], best_q_ms=best_q[0],
                   best_kv=[best_kv[1].kv_block_m, best_kv[1].kv_block_n, best_kv[1].kv_warps, best_kv[1].kv_stages,
                            best_kv[1].kv_band_m],
                   best_q=[best_q[1].q_block_m, best_q[1].q_block_n, best_q[1].q_warps, best_q[1].q_stages,
                           best_q[1].q_band_n],
                   top_kv=[(t, asdict(c)) for t, c in res["kv"][:4]], top_q=[(t, asdict(c)) for t, c in res["q"][:4]])
        rows.append(row)
        print(f"d={d} {vname:<20} causal={int(causal)} flash bwd {flash_bwd:.3f} | kv default {t_base_kv:.3f} best "
              f"{best_kv[0]:.3f} {row['best_kv']} | q default {t_base_q:.3f} best {best_q[0]:.3f} {row['best_q']}",
              flush=True)
        for t, c in res["kv"][:4]:
            print(f"    kv {t:.3f} {c.kv_block_m} {c.kv_block_n} {c.kv_warps} {c.kv_stages} band {c.kv_band_m}")
        for t, c in res["q"][:4]:
            print(f"    q  {t:.3f} {c.q_block_m} {c.q_block_n} {c.q_warps} {c.q_stages} band {c.q_band_n}")
        del args, q, k, v, o
        torch.cuda.empty_cache()
        if a.json:
            with open(a.json, "w") as f:
                json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows), f, indent=1)
    print("\n| d | variant | causal | flash bwd ms | default dK/dV + dQ ms | best dK/dV + dQ ms "
          "| best kv (bm,bn,w,s,band) | best q (bm,bn,w,s,band) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['variant']} | {int(r['causal'])} | {r['flash_bwd_ms']:.3f} | "
              f"{r['default_kv_ms']:.3f} + {r['default_q_ms']:.3f} | {r['best_kv_ms']:.3f} + {r['best_q_ms']:.3f} | "
              f"{tuple(r['best_kv'])} | {tuple(r['best_q'])} |")


if __name__ == "__main__":
    main()
