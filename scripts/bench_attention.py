"""Operator benchmark of DistrAttention on the GPU, side by side with exact attention.

Prints, for each shape (bf16, d, N, causal), the median time of every variant, its ratio to
SDPA-flash (FlashAttention-2) and to SDPA-cuDNN, and its relative error against exact
attention on the same inputs (so speed is never shown without its accuracy). The grouping's
own cost (hash, sort, fusion weights, K transpose) is timed apart and shown as a share.

    python scripts/bench_attention.py                      # the full sweep of the operator issue
    python scripts/bench_attention.py --quick              # d=64/128, N=4096 only
    python scripts/bench_attention.py --tune               # sweep the kernel's tile table
    python scripts/bench_attention.py --json out.json      # also write all numbers
    python scripts/bench_attention.py --plot out.png       # also draw them (speed vs SDPA-flash over N)
    python scripts/bench_attention.py --backward           # forward+backward (training step) instead
    python scripts/bench_attention.py --backward --backward-paths   # + each G>1 variant on the earlier paths

With ``--backward`` each variant is timed as forward + backward (``torch.autograd.grad`` of the
output for a random output gradient), and every gradient's relative error is reported against
fp32 autograd of the same function on a slice of the heads (exact attention for SDPA and G=1,
the PyTorch reference for DistrAttention), plus the largest of the three against exact
attention. ``--device cpu`` (with TRITON_INTERPRET=1) runs the same code at tiny sizes
through the Triton interpreter, as a smoke test only: its timings mean nothing.
``--backward-paths`` adds, for each grouped variant, rows on the backward's earlier paths side by side:
"(launches)" forms Q_eff again and maps dQ_eff back with regroup launches; "(kept Q_eff)" takes the
forward's Q_eff but still maps dQ back by a launch (the plain rows: kept Q_eff and the dQ kernel's epilogue);
"(atomic dQ)" / "(dQ kernel)" (every variant) force dQ's way: atomics in the dK/dV kernel or its own kernel.

Every variant of a shape is timed in ``--rounds`` passes (default 3), each pass over all of them, pass r starting
r/rounds of the way down the list; a variant's time is its median pass and "spread %" is (slowest − fastest pass) /
median. Before each timing the variant itself runs back to back for ``--settle-ms`` (default 200 on the GPU), so it
is timed at the clocks its own load sets: what ran just before moves a timing (after 300 ms of cuDNN the H100's SM
clock read 1695 MHz and our exact kernel timed 9% slower than after itself; after an idle second, 1980 MHz and 4%
faster; ``scripts/probe_predecessor.py``). Without settling, the same config read 8-12% apart depending on whether
cuDNN had run just before it (docs/benchmarks.md, the thirty-first and thirty-second sessions). A variant's
grouping launches ("grouping %") are timed right after the variant itself ran for ``--settle-ms`` too, so at the
clocks of the call they are part of.

SageAttention 1 (``pip install sageattention==1.0.6``) is timed when importable.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict

import torch


def _variants(args):
    """name -> dict(kind, kwargs). kind: distr | flash | cudnn | sage."""
    v = {
        "sdpa-flash": dict(kind="flash"),
        "sdpa-cudnn": dict(kind="cudnn"),
        "sage1": dict(kind="sage"),
        "distr G=1": dict(kind="distr", kw=dict(group_size=1)),
    }
    for G in (2, 4):
        for fusion in ("mean", "rank1"):
            v[f"distr G={G} {fusion}"] = dict(kind="distr", kw=dict(group_size=G, fusion=fusion, block_m=128))
    for bm in (128, 32):
        v[f"distr G=2 rank1 W128 c.5 bm{bm}"] = dict(
            kind="distr", kw=dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5, block_m=bm))
    v["distr G=2 mean W128 c.5 bm128"] = dict(
        kind="distr", kw=dict(group_size=2, fusion="mean", exact_window=128, window_correction=0.5, block_m=128))
    for G, fusion in ((2, "mean"), (2, "rank1"), (4, "mean")):  # Q_eff by our launches, then torch's SDPA
        v[f"distr G={G} {fusion} sdpa"] = dict(kind="distr", kw=dict(group_size=G, fusion=fusion, block_m=128,
                                                                     backend="sdpa"))
    for fusion in ("mean", "rank1"):  # Q_eff by the grouping launch and then the regroup launch (not the fused one)
        v[f"distr G=2 {fusion} sdpa 2launch"] = dict(kind="distr", kw=dict(
            group_size=2, fusion=fusion, block_m=128, backend="sdpa",
            switches={"sdpa_engine.QEFF_LAUNCH": "separate"}))
        # the fused Q_eff launch's other ways of forming Q_eff (grouping_triton.QEFF_REGROUP / QEFF_FUSION_FROM)
        for way, src in (("dot", "memory"), ("dot16", "memory"), ("dot16", "registers"), ("pair", "registers")):
            v[f"distr G=2 {fusion} sdpa {way} {src}"] = dict(kind="distr", kw=dict(
                group_size=2, fusion=fusion, block_m=128, backend="sdpa",
                switches={"grouping_triton.QEFF_REGROUP": way, "grouping_triton.QEFF_FUSION_FROM": src}))
    # each program of the fused kernel groups its own block in its prologue (no grouping launch; configs'
    # DEFAULT_FUSED_GROUPING, env DISTR_FWD_FUSED_GROUPING)
    for name, kw in (("G=2 mean", dict(group_size=2, fusion="mean")), ("G=2 rank1", dict(group_size=2, fusion="rank1")),
                     ("G=4 mean", dict(group_size=4, fusion="mean")),
                     ("G=2 rank1 W128 c.5 bm128", dict(group_size=2, fusion="rank1", exact_window=128,
                                                       window_correction=0.5))):
        v[f"distr {name} fusedgrp"] = dict(kind="distr", kw=dict(
            kw, block_m=128, switches={"configs.DEFAULT_FUSED_GROUPING": True}))
    # the plain key tiles' softmax in each form, whatever the table picks (FwdConfig.scale_after_max; env
    # DISTR_FWD_SCALE_AFTER_MAX): scores scaled before the row max, or the max on the raw dot and one FMA per score
    for name, kw in (("G=1", dict(group_size=1)), ("G=2 mean", dict(group_size=2, fusion="mean", block_m=128)),
                     ("G=2 rank1", dict(group_size=2, fusion="rank1", block_m=128))):
        for form, on in (("scaled first", False), ("scale after max", True)):
            v[f"distr {name} {form}"] = dict(kind="distr", kw=dict(
                kw, switches={"configs.DEFAULT_FWD_SCALE_AFTER_MAX": on}))
    for grams in ("rows", "dot"):  # G>=4 rank1: the groups' Grams by row reductions or one dot (POWER_GRAMS)
        v[f"distr G=4 rank1 grams {grams}"] = dict(kind="distr", kw=dict(
            group_size=4, fusion="rank1", block_m=128, switches={"grouping_triton.POWER_GRAMS": grams}))
    for fusion in ("rank1", "mean"):  # the window as pieces: grouped SDPA calls beside the band, our band kernel
        v[f"distr G=2 {fusion} W128 c.5 bm128 sdpa"] = dict(kind="distr", kw=dict(
            group_size=2, fusion=fusion, exact_window=128, window_correction=0.5, block_m=128, backend="sdpa"))
        v[f"distr G=2 {fusion} W128 c.5 bm128 sdpa torch flip"] = dict(kind="distr", kw=dict(  # the earlier copies
            group_size=2, fusion=fusion, exact_window=128, window_correction=0.5, block_m=128, backend="sdpa",
            switches={"sdpa_engine.REVERSE_ROWS": "torch"}))
    return v


def _sage():
    try:
        from sageattention import sageattn
        return sageattn
    except Exception:  # not installed, or fails to import on this stack
        return None


def _make_fn(spec, q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from distr_patch.ops import distr_attention

    kind = spec["kind"]
    if kind in ("flash", "cudnn"):
        backend = SDPBackend.FLASH_ATTENTION if kind == "flash" else SDPBackend.CUDNN_ATTENTION

        def fn():
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fn
    if kind == "sage":
        sage = _sage()
        if sage is None:
            return None
        # sageattn (1.0.6) smooths K in place (`k -= k.mean(seq)`): on the shared k every variant timed after it ran
        # on centred keys. Softmax is blind to the shift, but bf16 rounds the centred keys differently, so our G=1
        # read 2.4-3.1e-3 error against flash's 2.0-2.3e-3 in every sweep with sage1 installed (flash's own without
        # it). Sage gets a copy of its own; re-centring it on each call is sage's own work, timed as before.
        k_sage = k.clone()
        return lambda: sage(q, k_sage, v, tensor_layout="HND", is_causal=causal)
    kw = dict(spec["kw"])
    kw.setdefault("backend", "triton")  # the fused kernel, unless the variant names its engine ("auto" could pick SDPA)
    return _with_switches(kw.pop("switches", None), lambda: distr_attention(q, k, v, causal=causal, **kw))


def _with_switches(switches, fn):
    """fn run with module-level switches of ``distr_patch.ops`` set, e.g. {"sdpa_engine.QEFF_LAUNCH": "separate"}
    (how backend="sdpa" forms Q_eff), and restored after; fn itself for None."""
    if not switches:
        return fn
    import importlib

    targets = [(importlib.import_module(f"distr_patch.ops.{name.split('.')[0]}"), name.split(".")[1], value)
               for name, value in switches.items()]

    def wrapped():
        old = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in targets]
        for mod, attr, value in targets:
            setattr(mod, attr, value)
        try:
            return fn()
        finally:
            for mod, attr, value in old:
                setattr(mod, attr, value)
    return wrapped


def _grouping_fn(kw, q, k):
    """The grouping's own launches for one call: hash+sort and fusion weights, then the K copy
    (grouped_qk="reduced", transposed layout), the Q_eff regroup (grouped_qk="expanded"; with
    ``distr_attn.QEFF_LAUNCH`` "one" the one launch that groups and writes Q_eff) or, when the kernel
    forms Q_eff in its prologue (``qeff_prologue``), the column -> position map it reads. The prologue's
    own dot runs inside the attention kernel: the "vs G=1" column of the tables counts it."""
    from distr_patch.ops import grouping_triton
    from distr_patch.ops import distr_attn
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import transpose_keys
    from distr_patch.ops.grouping_triton import triton_grouping
    from distr_patch.ops.regroup import inverse_groups, regroup

    G, bm = kw.get("group_size", 2), kw.get("block_m", 128)
    if G == 1:
        return None
    if kw.get("backend") == "sdpa":  # the grouping launch (storing positions) and the Q_eff regroup launch
        from distr_patch.ops.sdpa_engine import query_effective

        return _with_switches(kw.get("switches"), lambda: query_effective(
            q, group_size=G, block_m=bm, fusion=kw.get("fusion", "mean"), num_hash_bits=16, seed=0, query_valid=None,
            groups=None))
    cfg = _with_switches(kw.get("switches"), lambda: fwd_config(q.shape[-1], G, bm,
                                                                exact_window=kw.get("exact_window", 0)))()
    if cfg.fused_grouping:  # no launch of its own: the "vs G=1" column counts the prologue
        return None
    fusion = kw.get("fusion", "mean")

    prologue = cfg.grouped_qk == "expanded" and cfg.qeff_prologue
    kernel_positions = prologue and grouping_triton.POSITIONS == "kernel"
    if cfg.grouped_qk == "expanded" and not prologue and distr_attn.QEFF_LAUNCH == "one":  # grouping + Q_eff rows
        return _with_switches(kw.get("switches"), lambda: grouping_triton.triton_query_effective(
            q, group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=None, fusion=fusion))

    def fn():
        grp, wa, wb, *_ = triton_grouping(q, group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=None,
                                          fusion=fusion, positions=kernel_positions)
        if prologue:  # the column -> position map (with kernel_positions the grouping launch stored it)
            if not kernel_positions:
                inverse_groups(grp)
        elif cfg.grouped_qk == "expanded":
            regroup(q, grp, wa, wb, group_size=G, block_m=bm, out_dtype=q.dtype,
                    mean_weights=(1.0 / G, 1.0) if wa is None else None)
        elif cfg.k_layout == "transposed":
            transpose_keys(k)
    return _with_switches(kw.get("switches"), fn)


def _rel_err(out, exact):
    return ((out.float() - exact).norm() / exact.norm()).item()


def check_inputs_untouched(before, now, after):
    """Every variant reads the same q, k, v: raise if one wrote into them (``after``: the variant or step that ran
    last), since every variant after it would be timed and scored on other inputs. before, now: name -> tensor."""
    changed = [name for name in before if not torch.equal(before[name], now[name])]
    if changed:
        raise RuntimeError(f"{after} wrote into the shared inputs {', '.join(changed)}; the variants after it would "
                           "run on other inputs (give it a copy in _make_fn, as sage1 has)")


def _bench(fn, reps_ms):
    import triton
    return triton.testing.do_bench(fn, warmup=max(10, reps_ms // 4), rep=reps_ms, return_mode="median")


def timed_rounds(names, rounds, time_one):
    """{name: [ms per pass]} over ``rounds`` passes of ``time_one(name)`` (ms) over all ``names``; pass r starts at
    name r·len/rounds and wraps, so each name is timed at other places in the order and an order effect shows as
    spread (``median_spread``) instead of bias."""
    names = list(names)
    times = {n: [] for n in names}
    for r in range(rounds):
        start = r * len(names) // rounds
        for n in names[start:] + names[:start]:
            times[n].append(time_one(n))
    return times


def settled(time_one, run_one, settle_ms):
    """``time_one`` with the variant itself first run back to back for ``settle_ms`` ms (``run_one(name)`` one call;
    0: no settling), so it is timed in the steady state its own load leaves (clocks, power), not in the previous
    variant's."""
    if settle_ms <= 0:
        return time_one

    def timed(name):
        run_for(lambda: run_one(name), settle_ms)
        return time_one(name)
    return timed


def run_for(fn, ms):
    """fn called back to back for about ``ms`` milliseconds, four calls between syncs (``distr_patch.eval.timing``'s
    ``run_for``, which ``bench model`` settles with too); nothing for ms <= 0."""
    from distr_patch.eval.timing import run_for as settle

    settle(fn, ms)


def median_spread(passes):
    """(median ms, spread %: (slowest − fastest pass) / median) of one variant's passes."""
    mid = statistics.median(passes)
    return mid, 100.0 * (max(passes) - min(passes)) / mid if mid > 0 else 0.0


def _bench_graph(fn, reps_ms):
    """fn's GPU time alone (ms): its kernels replayed from a CUDA graph, so no host launch overhead enters, as it does
    not in a call whose kernels queue behind each other; nan where fn cannot be captured."""
    from distr_patch.eval.timing import cuda_graphed

    try:
        replay = cuda_graphed(fn, "cuda")
    except RuntimeError as e:
        print(f"  no CUDA graph: {e}"[:200])
        return float("nan")
    return _bench(replay, reps_ms)


def run_sweep(args):
    from distr_patch.eval.speed import op_settings

    torch.manual_seed(0)
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    variants = _variants(args)
    if args.variants:
        keep = set(args.variants)
        variants = {k: v for k, v in variants.items() if k in keep or v["kind"] in ("flash", "cudnn")}
    rows = []
    for d in args.d:
        H = max(1, args.model_dim // d)
        for N in args.n:
            B = max(1, args.tokens // N)
            for causal in args.causal:
                q = torch.randn(B, H, N, d, device=dev, dtype=dtype)
                k = torch.randn(B, H, N, d, device=dev, dtype=dtype)
                v = torch.randn(B, H, N, d, device=dev, dtype=dtype)
                inputs = dict(q=q.clone(), k=k.clone(), v=v.clone())  # to check no variant writes into them
                # exact reference on a slice (batch 0, first 4 heads) in fp32
                hs = slice(0, min(H, 4))
                exact = torch.nn.functional.scaled_dot_product_attention(
                    q[:1, hs].float(), k[:1, hs].float(), v[:1, hs].float(), is_causal=causal)
                flops = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0)
                base = {}
                # first every variant's first call (Triton compiles; the error against exact), then the timings, all
                # warm: a variant timed right after its own compile (the GPU idle for seconds) read slow in
                # compare_fwd_configs.py, and the baselines never compile
                ready = []
                for name, spec in variants.items():
                    fn = _make_fn(spec, q, k, v, causal)
                    if fn is None:
                        continue
                    try:
                        out = fn()
                        torch.cuda.synchronize()
                    except Exception as e:  # a peer backend that does not support this shape
                        print(f"  skip {name} d={d} N={N} causal={causal}: {type(e).__name__}: {e}"[:200])
                        continue
                    ready.append((name, spec, fn, _rel_err(out[:1, hs], exact)))
                    del out
                    check_inputs_untouched(inputs, dict(q=q, k=k, v=v), name)
                if ready:
                    _bench(ready[0][2], 100)  # the GPU busy again before the first timing
                fns = {name: fn for name, _, fn, _ in ready}
                passes = timed_rounds(fns, args.rounds, settled(lambda name: _bench(fns[name], args.rep_ms),
                                                                lambda name: fns[name](), args.settle_ms))
                check_inputs_untouched(inputs, dict(q=q, k=k, v=v), "a variant's timed calls")
                for name, spec, fn, err in ready:
                    ms, spread = median_spread(passes[name])
                    gfn = _grouping_fn(spec.get("kw", {}), q, k) if spec["kind"] == "distr" else None
                    if gfn is not None:  # its grouping timed at the clocks the call's own load sets, as in the call
                        run_for(fn, args.settle_ms)
                    gms = _bench(gfn, args.rep_ms) if gfn is not None else 0.0
                    ggms = _bench_graph(gfn, args.rep_ms) if gfn is not None else 0.0
                    if spec["kind"] in ("flash", "cudnn"):
                        base[spec["kind"]] = ms
                    row = dict(d=d, N=N, B=B, H=H, causal=causal, variant=name, ms=ms, tflops=flops / ms * 1e-9,
                               rel_err=err, grouping_ms=gms, grouping_gpu_ms=ggms, ms_passes=passes[name],
                               spread_pct=spread)
                    if spec["kind"] == "distr":  # what `distr-patch report --speed-from` matches eval variants by
                        row["settings"] = op_settings(spec["kw"])
                    rows.append(row)
                    print(f"  d={d:<3} N={N:<5} causal={int(causal)} {name:<30} {ms:8.3f} ms (spread {spread:4.1f}%) "
                          f"{row['tflops']:6.1f} TF/s err={err:.2e} grouping={gms:.3f} ms", flush=True)
                for row in rows:
                    if row["d"] == d and row["N"] == N and row["causal"] == causal:
                        row["vs_flash"] = base.get("flash", float("nan")) / row["ms"]
                        row["vs_cudnn"] = base.get("cudnn", float("nan")) / row["ms"]
                del q, k, v, exact, inputs
                torch.cuda.empty_cache()
    return rows


def run_tune(args):
    """Time the kernel under several tile configs; prints the best per (d, variant, causal)."""
    from distr_patch.ops.configs import FwdConfig
    from distr_patch.ops.distr_attn import _triton_forward

    dev = torch.device("cuda")
    tiles = ((64, 4, 2), (64, 4, 3), (64, 8, 2), (64, 8, 3), (128, 8, 2), (32, 4, 3))
    cfgs = [FwdConfig(128, bn, w, s, lay) for bn, w, s in tiles for lay in ("transposed", "natural")]
    cfgs += [FwdConfig(128, bn, w, s, "transposed", kv_tma=True) for bn, w, s in tiles]  # G=1 with TMA tiles
    # grouped_qk="expanded" (the default path: Q_eff Kᵀ; no K layout of its own), with 32-key band tiles, Q_eff
    # from a regroup launch or the kernel's prologue, K/V tiles by pointers or TMA
    cfgs += [FwdConfig(128, bn, w, s, "natural", grouped_qk="expanded", band_block_n=min(32, bn), qeff_prologue=pro,
                       kv_tma=tma) for bn, w, s in tiles for pro, tma in ((False, False), (True, False), (True, True))]
    tune_variants = {
        "G=1": dict(group_size=1),
        "G=2 mean": dict(group_size=2, fusion="mean"),
        "G=2 rank1 W128 c.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
    }
    rows = []
    for d in args.d:
        H = max(1, args.model_dim // d)
        N = 4096
        B = max(1, args.tokens // N)
        q, k, v = (torch.randn(B, H, N, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        for causal in args.causal:
            for vname, kw in tune_variants.items():
                full = dict(group_size=2, block_m=128, fusion="mean", exact_window=0, window_correction=0.0,
                            causal=causal, attention_mask=None, scale=None, num_hash_bits=16, seed=0,
                            query_valid=None, groups=None)
                full.update(kw)
                results = []
                for cfg in cfgs:
                    if kw["group_size"] == 1 and (cfg.k_layout == "natural" or cfg.grouped_qk == "expanded"):
                        continue  # G=1: the exact kernel, with pointer or TMA tiles
                    if kw["group_size"] > 1 and cfg.grouped_qk == "reduced" and cfg.kv_tma:
                        continue  # the reduced path has no TMA tiles: the same config again

                    try:
                        ms = _bench(lambda: _triton_forward(q, k, v, config=cfg, **full), 60)
                    except Exception as e:
                        print(f"  cfg {cfg} failed: {type(e).__name__}"[:160])
                        continue
                    results.append((ms, cfg))
                results.sort(key=lambda t: t[0])
                for ms, cfg in results[:3]:
                    rows.append(dict(d=d, causal=causal, variant=vname, ms=ms, **asdict(cfg)))
                best = results[0]
                print(f"  tune d={d} causal={int(causal)} {vname:<20} best {best[0]:.3f} ms {best[1]} | worst "
                      f"{results[-1][0]:.3f} ms", flush=True)
        # the grouping's own kernels, apart
        from distr_patch.ops.grouping_triton import triton_grouping
        for fusion in ("mean", "rank1"):
            ms = _bench(lambda: triton_grouping(q, group_size=2, block_m=128, num_hash_bits=16, seed=0,
                                                query_valid=None, fusion=fusion), 60)
            print(f"  grouping kernel d={d} {fusion}: {ms:.3f} ms", flush=True)
        from distr_patch.ops.distr_attn import transpose_keys
        print(f"  K transpose copy d={d}: torch {_bench(lambda: k.transpose(-1, -2).contiguous(), 60):.3f} ms, "
              f"triton {_bench(lambda: transpose_keys(k), 60):.3f} ms", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return rows


BWD_VARIANTS = {
    "sdpa-flash": dict(kind="flash"),
    "sdpa-cudnn": dict(kind="cudnn"),
    "distr G=1": dict(kind="distr", kw=dict(group_size=1)),
    "distr G=2 mean": dict(kind="distr", kw=dict(group_size=2, fusion="mean", block_m=128)),
    "distr G=2 rank1": dict(kind="distr", kw=dict(group_size=2, fusion="rank1", block_m=128)),
    "distr G=2 rank1 W128 c.5": dict(kind="distr", kw=dict(group_size=2, fusion="rank1", exact_window=128,
                                                           window_correction=0.5, block_m=128)),
    "distr G=2 mean sdpa": dict(kind="distr", kw=dict(group_size=2, fusion="mean", block_m=128, backend="sdpa")),
    "distr G=2 rank1 sdpa": dict(kind="distr", kw=dict(group_size=2, fusion="rank1", block_m=128, backend="sdpa")),
}


# --backward-paths: the ``distr_patch.ops.configs`` switches of each extra row. The first two are grouped
# variants only (they differ in how Q_eff and dQ_eff are mapped); the last two force dQ's way (atomics in the
# dK/dV kernel, or the dQ kernel) for every variant, whatever the table picks
BWD_PATHS = {"launches": dict(DEFAULT_KEEP_QEFF=False, DEFAULT_DQ_EPILOGUE=False, DEFAULT_DQ_ATOMIC=False),
             "kept Q_eff": dict(DEFAULT_KEEP_QEFF=True, DEFAULT_DQ_EPILOGUE=False, DEFAULT_DQ_ATOMIC=False),
             "atomic dQ": dict(DEFAULT_DQ_ATOMIC=True), "dQ kernel": dict(DEFAULT_DQ_ATOMIC=False),
             "bwd TMA": dict(DEFAULT_BWD_KV_TMA=True, DEFAULT_BWD_Q_TMA=True),
             "no bwd TMA": dict(DEFAULT_BWD_KV_TMA=False, DEFAULT_BWD_Q_TMA=False),
             "dK/dV TMA": dict(DEFAULT_BWD_KV_TMA=True, DEFAULT_BWD_Q_TMA=False),
             "dQ TMA": dict(DEFAULT_BWD_KV_TMA=False, DEFAULT_BWD_Q_TMA=True),
             "bwd TMA, dQ kernel": dict(DEFAULT_BWD_KV_TMA=True, DEFAULT_BWD_Q_TMA=True, DEFAULT_DQ_ATOMIC=False)}
GROUPED_ONLY_PATHS = ("launches", "kept Q_eff")


def _with_paths(paths, fn):
    """fn under the backward path switches ``paths`` (attributes of ``distr_patch.ops.configs``), restored
    after; fn itself when None."""
    if paths is None:
        return fn
    from distr_patch.ops import configs

    def run(*a):
        saved = {name: getattr(configs, name) for name in paths}
        for name, value in paths.items():
            setattr(configs, name, value)
        try:
            return fn(*a)
        finally:
            for name, value in saved.items():
                setattr(configs, name, value)
    return run


def _fwd_fn(spec, causal, backend):
    """(q, k, v) -> output, for one variant."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from distr_patch.ops import distr_attention

    if spec["kind"] in ("flash", "cudnn"):
        sdp = SDPBackend.FLASH_ATTENTION if spec["kind"] == "flash" else SDPBackend.CUDNN_ATTENTION

        def fn(q, k, v):
            with sdpa_kernel(sdp):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return fn
    kw = dict(spec["kw"])
    backend = kw.pop("backend", backend)  # a variant's own engine ("sdpa") over the run's
    return lambda q, k, v: distr_attention(q, k, v, causal=causal, backend=backend, **kw)


def _grads(fn, q, k, v, do):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    return torch.autograd.grad(fn(q, k, v), (q, k, v), do)


def _time_cpu(fn, reps_ms):
    """Median wall time (ms) on the CPU, for the interpreter smoke test."""
    import time
    times = []
    budget = time.perf_counter() + reps_ms / 1e3
    while not times or (time.perf_counter() < budget and len(times) < 5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run_backward(args):
    """Forward+backward time of each variant with the relative error of its gradients."""
    from distr_patch.ops import reference_distr_attention

    torch.manual_seed(0)
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    backend = "triton"  # the fused kernels, unless a variant names its engine ("auto" could pick SDPA on the GPU)
    variants = BWD_VARIANTS
    if args.variants:
        keep = set(args.variants)
        variants = {k: v for k, v in variants.items() if k in keep or v["kind"] in ("flash", "cudnn")}
    if args.backward_paths:
        variants = dict(variants)
        for name, spec in list(variants.items()):
            if spec["kind"] == "distr" and spec["kw"].get("backend") != "sdpa":  # the paths are our kernels'
                grouped = spec["kw"].get("group_size", 2) > 1
                for label, paths in BWD_PATHS.items():
                    if (grouped or label not in GROUPED_ONLY_PATHS) and label in (args.paths or BWD_PATHS):
                        variants[f"{name} ({label})"] = dict(spec, paths=paths)
    rows = []
    for d in args.d:
        H = max(1, args.model_dim // d)
        for N in args.n:
            B = max(1, args.tokens // N)
            for causal in args.causal:
                q, k, v, do = (torch.randn(B, H, N, d, device=dev, dtype=dtype) for _ in range(4))
                # fp32 references on a slice (batch 0, the first heads; heads are independent)
                hs = slice(0, min(H, 2 if N <= 4096 else 1))
                sl = [t[:1, hs].float() for t in (q, k, v, do)]

                def exact(q, k, v):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                exact_g = _grads(exact, *sl)
                flops = 4.0 * B * H * N * N * d * (0.5 if causal else 1.0) * 3.5  # fwd + bwd (2.5x)
                base = {}
                ready = []  # (name, spec, step, gradient errors, error vs exact): first calls done, to be timed
                for name, spec in variants.items():
                    fn = _fwd_fn(spec, causal, backend)
                    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

                    def grads_once(fn=fn, qg=qg, kg=kg, vg=vg):  # bound now: timed after the loop
                        return torch.autograd.grad(fn(qg, kg, vg), (qg, kg, vg), do)
                    step = _with_paths(spec.get("paths"), grads_once)
                    try:
                        got = step()
                        if on_gpu:
                            torch.cuda.synchronize()
                    except Exception as e:  # a backend that is unavailable or does not support this shape
                        print(f"  skip {name} d={d} N={N} causal={causal}: {type(e).__name__}: {e}"[:200])
                        continue
                    got = [g[:1, hs].float() for g in got]
                    if spec["kind"] == "distr" and spec["kw"].get("group_size", 2) > 1:
                        ref_kw = {n: x for n, x in spec["kw"].items() if n != "backend"}
                        ref_g = _grads(lambda q_, k_, v_: reference_distr_attention(q_, k_, v_, causal=causal,
                                                                                    **ref_kw), *sl)
                    else:
                        ref_g = exact_g
                    errs = [_rel_err(a, b) for a, b in zip(got, ref_g)]
                    err_exact = max(_rel_err(a, b) for a, b in zip(got, exact_g))
                    del got, ref_g
                    ready.append((name, spec, step, errs, err_exact))
                if ready and on_gpu:  # as run_sweep: every variant compiled first, the GPU busy again, then timed
                    _bench(ready[0][2], 100)
                steps = {name: step for name, _, step, _, _ in ready}
                timer = _bench if on_gpu else _time_cpu
                passes = timed_rounds(steps, args.rounds, settled(lambda name: timer(steps[name], args.rep_ms),
                                                                  lambda name: steps[name](), args.settle_ms))
                for name, spec, step, errs, err_exact in ready:
                    ms, spread = median_spread(passes[name])
                    if spec["kind"] in ("flash", "cudnn"):
                        base[spec["kind"]] = ms
                    row = dict(d=d, N=N, B=B, H=H, causal=causal, variant=name, ms=ms, tflops=flops / ms * 1e-9,
                               err_dq=errs[0], err_dk=errs[1], err_dv=errs[2], err_vs_exact=err_exact,
                               ms_passes=passes[name], spread_pct=spread)
                    rows.append(row)
                    print(f"  d={d:<3} N={N:<5} causal={int(causal)} {name:<26} fwd+bwd {ms:8.3f} ms "
                          f"(spread {spread:4.1f}%) {row['tflops']:6.1f} TF/s "
                          f"err dq/dk/dv={errs[0]:.1e}/{errs[1]:.1e}/{errs[2]:.1e} vs exact={err_exact:.1e}",
                          flush=True)
                for row in rows:
                    if row["d"] == d and row["N"] == N and row["causal"] == causal:
                        row["vs_flash"] = base.get("flash", float("nan")) / row["ms"]
                        row["vs_cudnn"] = base.get("cudnn", float("nan")) / row["ms"]
                del q, k, v, do, sl, exact_g
                if on_gpu:
                    torch.cuda.empty_cache()
    return rows


def print_table_backward(rows):
    print()
    print("| d | N | causal | variant | fwd+bwd ms | TFLOP/s | vs flash | vs cuDNN | dq err | dk err | dv err | "
          "err vs exact | spread % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['N']} | {int(r['causal'])} | {r['variant']} | {r['ms']:.3f} | {r['tflops']:.0f} | "
              f"{r.get('vs_flash', float('nan')):.2f} | {r.get('vs_cudnn', float('nan')):.2f} | "
              f"{r['err_dq']:.1e} | {r['err_dk']:.1e} | {r['err_dv']:.1e} | {r['err_vs_exact']:.1e} | "
              f"{r.get('spread_pct', 0.0):.1f} |")


def print_table(rows):
    print()
    # grouping %: the grouping's own launches (``_grouping_fn``) as a share of the call, timed from Python (host
    # launch overhead included where it exceeds the GPU time: noisy for launches of ~0.05 ms) / replayed from a CUDA
    # graph (GPU time only); over G=1 %: the whole extra time of the call against our exact kernel (G=1) on the same
    # inputs, prologue work included
    print("| d | N | causal | variant | ms | TFLOP/s | vs flash | vs cuDNN | rel. err | grouping % Python / GPU | "
          "over G=1 % | spread % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    g1 = {(r["d"], r["N"], r["causal"]): r["ms"] for r in rows if r["variant"] == "distr G=1"}
    for r in rows:
        gshare = 100.0 * r["grouping_ms"] / r["ms"] if r.get("grouping_ms") else 0.0
        gpu_share = 100.0 * r["grouping_gpu_ms"] / r["ms"] if r.get("grouping_gpu_ms") else 0.0
        t1 = g1.get((r["d"], r["N"], r["causal"]))
        over = f"{100.0 * (r['ms'] - t1) / r['ms']:.1f}" if t1 and r["variant"].startswith("distr") else "–"
        print(f"| {r['d']} | {r['N']} | {int(r['causal'])} | {r['variant']} | {r['ms']:.3f} | {r['tflops']:.0f} | "
              f"{r.get('vs_flash', float('nan')):.2f} | {r.get('vs_cudnn', float('nan')):.2f} | {r['rel_err']:.1e} | "
              f"{gshare:.1f} / {gpu_share:.1f} | {over} | {r.get('spread_pct', 0.0):.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, nargs="+", default=[64, 128], help="head dims")
    p.add_argument("--n", type=int, nargs="+", default=[1024, 4096, 16384], help="sequence lengths (N = M)")
    p.add_argument("--causal", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    p.add_argument("--tokens", type=int, default=32768, help="B*N (B = tokens // N) to fill the GPU")
    p.add_argument("--model-dim", type=int, default=2048, help="H = model_dim // d")
    p.add_argument("--rep-ms", type=int, default=100, help="timing budget per variant (ms)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timing passes over a shape's variants, each starting further down the list; a variant's "
                        "time is its median pass and the passes' spread shows the noise (the variant timed just "
                        "before is --settle-ms's concern)")
    p.add_argument("--settle-ms", type=float, default=None,
                   help="before each timing, run the variant itself back to back this long (ms), so it is timed "
                        "in its own steady state rather than at the clocks the previous variant left (default 200 "
                        "on the GPU, 0 on the CPU; after 300 ms of cuDNN the H100's SM clock read 1695 MHz, after "
                        "our kernel 1860, and our kernel timed 9%% slower)")
    p.add_argument("--variants", nargs="*", help="subset of variant names (SDPA baselines always run)")
    p.add_argument("--quick", action="store_true", help="N=4096 only")
    p.add_argument("--tune", action="store_true", help="sweep the kernel's tile configurations instead")
    p.add_argument("--json", help="write all rows to this JSON file")
    p.add_argument("--plot", metavar="PNG", help="also draw the rows as a figure (speed vs SDPA-flash over N per "
                   "head dim and causal flag; distr_patch/eval/op_plot.py, needs matplotlib); "
                   "scripts/plot_bench_op.py draws a --json file later")
    p.add_argument("--backward", action="store_true",
                   help="time forward+backward and report each gradient's error (G=1, G=2 mean/rank1/W128 c.5)")
    p.add_argument("--backward-paths", action="store_true",
                   help="with --backward: also each variant on the backward's other paths (regroup launches "
                        "for Q_eff and dQ; the forward's Q_eff with a dQ launch; dQ by atomics / by its kernel)")
    p.add_argument("--paths", nargs="+", choices=list(BWD_PATHS),
                   help="with --backward-paths: only these of the extra paths (default: all)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: --backward smoke test through the Triton interpreter (TRITON_INTERPRET=1)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.settle_ms is None:
        args.settle_ms = 200.0 if args.device == "cuda" else 0.0
    if args.settle_ms < 0:
        p.error(f"--settle-ms must be >= 0, got {args.settle_ms}")
    if args.paths and not args.backward_paths:
        p.error("--paths selects among --backward-paths' rows: add --backward-paths (and --backward)")
    if args.backward_paths and not args.backward:
        p.error("--backward-paths needs --backward")
    if args.plot and args.tune:
        p.error("--plot draws the sweep's speed vs SDPA-flash; --tune's rows time tile configs and have no baseline")
    if args.plot:  # before the run: a path matplotlib cannot write would cost the figure only after the GPU time
        from distr_patch.eval.config import ConfigError
        from distr_patch.eval.op_plot import check_figure_path

        try:
            check_figure_path(args.plot)
        except ConfigError as e:
            p.error(f"--plot: {e}")
        except ImportError as e:
            print(f"bench_attention.py: warning: --plot: {e}; the run goes on without the figure", file=sys.stderr)
            args.plot = None
    if args.variants:
        known = BWD_VARIANTS if args.backward else _variants(args)
        unknown = [name for name in args.variants if name not in known]
        if unknown:
            p.error(f"--variants: no variant named {', '.join(map(repr, unknown))}"
                    f"{' with --backward' if args.backward else ''}; choose from {', '.join(known)}")
    args.causal = [bool(c) for c in args.causal]
    if args.quick:
        args.n = [4096]
    if args.device == "cpu":
        from distr_patch.ops.configs import interpreting
        if not (args.backward and interpreting()):
            sys.exit("--device cpu is the --backward smoke test and needs TRITON_INTERPRET=1")
        rows = run_backward(args)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_attention.py times the Triton kernel and needs a CUDA GPU "
                     "(on the CPU, `distr-patch bench model` times the reference path)")
        import triton
        from distr_patch.eval.provenance import ptxas_sm90

        print(f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} "
              f"(sm_90 ptxas {ptxas_sm90(torch.device('cuda'))}) | sage1: {'yes' if _sage() else 'not installed'}")
        rows = run_backward(args) if args.backward else run_tune(args) if args.tune else run_sweep(args)
    if args.json or args.plot:
        from distr_patch.eval.provenance import provenance  # versions, git commit

        device = torch.device(args.device)
        header = dict(kind="bench-op-backward" if args.backward else "bench-op",  # backward rows time fwd+bwd
                      gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                      device=str(device), torch=torch.__version__, provenance=provenance(device, seed=0),
                      command=sys.argv[1:] if argv is None else list(argv),
                      timing=None if args.tune else  # (--tune times each tile config once, unsettled)
                      dict(rounds=args.rounds, settle_ms=args.settle_ms, rep_ms=args.rep_ms))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(header, rows=rows), f, indent=1)
            print(f"wrote {args.json}")
        if args.plot:
            from distr_patch.eval.op_plot import plot_op

            try:
                print(f"wrote {plot_op(header, rows, args.plot)}")
            except ImportError as e:  # no matplotlib here: the figure is lost, not the run (the table prints last)
                print(f"bench_attention.py: warning: --plot: {e}", file=sys.stderr)
    if args.backward:
        print_table_backward(rows)
    elif args.tune:
        print("\n| d | causal | variant | ms | block_n | warps | stages | k_layout | grouped_qk | prologue | tma |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['d']} | {int(r['causal'])} | {r['variant']} | {r['ms']:.3f} | {r['block_n']} | "
                  f"{r['num_warps']} | {r['num_stages']} | {r['k_layout']} | {r['grouped_qk']} | "
                  f"{int(r['qeff_prologue'])} | {int(r['kv_tma'])} |")
    else:
        print_table(rows)
    return rows


if __name__ == "__main__":
    main()
