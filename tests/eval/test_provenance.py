"""The provenance of a result names the ptxas Triton compiles Hopper kernels with (it moves d=64 timings 3-10%)."""
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
