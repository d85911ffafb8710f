"""``accelerate launch`` with 2 CPU processes (gloo) gives the same metrics as 1 process.

On a machine without CUDA, ``--multi_gpu`` makes accelerate start the processes with torchrun and they
join one gloo group (accelerate's ``--cpu`` flag alone starts a single process unless MPI is set up).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _launch(argv, cwd, expect=0):
    out = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=300)
    assert out.returncode == expect, out.stderr[-3000:]
    return out


def _run(prefix, tiny_lm_dir, text_file, out_dir, name, windows=5, tasks=("--tasks", "mc.jsonl")):
    argv = [*prefix, "eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--window", "64",
            "--stride", "32", "--max-windows", str(windows), "--group-sizes", "2", "--settings", "paper", "--distr",
            "block_m=32", *tasks, "--output-dir", str(out_dir), "--run-name", name, "--no-plots"]
    _launch(argv, out_dir)
    return json.loads((out_dir / name / "result.json").read_text())


def _accelerate():
    # the CLI installed beside the interpreter running the tests (a venv used without activating it), else PATH's
    beside = Path(sys.executable).with_name("accelerate")
    accelerate = str(beside) if beside.is_file() else shutil.which("accelerate")
    assert accelerate, f"the accelerate CLI (a dependency) is neither beside {sys.executable} nor on PATH"
    return [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
            "no", "--dynamo_backend", "no", "-m", "distr_patch"]


def test_two_processes_equal_one(tiny_lm_dir, text_file, tmp_path):
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": "the cat", "choices": ["sat on the hill", "red fish", "dog ran"], "answer": i % 3})
        for i in range(5)))
    one = _run([sys.executable, "-m", "distr_patch"], tiny_lm_dir, text_file, tmp_path, "one")
    two = _run(_accelerate(), tiny_lm_dir, text_file, tmp_path, "two")
    assert two["provenance"]["num_processes"] == 2 and one["provenance"]["num_processes"] == 1
    for a, b in zip(one["variants"], two["variants"]):
        assert {k: m["value"] for k, m in a["metrics"].items()} == {k: m["value"] for k, m in b["metrics"].items()}
        # latency from every process's windows and rows, labelled as timed side by side
        assert all(t["unit"].endswith(", 2 processes at once") for t in b["latency"].values())
        assert not any("processes" in t["unit"] for t in a["latency"].values())
    assert one["datasets"] == two["datasets"]


def test_fewer_windows_than_processes_and_single_process_commands(tiny_lm_dir, text_file, tmp_path):
    """One window over two processes: the process that scored none once failed building its latency ("no timing
    samples") and left the other in a broken gloo call. bench model and calibrate run in one process only: launched
    in two, each process timed (and wrote) the whole benchmark, so they refuse."""
    one = _run([sys.executable, "-m", "distr_patch"], tiny_lm_dir, text_file, tmp_path, "one", 1, ())
    two = _run(_accelerate(), tiny_lm_dir, text_file, tmp_path, "two", 1, ())
    assert [v["metrics"] for v in one["variants"]] == [v["metrics"] for v in two["variants"]]
    for argv in (["bench", "model", "--model", str(tiny_lm_dir)],
                 ["calibrate", "--model", str(tiny_lm_dir), "--data", str(text_file), "--budget", "5%"]):
        err = _launch([*_accelerate(), *argv], tmp_path, expect=1).stderr
        assert f"{argv[0]}" in err and "runs in one process" in err and "WORLD_SIZE=2" in err, err[-2000:]
