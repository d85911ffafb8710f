"""scripts/bench_grouping.py's check that another launch config (warps, Grams, chunks) groups and weighs as the
default before it is timed: shares of blocks and of groups, not bit equality (fp32 sums in another order)."""
import pytest
import torch


def test_agreement_counts_blocks_and_groups(load_script):
    agreement = load_script("bench_grouping").agreement
    g = torch.Generator().manual_seed(5)
    B, H, nb, d, G = 2, 3, 4, 16, 4
    groups = torch.stack([torch.randperm(d, generator=g) for _ in range(B * H * nb)]).view(B, H, nb, d)
    u = torch.nn.functional.normalize(torch.randn(B, H, nb, d // G, G, generator=g), dim=-1).view(B, H, nb, d)

    assert agreement((groups.clone(), u.clone()), groups, u, G) == (1.0, 1.0)
    # a weight vector's sign and its last bits do not count; its direction does
    near = -u * (1 + 1e-7)
    assert agreement((groups, near), groups, u, G) == (1.0, 1.0)
    other_groups, other_u = groups.clone(), u.clone()
    other_groups[0, 0, 0, :2] = other_groups[0, 0, 0, :2].flip(0)  # one block of 24 grouped otherwise
    other_u.view(-1, G)[3] = torch.nn.functional.normalize(torch.randn(G, generator=g), dim=0)  # 1 group of 96
    blocks, weights = agreement((other_groups, other_u), groups, u, G)
    assert blocks == pytest.approx(23 / 24) and weights == pytest.approx(95 / 96)
    # mean fusion's weights are 1/G (not unit vectors): equal weights agree; without weights only the blocks count
    mean = torch.full((B, H, nb, d), 1 / G)
    assert agreement((groups, mean.clone()), groups, mean, G) == (1.0, 1.0)
    assert agreement((other_groups, None), groups, None, G) == (pytest.approx(23 / 24), None)
