"""scripts/probe_reduced_dqk.py's Triton kernel (the bound of a reduced grouped product) computes attention with
d_qk score columns and a d_v-wide P·V, and with K̃ formed per key tile by a dot, under the interpreter: tails,
causal, against torch on the same inputs."""
import os

import pytest
import torch


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dqk", [16, 32])
def test_probe_kernel_matches_torch(load_script, causal, dqk):
    probe = load_script("probe_reduced_dqk")
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


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("G,ahead", [(2, False), (4, False), (2, True), (4, True)])
def test_probe_ktilde_dot_matches_torch(load_script, causal, G, ahead):
    """The K̃-by-dot rows: each key tile's K̃ = K · A_block inside the kernel (in its own iteration, or one ahead),
    two 32-row programs per 64-row grouping block, a tail; against the torch form of the same grouped scores, whose
    blocks differ (so a wrong block index fails), and that form against Q_eff Kᵀ."""
    probe = load_script("probe_reduced_dqk")
    g = torch.Generator().manual_seed(5 + G + causal)
    B, H, N, d = 1, 2, 150, 32
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    qt, a = probe.block_fusion(q, G, group_m=64, seed=3)
    out = probe.probe_attention(qt, k, v, causal, (32, 16, 4, 1), fusion=a, group_m=64, ahead=ahead)
    ref = probe.grouped_reference(qt, k, v, a, causal, group_m=64)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5
    # the grouping is per block: the last block's rows with the first block's fusion matrix give other outputs
    other = probe.grouped_reference(qt, k, v, a[:, :, :1].expand_as(a), causal, group_m=64)
    assert ((other - ref)[:, :, 64:].norm() / ref[:, :, 64:].norm()).item() > 1e-2
    # q̃ is each group's mean: Q̃ K̃ᵀ equals Q_eff Kᵀ with Q_eff = q̃ spread back over the group's columns
    blk = a[:, :, 0].float()  # [B, H, d, d/G]
    s_grouped = qt[:, :, :64] @ (k @ blk).transpose(-1, -2)
    s_expanded = (qt[:, :, :64] @ blk.transpose(-1, -2)) @ k.transpose(-1, -2)
    assert torch.allclose(s_grouped, s_expanded, atol=1e-4)


def test_probe_bad_group_sizes_are_named(load_script):
    probe = load_script("probe_reduced_dqk")
    with pytest.raises(ValueError, match="group_size must divide"):
        probe.block_fusion(torch.randn(1, 1, 8, 32), 3)
    with pytest.raises(SystemExit):  # argparse's error, before any CUDA check
        probe.main(["--d", "64", "--ktilde-groups", "3"])
