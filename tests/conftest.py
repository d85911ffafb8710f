"""Test setup.

Without a GPU the Triton kernels run under the interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is imported (triton.jit reads it at
decoration time), so it is set here, before any test module imports distr_patch.
On a CUDA machine the kernels compile for the GPU and the `gpu` tests run.
"""
import importlib.util
import os
import tempfile
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


@pytest.fixture(autouse=True)
def _release_cached_gpu_memory(request):
    """After each GPU test, hand the blocks torch's caching allocator kept back to the driver: the GPU tests run in
    several processes (pytest-xdist), and memory one of them cached is memory another cannot have."""
    yield
    if request.node.get_closest_marker("gpu") is not None and torch.cuda.is_available() \
            and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@pytest.fixture
def gpu_memory_alone():
    """For a GPU test that needs several GB at once: such tests take a file lock, so across the test processes
    only one of them runs at a time (on an H100, 8 processes once ran out of its 79 GiB with two of them at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the tests still run
        yield
        return
    path = Path(tempfile.gettempdir()) / "distr-patch-gpu-memory-alone.lock"
    with open(path, "a") as lock:  # closing the file releases the lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
