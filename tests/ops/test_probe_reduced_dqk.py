"""scripts/probe_reduced_dqk.py's Triton kernel (the bound of a reduced grouped product) computes attention with
d_qk score columns and a d_v-wide P·V, under the interpreter: tails, causal, against torch on the same inputs."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dqk", [16, 32])
def test_probe_kernel_matches_torch(causal, dqk):
    spec = importlib.util.spec_from_file_location("probe_reduced_dqk", ROOT / "scripts" / "probe_reduced_dqk.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    g = torch.Generator().manual_seed(11 + dqk + causal)
    B, H, N, dv = 2, 3, 77, 32  # 77: a tail in both the 32-row query tiles and the 16-key tiles
    q, k = (torch.randn(B, H, N, dqk, generator=g) for _ in range(2))
    v = torch.randn(B, H, N, dv, generator=g)
    out = probe.probe_attention(q, k, v, causal, (32, 16, 4, 1))
    s = q @ k.transpose(-1, -2) * dv ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    ref = s.softmax(-1) @ v
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
