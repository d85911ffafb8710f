"""The provenance of a result names the ptxas Triton compiles Hopper kernels with (it moves d=64 timings 3-10%)."""
import shutil
import subprocess

import pytest
import torch

from distr_patch.eval import provenance as prov
from distr_patch.ops import configs


def test_ptxas_sm90_is_asked_only_for_cuda(monkeypatch):
    asked = []
    monkeypatch.setattr(configs, "sm90_ptxas_release", lambda: asked.append(1) or (12, 9))
    assert prov.ptxas_sm90(torch.device("cpu")) is None and not asked
    assert prov.ptxas_sm90(torch.device("cuda")) == "12.9" and asked
    monkeypatch.setattr(configs, "sm90_ptxas_release", lambda: None)
    assert prov.ptxas_sm90(torch.device("cuda", 0)) is None


def test_provenance_records_it():
    assert prov.provenance(torch.device("cpu"), seed=3)["ptxas_sm90"] is None


def _git(cwd, *args):
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")
def test_git_commit_names_only_its_own_checkout(tmp_path):
    repo = tmp_path / "user-project"
    (repo / "lib" / "distr_patch").mkdir(parents=True)
    (repo / "lib" / "distr_patch" / "__init__.py").write_text("")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    # a copy installed somewhere inside another project's repository (a venv's site-packages): not our commit
    assert prov.git_commit(repo / "lib") is None
    # a checkout of its own: HEAD, and "+dirty" once a tracked file changes
    assert prov.git_commit(repo) == sha
    (repo / "lib" / "distr_patch" / "__init__.py").write_text("x = 1\n")
    assert prov.git_commit(repo) == sha + "+dirty"
    assert prov.git_commit(tmp_path) is None  # no repository at all
