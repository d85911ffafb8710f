"""scripts/probe_score_ahead.py's Triton kernel computes exact attention both ways (each tile's scores in order, and
the next tile's scores issued ahead of this tile's softmax), under the interpreter: tails, causal, against torch."""
import os

import pytest
import torch


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("ahead", [False, True])
def test_probe_kernel_matches_torch(load_script, causal, ahead):
    probe = load_script("probe_score_ahead")
    g = torch.Generator().manual_seed(5 + 2 * causal + ahead)
    B, H, N, d = 2, 3, 77, 32  # 77: a tail in both the 32-row query tiles and the 16-key tiles
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    out = probe.probe_attention(q, k, v, causal, (32, 16, 4, 1), ahead)
    s = q @ k.transpose(-1, -2) * d ** -0.5
    if causal:
        s = s.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    ref = s.softmax(-1) @ v
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
