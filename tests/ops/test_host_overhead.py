"""scripts/host_overhead.py with stubbed kernels on the CPU: the wrapper's own host time per call (a subprocess,
since stubbing replaces the kernels module-wide)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_host_overhead_stubbed_runs_on_cpu():
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "host_overhead.py"), "--stub-kernels", "--device",
                          "cpu", "--n", "128", "--calls", "20"], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| distr")]
    assert {r[0].strip() for r in rows} == {"distr G1", "distr G2 mean", "distr G2 rank1", "distr G2 rank1 W128 c.5"}
    for r in rows:
        host = float(r[1])
        assert 0 < host < 50, r  # ms per call with no kernel launched


def test_host_overhead_fused_grouping_side_by_side():
    """--fused-grouping both adds each grouped variant with the grouping in the attention kernel (not G1); --rounds
    gives medians of alternated rounds."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "host_overhead.py"), "--stub-kernels", "--device",
                          "cpu", "--n", "128", "--calls", "5", "--rounds", "2", "--fused-grouping", "both"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    names = {line.split("|")[1].strip() for line in run.stdout.splitlines() if line.startswith("| distr")}
    assert names == {"distr G1", "distr G2 mean", "distr G2 rank1", "distr G2 rank1 W128 c.5",
                     "distr G2 mean fused grouping", "distr G2 rank1 fused grouping",
                     "distr G2 rank1 W128 c.5 fused grouping"}
    assert "median of 2 rounds" in run.stdout


def test_host_overhead_cpu_needs_stubs():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "host_overhead.py"), "--device", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--stub-kernels" in run.stderr


def test_profile_prefill_smoke_on_cpu():
    """scripts/profile_prefill.py on the CPU (the reference path, a short sequence): exact and one patched variant
    per engine timed and profiled, the model unpatched between them and after."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "profile_prefill.py"), "--device", "cpu", "--seq", "16",
                          "--batch", "1", "--repeats", "1", "--rows", "2", "--engines", "auto", "sdpa"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| exact") or
            line.startswith("| G2")]
    assert [r[0].strip() for r in rows] == ["exact", "G2 mean W0 auto", "G2 mean W0 sdpa"]
    assert all(float(r[1]) > 0 for r in rows)
