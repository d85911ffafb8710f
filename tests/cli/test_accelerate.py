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


def _run(prefix, tiny_lm_dir, text_file, out_dir, name):
    argv = [*prefix, "eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--window", "64",
            "--stride", "32", "--max-windows", "5", "--group-sizes", "2", "--settings", "paper", "--distr",
            "block_m=32", "--tasks", "mc.jsonl", "--output-dir", str(out_dir), "--run-name", name, "--no-plots"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(argv, capture_output=True, text=True, cwd=out_dir, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((out_dir / name / "result.json").read_text())


def test_two_processes_equal_one(tiny_lm_dir, text_file, tmp_path):
    # the CLI installed beside the interpreter running the tests (a venv used without activating it), else PATH's
    beside = Path(sys.executable).with_name("accelerate")
    accelerate = str(beside) if beside.is_file() else shutil.which("accelerate")
    assert accelerate, f"the accelerate CLI (a dependency) is neither beside {sys.executable} nor on PATH"
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": "the cat", "choices": ["sat on the hill", "red fish", "dog ran"], "answer": i % 3})
        for i in range(5)))
    one = _run([sys.executable, "-m", "distr_patch"], tiny_lm_dir, text_file, tmp_path, "one")
    two = _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                "no", "--dynamo_backend", "no", "-m", "distr_patch"], tiny_lm_dir, text_file, tmp_path, "two")
    assert two["provenance"]["num_processes"] == 2 and one["provenance"]["num_processes"] == 1
    for a, b in zip(one["variants"], two["variants"]):
        assert {k: m["value"] for k, m in a["metrics"].items()} == {k: m["value"] for k, m in b["metrics"].items()}
    assert one["datasets"] == two["datasets"]
