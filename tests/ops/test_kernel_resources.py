"""scripts/kernel_resources.py compiles the forward for sm_90 on a machine without a GPU and reads its
registers and spills (a subprocess: the test session's kernels are the interpreter's)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import triton

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_resources_reports_registers_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["DISTR_QEFF_PROLOGUE"] = "1"  # the prologue on every Triton (on >= 3.9 the table forms Q_eff by a launch here)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--variants", "G2 r1 W128 c.5",
                          "--d", "64", "--causal", "0"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| 64 |")]
    configs = {r[3].strip(): r for r in rows}
    # Q_eff in the prologue under the table's 128-register cap, and its alternatives
    assert {"default", "Q_eff from memory", "uncapped", "Q_eff scratch"} <= set(configs)
    regs = {name: int(r[6]) for name, r in configs.items()}
    assert all(0 < n <= 255 for n in regs.values())
    assert regs["default"] <= 128 < regs["uncapped"]  # the cap reaches the compiler
    spill = {name: int(r[8]) for name, r in configs.items()}
    assert spill["Q_eff scratch"] <= spill["default"]  # (Triton 3.9: 248 B -> 0)
    assert re.search(r"Triton \d+\.\d+", run.stdout)


def test_kernel_resources_reports_the_grouping_launch():
    """--grouping: the grouping launch's registers, spills and shared memory; the 16-bit projection (one 16-bit dot)
    stages less in shared memory than the fp32 one, and neither spills at the warps the launch uses."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--grouping", "--d", "64"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r[1].strip(): r for r in (line.split("|")[1:-1] for line in run.stdout.splitlines())
            if r and r[0].strip() == "64"}
    want = {"G2 mean, 16bit projection", "G2 mean, fp32 projection", "G2 rank1, 16bit projection, gram pairs"}
    assert want <= set(rows)
    spill = {name: int(r[5]) for name, r in rows.items()}
    shared = {name: int(r[6]) for name, r in rows.items()}
    # Triton 3.4 (the floor) spills 24 B in the fp32 projection (fp32 q only); the releases the launch was tuned on
    # (3.6, 3.9) spill nothing (docs/compatibility.md)
    old_triton = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 6)
    assert all(s == 0 or (old_triton and "fp32 projection" in name and s <= 64) for name, s in spill.items()), spill
    assert shared["G2 mean, 16bit projection"] < shared["G2 mean, fp32 projection"]


def test_kernel_resources_reports_the_fused_qeff_launch():
    """--qeff --default-only: the SDPA engine's fused grouping + Q_eff launch at its default tiles compiles for sm_90
    without spilling, at d=64 and 128, for both fusions."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--qeff", "--default-only",
                          "--d", "64", "128"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [r for r in (line.split("|")[1:-1] for line in run.stdout.splitlines())
            if r and r[0].strip() in ("64", "128")]
    from distr_patch.ops.grouping_triton import qeff_way

    def label(d, fusion):  # the default way and fusion source of the table
        way, src = qeff_way(int(d), fusion == "rank1")
        return f"{fusion}, {way}{'' if src == 'memory' else ' regs'}"
    assert {(r[0].strip(), r[1].strip()) for r in rows} == {(d, label(d, f)) for d in ("64", "128")
                                                           for f in ("mean", "rank1")}
    assert all(r[2].strip().endswith("*") for r in rows)  # the defaults
    # No spill where none was measured: Triton 3.4 (the floor), 3.9 (CI). At d=128 rank1 (255 registers) Triton 3.7.1,
    # which torch 2.13's CUDA builds pin, spills 16 B (docs/compatibility.md), and 3.6 (the GPU image) 8 B (compiled
    # in the thirty-eighth session, with and without TRITON_DEFAULT_FP_FUSION).
    no_spill = ".".join(triton.__version__.split(".")[:2]) in ("3.4", "3.9")
    assert all(0 < int(r[3]) <= 255 and (int(r[5]) == 0 or (not no_spill and int(r[5]) <= 64)) for r in rows), rows


def test_forward_with_a_float_mask_fits_shared_memory():
    """A tensor attention mask's tiles are pipelined too: at 64 < d <= 128 the table's 128-key tiles asked for
    262-360 KB of shared memory with a mask (the H200 launch failed with OutOfResources); ``fwd_config(masked=True)``
    must stay under an SM's 227 KB (232448 bytes) for exact and grouped calls."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--variants", "G1", "G2 mean",
                          "--d", "128", "--causal", "0", "--mask", "float", "--default-only"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| 128 |")]
    assert {r[2].strip() for r in rows} == {"G1", "G2 mean"}
    for r in rows:
        assert 0 < int(r[10]) * 1024 <= 232448, r  # shared KB
        assert int(r[8]) == 0, r  # no spill either


def test_kernel_resources_reports_the_band_kernel():
    """--band: the SDPA engine's band-and-merge kernel at every tile of BAND_TILES compiles for sm_90 (a tile list
    that names a removed BandConfig field fails here), the table's default marked."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--band", "--d", "64",
                          "--causal", "1"], capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [r for r in (line.split("|")[1:-1] for line in run.stdout.splitlines()) if r and r[0].strip() == "64"]
    assert len(rows) >= 6 and sum(r[2].strip().endswith("*") for r in rows) >= 1, rows
    assert all(0 < int(r[5]) <= 255 for r in rows), rows


def test_kernel_resources_reads_the_key_tile_loop():
    """--loop: the forward's key-tile loop in SASS. At d=64 G1 a 128x64 tile takes 16 wgmma per key tile (Q·Kᵀ and
    P·V, each 2 row slices x 4 k-steps), and the loop holds the softmax between them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--variants", "G1",
                          "--d", "64", "--causal", "0", "--default-only", "--loop"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    header = next(line for line in run.stdout.splitlines() if line.startswith("| d |"))
    assert header.endswith("| loop instructions | UMOV | BAR | HGMMA |")
    (row,) = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| 64 |")]
    loop, umov, bar, hgmma = (int(c) for c in row[-4:])
    assert row[5].strip() == "4" and row[4].strip() == "128x64"  # the tile the wgmma count assumes
    assert hgmma == 16 and 300 < loop < 1000 and bar >= 1 and umov >= 0


def test_kernel_resources_loop_is_the_forwards_only():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_resources.py"), "--loop", "--band"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--loop reads the forward kernel's key-tile loop only" in run.stderr
