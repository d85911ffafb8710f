"""Registers, spills and shared memory of the forward kernel per launch config, compiled for Hopper
(sm_90) on any machine: no GPU needed.

The forward's launches are compiled, not run: a stand-in Triton driver names an sm_90 target and every
``JITFunction.run`` becomes a warm-up (compile only) on CPU tensors. Triton's bundled ptxas (``-v`` on the
PTX) then reports each kernel's registers and spills; 65536 registers per SM give how many programs fit.
Use it to see why a config is slow before spending device time. Caveats:
- the numbers are this machine's Triton's; the GPU image may run an older one, whose code generation can differ;
- it leans on Triton internals (``driver.set_active``, ``JITFunction.run``) and may need updating with them.

    python scripts/kernel_resources.py                      # the variants below, default and other configs
    python scripts/kernel_resources.py --variants "G2 r1 W128 c.5" --d 64
    python scripts/kernel_resources.py --backward            # each backward kernel at the backward table's tiles
    python scripts/kernel_resources.py --grouping            # the grouping launch (G=2 mean / rank1, both projections)
    python scripts/kernel_resources.py --band                # the SDPA engine's band kernel (exact window) per tile
    python scripts/kernel_resources.py --qeff                # the SDPA engine's fused grouping + Q_eff launch per tile
    python scripts/kernel_resources.py --mask float --default-only   # with a tensor attention mask (shared memory)
    python scripts/kernel_resources.py --default-only --loop  # + the key-tile loop's SASS: instructions, UMOV, BAR

Prints one markdown table last.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernels, not the interpreter's
# launches through Triton's own path, which the stand-in driver turns into compiles (the launch memo of ops/launch.py,
# on Triton 3.6 / 3.7, would ask the driver for a launcher)
os.environ["DISTR_FAST_LAUNCH"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver, jit  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import distr_patch.ops.distr_attn as da  # noqa: E402
from distr_patch.ops import compute_groups  # noqa: E402
from distr_patch.ops.configs import fwd_config, with_fused_grouping  # noqa: E402

VARIANTS = {"G1": dict(group_size=1), "G2 mean": dict(group_size=2, fusion="mean"),
            "G2 rank1": dict(group_size=2, fusion="rank1"),
            "G2 r1 W128 c.5": dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5)}


class _Sm90Driver:
    """Just enough of a Triton driver to compile for sm_90 without a GPU."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


_compiled: list = []


def _compile_only(run):
    def wrapper(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        _compiled.append((self.__name__, kernel))
        return kernel
    return wrapper


def _ptxas() -> str:
    """The ptxas Triton itself uses for sm_90 (its bundled one; the name says Blackwell, the binary is new)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        try:
            return get_ptxas(90).path
        except TypeError:  # Triton 3.4: get_ptxas() takes no architecture
            return get_ptxas().path
    except (ImportError, AttributeError):  # older Triton: one bundled ptxas
        return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")


def resources(kernel) -> dict:
    """Registers, spill bytes (stores + loads) and warnings of one compiled kernel, from ``ptxas -v`` on its
    PTX (the cubin's resource table missed spills here), plus Triton's shared memory."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(kernel.asm["ptx"])
    text = subprocess.run([_ptxas(), "-v", "-arch=sm_90a", f.name, "-o", os.devnull], capture_output=True,
                          text=True).stderr
    os.unlink(f.name)
    regs = re.findall(r"Used (\d+) registers", text)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return dict(regs=int(regs[-1]) if regs else -1, spill=sum(map(int, spills[-1])) if spills else -1,
                serialized="C7511" in text or "serialized" in text, shared=int(kernel.metadata.shared))


def main_loop_mix(kernel) -> dict:
    """The forward's key-tile loop in SASS: the first loop of over 100 instructions (a branch back to a label) in
    the kernel compiled by the same ptxas as ``resources`` and read by the nvdisasm beside it. Its length and its
    uniform moves (UMOV: Triton 3.9 rebuilds the wgmma descriptors with them), CTA barriers (BAR) and wgmma (HGMMA);
    counts of instructions as written, each taken once per key tile (predicated ones included)."""
    ptxas = Path(_ptxas())
    nvdisasm = ptxas.parent / "nvdisasm"
    if not nvdisasm.exists():
        raise SystemExit(f"--loop: no nvdisasm beside {ptxas} (this Triton wheel ships none)")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(kernel.asm["ptx"])
        subprocess.run([str(ptxas), "-arch=sm_90a", "k.ptx", "-o", "k.cubin"], cwd=tmp, check=True, capture_output=True)
        sass = subprocess.run([str(nvdisasm), "-c", "k.cubin"], cwd=tmp, check=True, capture_output=True,
                              text=True).stdout
    ins, labels = [], {}
    for line in sass.splitlines():
        label = re.match(r"\s*\.(L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(ins)
        op = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if op:
            ins.append((op.group(1), line))
    for end, (opcode, line) in enumerate(ins):
        back = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", line) if opcode == "BRA" else None
        if back and back.group(1) in labels and end - labels[back.group(1)] > 100:
            body = [o for o, _ in ins[labels[back.group(1)]:end + 1]]
            return dict(loop=len(body), umov=body.count("UMOV"), bar=body.count("BAR"), hgmma=body.count("HGMMA"))
    raise SystemExit("--loop: no loop of over 100 instructions in the kernel's SASS")


def configs(d: int, G: int, window: bool, masked: bool = False, default_only: bool = False):
    """(name, FwdConfig): the table's choice and the alternatives measured on the GPU."""
    W = 128 if window else 0
    base = fwd_config(d, G, 128, exact_window=W, interpret=False, masked=masked)
    out = [("default", base)]
    if default_only:
        return out
    # the first plain key loop warp-specialised (Triton's Hopper pass compiled only with 8 warps here)
    ws = [("ws 8 warps", replace(base, warp_specialize=True, num_warps=8))] if not window else []
    if G == 1:
        cap = 128 if base.num_warps == 8 else 168
        return out + [("tma" if not base.kv_tma else "no tma", replace(base, kv_tma=not base.kv_tma)),
                      (f"maxnreg{cap}", replace(base, maxnreg=cap))] + ws
    out += [("prologue" if not base.qeff_prologue else "Q_eff from memory",
             replace(base, qeff_prologue=not base.qeff_prologue, maxnreg=None)),
            ("tma" if not base.kv_tma else "no tma", replace(base, kv_tma=not base.kv_tma))]
    if not window:
        out.append((f"bn{192 - base.block_n}", replace(base, block_n=192 - base.block_n)))  # 64 <-> 128
    # register caps that let one more program share an SM (8 warps: 2 at <= 128; 4 warps: 3 at <= 168)
    cap = 128 if base.num_warps == 8 else 168
    out.append((f"maxnreg{cap}", replace(base, maxnreg=cap)) if base.maxnreg is None
               else ("uncapped", replace(base, maxnreg=None)))
    if window and not base.qeff_prologue:
        out.append((f"prologue maxnreg{cap}", replace(base, qeff_prologue=True, maxnreg=cap)))
    if base.qeff_prologue and base.grouped_qk == "expanded":  # Q_eff through a scratch: the dot reads it from
        # shared memory, not registers (no wgmma serialisation; measured slower at d=64, docs/benchmarks.md)
        out.append(("Q_eff scratch", replace(base, qt_scratch=True)))
    fused = with_fused_grouping(base, d, 128)  # each program groups its own block (no grouping launch)
    if fused.fused_grouping:
        out.append(("fused grouping", fused))
    return out + ws


def backward_rows(q, k, v, full) -> list:
    """(kernel name, BwdConfig fields, resources) of each backward launch at the table's backward config."""
    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_bwd import _triton_backward

    d = q.shape[-1]
    cfg = bwd_config(d, full["group_size"], full["exact_window"], causal=full["causal"], interpret=False,
                     masked=full["attention_mask"] is not None)
    B, H, N, _ = q.shape
    lse = torch.zeros(B, H, N)
    grp = full["groups"].to(torch.int32) if full["group_size"] > 1 else None
    wa = torch.full(grp.shape, 0.5) if grp is not None and full["fusion"] == "rank1" else None
    _compiled.clear()
    _triton_backward(q, q, k, v, q, lse, grp, wa, wa, config=cfg,
                     **{n: full[n] for n in ("group_size", "block_m", "fusion", "exact_window", "window_correction",
                                             "causal", "attention_mask", "scale")})
    tiles = {"_bwd_dkdv_kernel": (cfg.kv_block_m, cfg.kv_block_n, cfg.kv_warps),
             "_bwd_dq_kernel": (cfg.q_block_m, cfg.q_block_n, cfg.q_warps),
             "_bwd_preprocess_kernel": (cfg.q_block_m, cfg.band_n, cfg.q_warps)}
    return [(kname, tiles.get(kname, ("", "", kern.metadata.num_warps)), resources(kern)) for kname, kern in _compiled]


def grouping_rows(q) -> list:
    """(name, warps, resources) of the grouping launch storing positions (what the Q_eff prologue needs), for G=2
    mean and rank1, with each hash projection (``grouping_triton.PROJECTION``) and each G=2 pair-Gram way; then G=4
    rank1 with each way of forming the groups' Grams (``grouping_triton.POWER_GRAMS``) at the default chunk."""
    from distr_patch.ops import grouping_triton as gt

    rows = []
    saved = gt.PROJECTION, gt.PAIR_WEIGHTS, gt.POWER_GRAMS
    try:
        for G, fusion, proj, pair, grams in (
                (2, "mean", "16bit", "gram", "dot"), (2, "mean", "fp32", "gram", "dot"),
                (2, "rank1", "16bit", "gram", "dot"), (2, "rank1", "fp32", "gram", "dot"),
                (2, "rank1", "16bit", "gather", "dot"), (4, "rank1", "16bit", "gram", "dot"),
                (4, "rank1", "16bit", "gram", "rows")):
            gt.PROJECTION, gt.PAIR_WEIGHTS, gt.POWER_GRAMS = proj, pair, grams
            _compiled.clear()
            gt.triton_grouping(q, group_size=G, block_m=128, num_hash_bits=16, seed=0, query_valid=None,
                               fusion=fusion, positions=True)
            kern = [k for name, k in _compiled if name == "_grouping_kernel"][-1]
            name = f"G{G} {fusion}, {proj} projection" + (
                f", {pair} pairs" if fusion == "rank1" and G == 2 else
                f", grams by {grams}, chunk {gt.power_chunk(q.shape[-1])}" if fusion == "rank1" else "")
            rows.append((name, kern.metadata.num_warps, resources(kern)))
    finally:
        gt.PROJECTION, gt.PAIR_WEIGHTS, gt.POWER_GRAMS = saved
    return rows


QEFF_TILES = ((2, 64, 64), (4, 64, 64), (4, 128, 64), (4, 64, 32), (4, 64, 128), (8, 64, 128), (8, 64, 64))


def qeff_rows(q, default_only: bool = False) -> list:
    """("fusion, regroup way", tiles, resources) of the fused grouping + Q_eff launch (G=2, block_m=128) at each of
    QEFF_TILES, with each way of forming Q_eff's columns and fusion source (``grouping_triton.QEFF_WAYS``,
    ``QEFF_SOURCES``); ``default_only``: the launch's default tile, way and source only."""
    from distr_patch.ops.grouping_triton import QEFF_SOURCES, QEFF_WAYS, qeff_tiles, qeff_way, triton_query_effective

    rows = []
    for fusion in ("mean", "rank1"):
        default_way, default_src = qeff_way(q.shape[-1], fusion == "rank1")
        for way in (default_way,) if default_only else QEFF_WAYS:
            for src in (default_src,) if default_only else QEFF_SOURCES[:1] if way == "gather" else QEFF_SOURCES:
                for tiles in (qeff_tiles(q.shape[-1], fusion == "rank1"),) if default_only else QEFF_TILES:
                    if tiles[1] > q.shape[-1] and tiles[1] != 64:
                        continue
                    _compiled.clear()
                    try:
                        triton_query_effective(q, group_size=2, block_m=128, num_hash_bits=16, seed=0,
                                               query_valid=None, fusion=fusion, tiles=tiles, regroup_way=way,
                                               fusion_from=src)
                    except ValueError as e:  # a tile the launch refuses (it faulted on the GPU): no row
                        print(f"  {fusion}, {way} {tiles}: refused ({str(e)[:60]}...)")
                        continue
                    r = resources([k for n, k in _compiled if n == "_grouping_qeff_kernel"][-1])
                    rows.append((f"{fusion}, {way}{'' if src == 'memory' else ' regs'}", tiles, r))
    return rows


BAND_TILES = ((64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 4, 2), (128, 64, 8, 2), (32, 32, 2, 2), (64, 16, 4, 2))


def band_rows(d: int, causal: bool) -> list:
    """(BandConfig, resources) of the windowed SDPA engine's band-and-merge kernel at each tile of BAND_TILES (both
    grouped partials present, as without causal masking; one with causal masking)."""
    from distr_patch.ops.configs import BandConfig
    from distr_patch.ops.window_merge import band_merge

    N, W = 512, 128
    q, qe, k, v = (torch.randn(1, 2, N, d, dtype=torch.bfloat16) for _ in range(4))
    part = (torch.randn(1, 2, N - W, d, dtype=torch.bfloat16), torch.randn(1, 2, N - W))
    rows = []
    for tiles in BAND_TILES:
        cfg = BandConfig(*tiles)
        _compiled.clear()
        band_merge(q, qe, k, v, part, None if causal else part, causal=causal, window=W, scale=d ** -0.5,
                   window_correction=0.5, config=cfg)
        rows.append((cfg, resources([kern for name, kern in _compiled if name == "_band_merge_kernel"][-1])))
    return rows


def _resource_cells(r: dict, warps: int) -> str:
    """A kernel's table cells: registers | programs per SM by registers (65536 per SM) | spill B | shared KB."""
    per_sm = 65536 // max(1, r["regs"] * 32 * warps)
    return f"{r['regs']} | {per_sm} | {r['spill']} | {r['shared'] / 1024:.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"some of {list(VARIANTS)}")
    ap.add_argument("--d", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--causal", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--backward", action="store_true", help="the backward's kernels at the table's backward config")
    ap.add_argument("--grouping", action="store_true", help="the grouping launch instead of the attention kernels")
    ap.add_argument("--mask", choices=["none", "bool", "float"], default="none",
                    help="compile with a [1, H, N, N] tensor attention mask of this kind (its tiles take shared memory)")
    ap.add_argument("--default-only", action="store_true", help="the table's config only, no alternatives")
    ap.add_argument("--band", action="store_true", help="the SDPA engine's band kernel (exact window) at each tile")
    ap.add_argument("--qeff", action="store_true", help="the SDPA engine's fused grouping + Q_eff launch per tile")
    ap.add_argument("--loop", action="store_true", help="also the forward's key-tile loop in SASS: its instructions, "
                    "UMOV, BAR and HGMMA (needs the nvdisasm a full Triton wheel ships beside ptxas)")
    args = ap.parse_args(argv)
    if args.loop and (args.backward or args.grouping or args.band or args.qeff):
        ap.error("--loop reads the forward kernel's key-tile loop only; leave out --backward, --grouping, --band "
                 "and --qeff")
    driver.set_active(_Sm90Driver())
    jit.JITFunction.run = _compile_only(jit.JITFunction.run)
    if args.qeff:
        from distr_patch.ops.grouping_triton import qeff_tiles, qeff_way

        print(f"Triton {triton.__version__}, sm_90 (compiled only), N=512 bf16, G=2, block_m=128; * = the default\n")
        print("| d | fusion, regroup | warps, columns, rows | registers | programs/SM by registers | spill B "
              "| shared KB |\n|---|---|---|---|---|---|---|")
        for d in args.d:
            for fusion, tiles, r in qeff_rows(torch.randn(1, 2, 512, d, dtype=torch.bfloat16), args.default_only):
                way, src = qeff_way(d, fusion.startswith("rank1"))
                default = (tiles == qeff_tiles(d, fusion.startswith("rank1"))
                           and fusion.endswith(f", {way}{'' if src == 'memory' else ' regs'}"))
                star = "*" if default else ""
                print(f"| {d} | {fusion} | {tiles}{star} | {_resource_cells(r, tiles[0])} |", flush=True)
        return
    if args.band:
        from distr_patch.ops.configs import band_config

        print(f"Triton {triton.__version__}, sm_90 (compiled only), bf16, W=128; * = the table's tile\n")
        print("| d | causal | rows x keys | warps | stages | registers | programs/SM by registers | spill B | shared KB |\n"
              "|---|---|---|---|---|---|---|---|---|")
        for d in args.d:
            for causal in args.causal:
                for cfg, r in band_rows(d, bool(causal)):
                    star = "*" if cfg == band_config(bool(causal), interpret=False) else ""
                    print(f"| {d} | {causal} | {cfg.block_m}x{cfg.block_n}{star} | {cfg.num_warps} | {cfg.num_stages} "
                          f"| {_resource_cells(r, cfg.num_warps)} |", flush=True)
        return
    if args.grouping:
        print(f"Triton {triton.__version__}, sm_90 (compiled only), N=512 bf16, block_m=128, storing positions\n")
        print("| d | launch | warps | registers | programs/SM by registers | spill B | shared KB |\n"
              "|---|---|---|---|---|---|---|")
        for d in args.d:
            for name, w, r in grouping_rows(torch.randn(1, 2, 512, d, dtype=torch.bfloat16)):
                print(f"| {d} | {name} | {w} | {_resource_cells(r, w)} |", flush=True)
        return
    rows = []
    for d in args.d:
        q, k, v = (torch.randn(1, 2, 512, d, dtype=torch.bfloat16) for _ in range(3))
        mask = {"none": None, "bool": torch.rand(1, 2, 512, 512) > 0.2, "float": torch.zeros(1, 2, 512, 512)}[args.mask]
        for name in args.variants:
            kw = VARIANTS[name]
            for causal in args.causal:
                G = kw["group_size"]  # groups from torch: the grouping kernel is compiled, never run, here
                full = dict(group_size=G, block_m=128, fusion=kw.get("fusion", "mean"),
                            exact_window=kw.get("exact_window", 0), window_correction=kw.get("window_correction", 0.0),
                            causal=bool(causal), attention_mask=mask, scale=None, num_hash_bits=16, seed=0,
                            query_valid=None,
                            groups=compute_groups(q, group_size=G, block_m=128, num_hash_bits=16, seed=0))
                if args.backward:
                    for kname, (bm, bn, w), r in backward_rows(q, k, v, full):
                        rows.append((d, causal, name, kname, f"{bm}x{bn}", w, r))
                        print(rows[-1], flush=True)
                    continue
                for cname, cfg in configs(d, kw["group_size"], full["exact_window"] > 0, mask is not None,
                                          args.default_only):
                    _compiled.clear()
                    try:
                        # a fused grouping needs groups=None (the launches only compile here, none runs)
                        da._triton_forward(q, k, v, config=cfg, **dict(full, groups=None) if cfg.fused_grouping
                                           else full)
                    except RuntimeError as e:  # a pass or ptxas that fails on this build: a row that says so
                        print(f"{d} {causal} {name} {cname}: compile failed ({str(e)[:120]})", flush=True)
                        continue
                    kern = [kernel for kname, kernel in _compiled if kname == "_distr_fwd_kernel"][-1]
                    r = dict(resources(kern), **main_loop_mix(kern)) if args.loop else resources(kern)
                    rows.append((d, causal, name, cname, f"{cfg.block_m}x{cfg.block_n}", cfg.num_warps, r))
                    print(rows[-1], flush=True)
    print(f"\nTriton {triton.__version__}, sm_90 (compiled only), attention mask: {args.mask}; an SM has 227 KB of "
          "shared memory\n")
    print(f"| d | causal | variant | {'kernel' if args.backward else 'config'} | tile (rows x keys) | warps | "
          "registers | programs/SM by registers | spill B | wgmma serialized | shared KB |"
          + (" loop instructions | UMOV | BAR | HGMMA |" if args.loop else ""))
    print("|---" * (15 if args.loop else 11) + "|")
    for d, causal, name, cname, bn, w, r in rows:
        per_sm = 65536 // max(1, r["regs"] * 32 * w)
        loop = f" {r['loop']} | {r['umov']} | {r['bar']} | {r['hgmma']} |" if args.loop else ""
        print(f"| {d} | {causal} | {name} | {cname} | {bn} | {w} | {r['regs']} | {per_sm} | {r['spill']} | "
              f"{'yes' if r['serialized'] else ''} | {r['shared'] / 1024:.0f} |{loop}")


if __name__ == "__main__":
    main()
