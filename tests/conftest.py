"""Test setup.

Without a GPU the Triton kernels run under the interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is imported (triton.jit reads it at
decoration time), so it is set here, before any test module imports distr_patch.
On a CUDA machine the kernels compile for the GPU and the `gpu` tests run.
"""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_sessionstart(session):
    """One clear message, not hundreds of interpreter tracebacks, where the interpreter cannot run the kernels."""
    from distr_patch.ops.configs import interpreting

    try:
        interpreting()  # raises where TRITON_INTERPRET is on and cannot run the kernels
    except RuntimeError as e:
        pytest.exit(str(e), returncode=4)


@pytest.fixture
def load_script():
    """``load_script("bench_attention")``: scripts/bench_attention.py as a fresh module (the scripts are no package)."""
    scripts = Path(__file__).resolve().parents[1] / "scripts"

    def load(name):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny Llama and its word-level tokenizer saved to a folder (built from a config, offline)."""
    from tiny_models import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """A small English text file."""
    from tiny_models import sample_text

    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(sample_text())
    return path
