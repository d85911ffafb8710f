"""The grouping: LSH hash + sort (torch definition and Triton kernel) and the fusion weights."""
import os

import pytest
import torch

from distr_patch.ops import compute_groups, fusion_weights, hash_projections
from distr_patch.ops.grouping import blocked_queries, compute_groups_torch, fused_queries

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")


def rand_q(seed, shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def test_groups_are_permutations_and_follow_hash_order():
    q = rand_q(0, (2, 3, 100, 64))
    g = compute_groups(q, group_size=2, block_m=32, num_hash_bits=12, seed=3)
    assert g.dtype == torch.int64 and g.shape == (2, 3, 4, 64)
    assert torch.equal(g.sort(-1).values, torch.arange(64).expand_as(g))
    # codes along the sorted order are non-decreasing, ties by column index
    x = blocked_queries(q, 32)
    proj = torch.einsum("bhnmd,mk->bhndk", x, hash_projections(32, 12, 3))
    codes = ((proj > 0).long() * 2 ** torch.arange(12)).sum(-1)
    sorted_codes = torch.gather(codes, -1, g)
    assert (sorted_codes[..., 1:] >= sorted_codes[..., :-1]).all()
    ties = sorted_codes[..., 1:] == sorted_codes[..., :-1]
    assert (g[..., 1:][ties] > g[..., :-1][ties]).all()


def test_groups_deterministic_from_seed_not_global_rng():
    q = rand_q(1, (1, 2, 64, 32))
    torch.manual_seed(123)
    a = compute_groups(q, group_size=4, block_m=64, seed=7)
    torch.manual_seed(999)
    torch.randn(10)
    b = compute_groups(q, group_size=4, block_m=64, seed=7)
    c = compute_groups(q, group_size=4, block_m=64, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_group_size_one_is_identity():
    q = rand_q(2, (1, 1, 40, 32))
    g = compute_groups(q, group_size=1, block_m=32)
    assert torch.equal(g, torch.arange(32).expand(1, 1, 2, 32))


def test_tail_block_hashes_as_zero_padded_and_invalid_rows_do_not_steer():
    q = rand_q(3, (1, 2, 50, 32))
    padded = torch.cat([q, torch.zeros(1, 2, 14, 32)], dim=2)  # 64 rows, zeros after 50
    assert torch.equal(compute_groups(q, block_m=32), compute_groups(padded, block_m=32))
    # a right-padded batch: garbage rows marked invalid group like the unpadded sequence
    garbage = torch.cat([q, 50 * rand_q(4, (1, 2, 14, 32))], dim=2)
    valid = torch.arange(64)[None, :] < 50
    assert torch.equal(compute_groups(garbage, block_m=32, query_valid=valid), compute_groups(q, block_m=32))
    assert not torch.equal(compute_groups(garbage, block_m=32), compute_groups(q, block_m=32))


@pytest.mark.parametrize("G", [2, 4, 8])
def test_rank1_weights_are_top_eigenvectors(G):
    q = rand_q(5, (1, 2, 64, 32)) * torch.linspace(0.2, 3, 32)  # columns of different scale
    g = compute_groups(q, group_size=G, block_m=32)
    a, b = fusion_weights(q, g, group_size=G, block_m=32, fusion="rank1")
    assert torch.equal(a, b)
    u = a.reshape(1, 2, 2, 32 // G, G)
    assert torch.allclose(u.norm(dim=-1), torch.ones(()), atol=1e-5)
    assert (u.sum(-1) >= 0).all()
    x = torch.gather(blocked_queries(q, 32), -1, g[..., None, :].expand(1, 2, 2, 32, 32))
    xg = x.reshape(1, 2, 2, 32, 32 // G, G).permute(0, 1, 2, 4, 3, 5)
    gram = xg.transpose(-1, -2) @ xg
    evals, evecs = torch.linalg.eigh(gram.double())
    top = evecs[..., -1].float()
    cos = (top * u).sum(-1).abs()
    gap = (evals[..., -1] - evals[..., -2]) / evals[..., -1]
    # power iteration (G >= 4) converges where the top eigenvalue is separated
    sel = gap > (0.0 if G == 2 else 0.5)
    assert sel.any()
    assert (cos[sel] > 0.999).all()


def test_mean_weights_and_fused_queries_equal_grouped_product():
    q, k = rand_q(6, (1, 2, 70, 32)), rand_q(7, (1, 2, 90, 32))
    for fusion in ("mean", "rank1"):
        g = compute_groups(q, group_size=4, block_m=32)
        a, b = fusion_weights(q, g, group_size=4, block_m=32, fusion=fusion)
        if fusion == "mean":
            assert torch.all(a == 0.25) and torch.all(b == 1.0)
        q_eff = fused_queries(q, g, a, b, group_size=4, block_m=32)
        # the explicit d/G-inner-dimension product, block by block
        for blk in range(3):
            rows = slice(32 * blk, min(70, 32 * blk + 32))
            perm = g[0, 0, blk]
            qs = q[0, 0, rows][:, perm] * a[0, 0, blk]
            ks = k[0, 0][:, perm] * b[0, 0, blk]
            qt = qs.reshape(qs.shape[0], 8, 4).sum(-1)
            kt = ks.reshape(90, 8, 4).sum(-1)
            assert torch.allclose(qt @ kt.T, q_eff[0, 0, rows] @ k[0, 0].T, atol=1e-4)


@interpreter_only
@pytest.mark.parametrize("fusion,G,d,N,bm", [("mean", 2, 64, 150, 64), ("rank1", 2, 32, 100, 32),
                                             ("rank1", 4, 80, 70, 32), ("rank1", 2, 96, 140, 128)])
def test_triton_grouping_matches_torch(fusion, G, d, N, bm):
    from distr_patch.ops.grouping_triton import triton_grouping

    q = rand_q(8, (2, 2, N, d))
    valid = torch.ones(2, N, dtype=torch.bool)
    valid[1, N - 17:] = False
    groups, wa, wb = triton_grouping(q, group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=valid,
                                     fusion=fusion)
    ref = compute_groups_torch(q, group_size=G, block_m=bm, query_valid=valid)
    assert_same_up_to_ties(groups.long(), ref, q, bm, valid)
    if fusion == "rank1":
        ra, rb = fusion_weights(q, groups.long(), group_size=G, block_m=bm, fusion="rank1", query_valid=valid)
        assert torch.allclose(wa, ra, atol=1e-5) and torch.allclose(wb, rb, atol=1e-5)


def assert_same_up_to_ties(got, ref, q, bm, valid=None, rel_tol=1e-5):
    """Groupings agree except in blocks where some projection is within rounding of zero."""
    differ = (got != ref).any(-1)
    if not differ.any():
        return
    x = blocked_queries(q, bm, valid)
    proj = torch.einsum("bhnmd,mk->bhndk", x, hash_projections(bm, 16, 0, device=q.device))
    scale = x.abs().amax(dim=(-1, -2), keepdim=True).squeeze(-1) * bm
    near_tie = (proj.abs() <= rel_tol * scale[..., None]).flatten(-2).any(-1)
    assert near_tie[differ].all(), f"{int(differ.sum())} blocks differ without a near-tie"
    assert differ.float().mean() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d", [64, 128, 80])
def test_triton_grouping_matches_torch_gpu(d):
    from distr_patch.ops.grouping_triton import triton_grouping

    q = rand_q(9, (4, 8, 4000, d), dtype=torch.bfloat16, device="cuda")
    groups, wa, _ = triton_grouping(q, group_size=2, block_m=128, num_hash_bits=16, seed=0, query_valid=None,
                                    fusion="rank1")
    ref = compute_groups_torch(q, group_size=2, block_m=128)
    assert_same_up_to_ties(groups.long(), ref, q, 128)
    ra, _ = fusion_weights(q, groups.long(), group_size=2, block_m=128, fusion="rank1")
    # the same unit vectors up to rounding; pairs with a near-degenerate Gram matrix may
    # pick another (equally valid) eigenvector, so allow a tiny fraction of those
    cos = (wa.view(*wa.shape[:-1], -1, 2) * ra.view(*ra.shape[:-1], -1, 2)).sum(-1).abs()
    assert (cos > 1 - 1e-4).float().mean() > 0.999


def test_bad_grouping_arguments_raise_named_errors():
    q = rand_q(10, (1, 1, 8, 32))
    with pytest.raises(ValueError, match="group_size"):
        compute_groups(q, group_size=3)
    with pytest.raises(ValueError, match="block_m"):
        compute_groups(q, block_m=48)
    with pytest.raises(ValueError, match="num_hash_bits"):
        compute_groups(q, num_hash_bits=0)
    with pytest.raises(ValueError, match="q must be a 4-D"):
        compute_groups(q[0])
    with pytest.raises(ValueError, match="query_valid"):
        compute_groups(q, query_valid=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="group_size=8 must divide"):
        compute_groups(rand_q(0, (1, 1, 8, 36)), group_size=8)
