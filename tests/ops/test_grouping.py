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


@pytest.mark.parametrize("block_m,nbits,seed", [(32, 12, 3), (64, 16, 0), (128, 16, 7), (128, 40, 123)])
def test_hash_directions_are_16bit_values(block_m, nbits, seed):
    """The directions are exact in bf16 and fp16 (what lets the kernel project a 16-bit Q in one exact dot), yet
    the seeded Gaussian draws to bf16 rounding, with no two directions alike; other seeds give other ones."""
    r = hash_projections(block_m, nbits, seed)
    assert r.shape == (block_m, nbits) and r.dtype == torch.float32
    assert torch.equal(r.bfloat16().float(), r) and torch.equal(r.half().float(), r)
    assert r.abs().min() >= 2.0 ** -14
    draws = torch.randn(block_m, nbits, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(torch.sign(r), torch.where(draws < 0, -1.0, 1.0))
    assert ((r - draws).abs() <= 2.0 ** -8 * draws.abs() + 2.0 ** -14).all()
    unit = r / r.norm(dim=0)
    cos = (unit.T @ unit - torch.eye(nbits)).abs()
    assert cos.max() < 0.9
    assert not torch.equal(r, hash_projections(block_m, nbits, seed + 1))
    assert torch.equal(r, hash_projections(block_m, nbits, seed))


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


# (grouping_triton.PAIR_WEIGHTS, grouping_triton.COLUMN_ORDER): the defaults first, then the other ways
GROUPING_WAYS = [("gram", "rank"), ("gather", "sort"), ("gram", "sort"), ("gather", "rank"), ("regs", "rank")]


@interpreter_only
@pytest.mark.parametrize("ways", GROUPING_WAYS, ids="-".join)
@pytest.mark.parametrize("fusion,G,d,N,bm", [("mean", 2, 64, 150, 64), ("rank1", 2, 32, 100, 32),
                                             ("rank1", 4, 80, 70, 32), ("rank1", 2, 96, 140, 128)])
def test_triton_grouping_matches_torch(fusion, G, d, N, bm, ways, monkeypatch):
    """Every way of ordering the columns and of forming the G=2 rank1 pair Grams gives the reference's
    groups and weights."""
    from distr_patch.ops.grouping_triton import triton_grouping

    monkeypatch.setattr("distr_patch.ops.grouping_triton.PAIR_WEIGHTS", ways[0])
    monkeypatch.setattr("distr_patch.ops.grouping_triton.COLUMN_ORDER", ways[1])

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
    # the same launch can store each column's sorted position (the Q_eff prologue's map): inverse_groups of it
    from distr_patch.ops.regroup import inverse_groups

    g2, wa2, _, inv = triton_grouping(q, group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=valid,
                                      fusion=fusion, positions=True)
    assert torch.equal(g2, groups) and (wa is None or torch.equal(wa2, wa))
    assert inv.dtype == torch.int32 and torch.equal(inv, inverse_groups(groups))


@interpreter_only
@pytest.mark.parametrize("fusion,G,d,N,bm", [("mean", 2, 64, 150, 64), ("rank1", 2, 96, 140, 128),
                                             ("rank1", 4, 32, 70, 32)])
def test_16bit_projection_matches_torch(fusion, G, d, N, bm, monkeypatch):
    """16-bit Q hashes through one 16-bit tensor-core dot against the directions in Q's dtype (``projections_16bit``;
    fp16 here, whose dots the interpreter computes exactly): the reference's groups and weights, and the fp32 dot's."""
    from distr_patch.ops import grouping_triton as gt

    assert gt.projection_16bit(torch.float16) and not gt.projection_16bit(torch.float32)
    r16 = gt.projections_16bit(bm, 16, 16, 0, torch.device("cpu"), torch.float16)
    assert r16.dtype == torch.float16 and r16.shape == (bm, 16)
    assert torch.equal(r16.float(), gt._padded_projections(bm, 16, 16, 0, torch.device("cpu")))
    q = rand_q(11, (2, 2, N, d), dtype=torch.float16)
    valid = torch.ones(2, N, dtype=torch.bool)
    valid[0, N - 9:] = False
    kw = dict(group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=valid, fusion=fusion)
    groups, wa, wb, inv = gt.triton_grouping(q, positions=True, **kw)
    assert_same_up_to_ties(groups.long(), compute_groups_torch(q, group_size=G, block_m=bm, query_valid=valid), q,
                           bm, valid)
    from distr_patch.ops.regroup import inverse_groups

    assert torch.equal(inv, inverse_groups(groups))
    if fusion == "rank1":
        ra, _ = fusion_weights(q, groups.long(), group_size=G, block_m=bm, fusion="rank1", query_valid=valid)
        assert torch.allclose(wa, ra, atol=1e-5) and wb is wa
    monkeypatch.setattr(gt, "PROJECTION", "fp32")
    g32 = gt.triton_grouping(q, **kw)[0]
    assert_same_up_to_ties(groups.long(), g32.long(), q, bm, valid)
    monkeypatch.setattr(gt, "PROJECTION", "split")  # the three-part projection's name, gone with it
    with pytest.raises(ValueError, match="DISTR_GROUPING_PROJECTION"):
        gt.triton_grouping(q, **kw)


@interpreter_only
@pytest.mark.parametrize("nbits", [5, 22, 23, 40])
def test_triton_grouping_hash_widths(nbits):
    """The kernel's (code, index) keys are int32 up to 22 bits and int64 above: the reference's groups at both."""
    from distr_patch.ops.grouping_triton import triton_grouping

    q = rand_q(12, (1, 2, 100, 64))
    groups = triton_grouping(q, group_size=2, block_m=64, num_hash_bits=nbits, seed=0, query_valid=None,
                             fusion="mean")[0]
    ref = compute_groups_torch(q, group_size=2, block_m=64, num_hash_bits=nbits, seed=0)
    assert_same_up_to_ties(groups.long(), ref, q, 64, nbits=nbits)


def assert_same_up_to_ties(got, ref, q, bm, valid=None, rel_tol=1e-5, nbits=16):
    """Groupings agree except in blocks where some projection is within rounding of zero."""
    differ = (got != ref).any(-1)
    if not differ.any():
        return
    x = blocked_queries(q, bm, valid)
    proj = torch.einsum("bhnmd,mk->bhndk", x, hash_projections(bm, nbits, 0, device=q.device))
    scale = x.abs().amax(dim=(-1, -2), keepdim=True).squeeze(-1) * bm
    near_tie = (proj.abs() <= rel_tol * scale[..., None]).flatten(-2).any(-1)
    assert near_tie[differ].all(), f"{int(differ.sum())} blocks differ without a near-tie"
    assert differ.float().mean() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("G,ways,grams", [(2, GROUPING_WAYS[0], "rows"), (2, GROUPING_WAYS[1], "rows"),
                                          (2, GROUPING_WAYS[4], "rows"), (4, GROUPING_WAYS[0], "rows"),
                                          (4, GROUPING_WAYS[0], "dot"), (8, GROUPING_WAYS[1], "rows"),
                                          (8, GROUPING_WAYS[0], "dot")])
@pytest.mark.parametrize("d", [64, 128, 80])
def test_triton_grouping_matches_torch_gpu(d, G, ways, grams, monkeypatch):
    from distr_patch.ops.grouping_triton import triton_grouping

    monkeypatch.setattr("distr_patch.ops.grouping_triton.PAIR_WEIGHTS", ways[0])
    monkeypatch.setattr("distr_patch.ops.grouping_triton.COLUMN_ORDER", ways[1])
    monkeypatch.setattr("distr_patch.ops.grouping_triton.POWER_GRAMS", grams)

    q = rand_q(9, (4, 8, 4000, d), dtype=torch.bfloat16, device="cuda")
    groups, wa, _, inv = triton_grouping(q, group_size=G, block_m=128, num_hash_bits=16, seed=0, query_valid=None,
                                         fusion="rank1", positions=True)
    from distr_patch.ops.regroup import inverse_groups

    assert torch.equal(inv, inverse_groups(groups))
    ref = compute_groups_torch(q, group_size=G, block_m=128)
    assert_same_up_to_ties(groups.long(), ref, q, 128)
    ra, _ = fusion_weights(q, groups.long(), group_size=G, block_m=128, fusion="rank1")
    # the same unit vectors up to rounding; groups with a near-degenerate Gram matrix may
    # pick another (equally valid) eigenvector, so allow a tiny fraction of those
    cos = (wa.view(*wa.shape[:-1], -1, G) * ra.view(*ra.shape[:-1], -1, G)).sum(-1).abs()
    assert (cos > 1 - 1e-4).float().mean() > 0.999


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("grams", ["dot", "rows"])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_triton_rank1_g4_fp32_gpu(d, grams, monkeypatch):
    """fp32 Q at G=4 rank1 (fp32 one-hot and Gram dots, the chunks of ``power_chunk``): the reference's groups and
    weights."""
    from distr_patch.ops.grouping_triton import triton_grouping

    monkeypatch.setattr("distr_patch.ops.grouping_triton.POWER_GRAMS", grams)
    q = rand_q(11, (2, 4, 1000, d), device="cuda")
    groups, wa, _ = triton_grouping(q, group_size=4, block_m=128, num_hash_bits=16, seed=0, query_valid=None,
                                    fusion="rank1")
    ref = compute_groups_torch(q, group_size=4, block_m=128)
    assert_same_up_to_ties(groups.long(), ref, q, 128)
    ra, _ = fusion_weights(q, groups.long(), group_size=4, block_m=128, fusion="rank1")
    cos = (wa.view(*wa.shape[:-1], -1, 4) * ra.view(*ra.shape[:-1], -1, 4)).sum(-1).abs()
    assert (cos > 1 - 1e-4).float().mean() > 0.999


# --------------------------------------------------------------------------- rank1 weights in the kernel
def separated_q(seed, B, H, N, d):
    """Non-contiguous q [B, H, N, d] (a transposed [B, N, H, d]) whose every column group has a
    well-separated top eigenvalue: a shared rank-1 part z·α_c (|α_c| in [0.5, 2], random signs)
    plus 0.3·noise, so λ2/λ1 of any group's Gram is small and 8 power steps converge."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, H, 1, generator=gen)
    alpha = (0.5 + 1.5 * torch.rand(B, 1, H, d, generator=gen)) * torch.randn(B, 1, H, d, generator=gen).sign()
    q = z * alpha + 0.3 * torch.randn(B, N, H, d, generator=gen)
    return q.transpose(1, 2)


def group_grams(q, groups, G, bm, valid=None):
    """float64 Gram matrices [B, H, nb, d/G, G, G] of the groups (tail/invalid rows zero)."""
    x = blocked_queries(q, bm, valid).double()
    B, H, nb, _, d = x.shape
    xs = torch.gather(x, -1, groups.long()[..., None, :].expand(B, H, nb, bm, d))
    xg = xs.reshape(B, H, nb, bm, d // G, G).permute(0, 1, 2, 4, 3, 5)
    return xg.transpose(-1, -2) @ xg


def rank1_valid_mask(B, N, bm, seed):
    """Some rows invalid: random ones, a tail, and one whole block (-> an all-zero Gram)."""
    valid = torch.rand(B, N, generator=torch.Generator().manual_seed(seed)) > 0.3
    valid[-1, N - 17:] = False
    valid[-1, :bm] = False
    return valid


@interpreter_only
@pytest.mark.parametrize("with_valid", [False, True], ids=["all-valid", "query_valid"])
@pytest.mark.parametrize("d", [32, 64, 80, 128])
@pytest.mark.parametrize("bm", [32, 64, 128])
@pytest.mark.parametrize("G,grams", [(2, "rows"), (4, "rows"), (4, "dot"), (8, "rows"), (8, "dot")])
def test_triton_rank1_weights_match_torch(G, grams, bm, d, with_valid, monkeypatch):
    """G >= 4 with both ways of forming the groups' Grams (``grouping_triton.POWER_GRAMS``)."""
    from distr_patch.ops import grouping_triton

    monkeypatch.setattr(grouping_triton, "POWER_GRAMS", grams)
    B, H, N = 2, 2, bm + bm // 2 + 3  # two blocks, the second a partial tail
    seed = 1000 * G + 10 * bm + d + with_valid
    q = separated_q(seed, B, H, N, d)
    assert not q.is_contiguous()
    valid = rank1_valid_mask(B, N, bm, seed) if with_valid else None
    groups, wa, wb = grouping_triton.triton_grouping(q, group_size=G, block_m=bm, num_hash_bits=16, seed=0,
                                                     query_valid=valid, fusion="rank1")
    ref = compute_groups_torch(q, group_size=G, block_m=bm, query_valid=valid)
    assert_same_up_to_ties(groups.long(), ref, q, bm, valid)
    assert wa.dtype == torch.float32 and wa.shape == (B, H, 2, d) and torch.equal(wa, wb)
    ra, _ = fusion_weights(q, groups.long(), group_size=G, block_m=bm, fusion="rank1", query_valid=valid)
    gram = group_grams(q, groups, G, bm, valid)
    evals = torch.linalg.eigvalsh(gram)
    nonzero = evals[..., -1] > 0
    assert (evals[..., -2][nonzero] < 0.5 * evals[..., -1][nonzero]).all()  # the premise: separated
    u, ur = wa.view(B, H, 2, d // G, G), ra.view(B, H, 2, d // G, G)
    assert ((u - ur).norm(dim=-1) <= 1e-4).all(), (u - ur).norm(dim=-1).max()
    assert (u.sum(-1) >= 0).all()
    if with_valid:  # the fully invalid block: all-zero Grams -> u = 1/sqrt(G), identity grouping
        assert not nonzero[-1, :, 0].any()
        assert torch.equal(u[-1, :, 0], torch.full_like(u[-1, :, 0], G ** -0.5))
        assert torch.equal(groups[-1, :, 0].long(), torch.arange(d).expand(H, d))
    else:
        assert nonzero.all()


def eigen_residual(gram, u):
    """‖G u − (uᵀ G u) u‖ / λ_max per group, in float64."""
    u = u.double()
    gu = (gram @ u[..., None]).squeeze(-1)
    lam = (gu * u).sum(-1, keepdim=True)
    top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(1e-30)
    return (gu - lam * u).norm(dim=-1) / top


@interpreter_only
@pytest.mark.parametrize("G,bm,d,N,grams", [
    (2, 64, 64, 100, "rows"),  # POWER_GRAMS acts at G >= 4 only
    *[(*shape, grams) for shape in [(4, 32, 80, 70), (4, 128, 32, 140), (8, 64, 128, 90), (8, 32, 32, 45),
                                    (4, 32, 256, 50)] for grams in ("rows", "dot")],
    (8, 32, 256, 40, "dot")])  # fp32 Q's default at d=256 since the forty-fifth session
def test_triton_rank1_weights_random_inputs_eigen_residual(G, bm, d, N, grams, monkeypatch):
    """Random (heavy-tailed, scaled) inputs, where top eigenvalues may be close and 8 power steps
    need not converge: the kernel's u is as good an eigenvector as the reference's (G >= 4: both ways of forming
    the Grams)."""
    from distr_patch.ops import grouping_triton
    from distr_patch.ops.grouping_triton import triton_grouping

    monkeypatch.setattr(grouping_triton, "POWER_GRAMS", grams)

    gen = torch.Generator().manual_seed(77 * G + d + N)
    x = torch.randn(2, 2, N, d, generator=gen)
    q = torch.where(torch.rand(x.shape, generator=gen) < 0.02, 8 * x, x) * torch.rand(d, generator=gen).add(0.1)
    valid = torch.rand(2, N, generator=gen) > 0.2
    groups, wa, _ = triton_grouping(q, group_size=G, block_m=bm, num_hash_bits=16, seed=0, query_valid=valid,
                                    fusion="rank1")
    ra, _ = fusion_weights(q, groups.long(), group_size=G, block_m=bm, fusion="rank1", query_valid=valid)
    gram = group_grams(q, groups, G, bm, valid)
    shape = (*groups.shape[:3], d // G, G)
    u, ur = wa.view(shape), ra.view(shape)
    assert torch.allclose(u.norm(dim=-1), torch.ones(()), atol=1e-5)
    res, res_ref = eigen_residual(gram, u), eigen_residual(gram, ur)
    assert (res <= res_ref + 1e-4).all(), (res - res_ref).max()
    if G == 2:  # the closed form is exact
        assert (res <= 1e-5).all()


@interpreter_only
def test_triton_rank1_weights_strided_head_dim():
    """A column stride != 1 (every other column of a wider tensor)."""
    from distr_patch.ops.grouping_triton import triton_grouping

    q = separated_q(5, 1, 2, 70, 64)
    wide = torch.zeros(1, 2, 70, 128)
    wide[..., ::2] = q
    q = wide[..., ::2]
    assert q.stride(-1) == 2
    groups, wa, _ = triton_grouping(q, group_size=4, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                                    fusion="rank1")
    assert torch.equal(groups.long(), compute_groups_torch(q, group_size=4, block_m=64))
    ra, _ = fusion_weights(q, groups.long(), group_size=4, block_m=64, fusion="rank1")
    assert (wa - ra).abs().max() <= 1e-4


@interpreter_only
@pytest.mark.parametrize("G,bm,d,with_valid", [(4, 32, 64, False), (4, 64, 80, True), (8, 32, 64, True)])
def test_distr_attention_rank1_kernel_weights_match_reference(G, bm, d, with_valid, monkeypatch):
    """End to end: the triton path with the kernel's rank1 weights (the torch weights are not
    called) matches the reference path."""
    from distr_patch.ops import distr_attention, grouping_triton, reference_distr_attention

    def no_torch_weights(*args, **kwargs):
        raise AssertionError("triton_grouping fell back to fusion_weights_torch")

    monkeypatch.setattr(grouping_triton, "fusion_weights_torch", no_torch_weights)
    gen = torch.Generator().manual_seed(G * 100 + d)
    B, Hq, Hkv, N, M = 2, 2, 1, 90, 100
    q = torch.randn(B, N, Hq, d, generator=gen).transpose(1, 2)
    k = torch.randn(B, Hkv, M, d, generator=gen)
    v = torch.randn(B, Hkv, M, d, generator=gen)
    valid = rank1_valid_mask(B, N, bm, G) if with_valid else None
    kw = dict(group_size=G, block_m=bm, fusion="rank1", causal=True, query_valid=valid)
    out = distr_attention(q, k, v, backend="triton", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    assert err < 1e-5, err
    # and the same call with mean fusion differs (the weights matter)
    mean = reference_distr_attention(q, k, v, **{**kw, "fusion": "mean"})
    assert ((mean.double() - ref.double()).norm() / ref.double().norm()).item() > 1e-3


def test_bad_grouping_arguments_raise_named_errors():
    q = rand_q(10, (1, 1, 8, 32))
    with pytest.raises(ValueError, match="group_size"):
        compute_groups(q, group_size=3)
    with pytest.raises(ValueError, match="block_m"):
        compute_groups(q, block_m=48)
    with pytest.raises(ValueError, match="num_hash_bits"):
        compute_groups(q, num_hash_bits=0)
    with pytest.raises(ValueError, match="seed must be an int"):
        compute_groups(q, seed="0")
    with pytest.raises(ValueError, match="q must be a 4-D"):
        compute_groups(q[0])
    with pytest.raises(ValueError, match="query_valid"):
        compute_groups(q, query_valid=torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="group_size=8 must divide"):
        compute_groups(rand_q(0, (1, 1, 8, 36)), group_size=8)
    for shape in ((1, 1, 0, 32), (0, 1, 8, 32), (1, 0, 8, 32)):
        with pytest.raises(ValueError, match=r"empty input: q=\["):
            compute_groups(torch.zeros(shape))


@interpreter_only
@pytest.mark.parametrize("grams", ["rows", "dot"])
@pytest.mark.parametrize("chunk,G,d", [(16, 8, 64), (32, 4, 80), (64, 4, 128), (64, 8, 80), (128, 4, 64)])
def test_triton_rank1_power_chunks(chunk, G, d, grams, monkeypatch):
    """G >= 4 rank1 with other chunks of sorted positions (``grouping_triton.POWER_CHUNK``; several chunks per block,
    or one holding real and padded columns): the reference's weights."""
    from distr_patch.ops import grouping_triton

    monkeypatch.setattr(grouping_triton, "POWER_CHUNK", chunk)
    monkeypatch.setattr(grouping_triton, "POWER_GRAMS", grams)
    q = separated_q(31 * chunk + d, 1, 2, 80, d)
    valid = rank1_valid_mask(1, 80, 32, chunk)
    groups, wa, _ = grouping_triton.triton_grouping(q, group_size=G, block_m=32, num_hash_bits=16, seed=0,
                                                    query_valid=valid, fusion="rank1")
    ra, _ = fusion_weights(q, groups.long(), group_size=G, block_m=32, fusion="rank1", query_valid=valid)
    u, ur = wa.view(*wa.shape[:3], -1, G), ra.view(*ra.shape[:3], -1, G)
    assert ((u - ur).norm(dim=-1) <= 1e-4).all(), (u - ur).norm(dim=-1).max()


def test_power_grams_and_chunks_follow_the_dtype(monkeypatch):
    """The G>=4 rank1 defaults: 16-bit Q takes the Grams by one dot and 128-position chunks at d=128; fp32 Q
    64-position chunks, the row way at d <= 64 (where its fp32 dots measured slower) and the dot above (4x faster at
    d=128, 6x at d=256, G=4); a switch that is set wins for both."""
    from distr_patch.ops import grouping_triton as gt

    monkeypatch.setattr(gt, "POWER_GRAMS", None)
    monkeypatch.setattr(gt, "POWER_CHUNK", None)

    def meta(dtype, d=128):
        q = torch.zeros(1, 1, 40, d, dtype=dtype)
        m = gt.grouping_launch(q, group_size=4, block_m=32, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="rank1").meta
        return m["GRAM_DOT"], m["CH"]

    assert meta(torch.bfloat16) == (True, 128) and meta(torch.float16) == (True, 128)
    assert meta(torch.bfloat16, d=64) == (True, 64)
    assert meta(torch.float32, d=64) == (False, 64) and meta(torch.float32, d=48) == (False, 64)
    assert meta(torch.float32) == (True, 64) and meta(torch.float32, d=96) == (True, 64)
    assert meta(torch.float32, d=256) == (True, 64) and meta(torch.bfloat16, d=256) == (True, 64)
    monkeypatch.setattr(gt, "POWER_GRAMS", "rows")
    assert meta(torch.float32, d=256) == (False, 64) and meta(torch.bfloat16) == (False, 128)
    monkeypatch.setattr(gt, "POWER_GRAMS", "dot")
    monkeypatch.setattr(gt, "POWER_CHUNK", 32)
    assert meta(torch.float32) == (True, 32) and meta(torch.bfloat16) == (True, 32)


def test_grouping_switches_are_checked(monkeypatch):
    """Module switches of the grouping launch with values it does not know are named errors."""
    from distr_patch.ops import grouping_triton

    q = torch.randn(1, 1, 40, 32, generator=torch.Generator().manual_seed(3))
    kw = dict(group_size=4, block_m=32, num_hash_bits=16, seed=0, query_valid=None, fusion="rank1")
    for attr, bad, env in (("POWER_GRAMS", "gather", "DISTR_POWER_GRAMS"), ("POWER_CHUNK", 48, "DISTR_POWER_CHUNK"),
                           ("POWER_CHUNK", 256, "DISTR_POWER_CHUNK"), ("POWER_CHUNK", "big", "DISTR_POWER_CHUNK")):
        with monkeypatch.context() as m:
            m.setattr(grouping_triton, attr, bad)
            with pytest.raises(ValueError, match=f"{attr}.*{env}"):
                grouping_triton.triton_grouping(q, **kw)


def test_grouping_launch_warps_are_checked():
    """A warp count Triton cannot launch is a named error, not a compiler trace."""
    from distr_patch.ops.grouping_triton import triton_grouping

    q = torch.randn(1, 1, 40, 32, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="num_warps must be None or one of"):
        triton_grouping(q, group_size=2, block_m=32, num_hash_bits=16, seed=0, query_valid=None, fusion="mean",
                        num_warps=3)


# --------------------------------------------------------------------------- the fused grouping + Q_eff launch
def _qeff_two_launches(q, **kw):
    from distr_patch.ops.grouping_triton import triton_grouping
    from distr_patch.ops.regroup import regroup

    groups, wa, wb, inv = triton_grouping(q, positions=True, **kw)
    G = kw["group_size"]
    qe = regroup(q, groups, wa, wb, group_size=G, block_m=kw["block_m"], out_dtype=q.dtype, inv=inv,
                 mean_weights=(1.0 / G, 1.0) if wa is None else None)
    return qe, groups, wa, inv


def _check_fused_qeff(q, tiles=None, way="dot", fusion_from="memory", **kw):
    from distr_patch.ops.grouping import fused_queries
    from distr_patch.ops.grouping_triton import triton_query_effective

    qe, groups, wa, wb, inv = triton_query_effective(q, tiles=tiles, regroup_way=way, fusion_from=fusion_from, **kw)
    qe2, groups2, wa2, inv2 = _qeff_two_launches(q, **kw)
    assert qe.shape == q.shape and qe.dtype == q.dtype and qe.is_contiguous()
    assert torch.equal(groups, groups2) and torch.equal(inv, inv2)
    assert (wa is None) == (wa2 is None) and (wa is None or wb is wa)
    tol = 1e-6 if q.dtype == torch.float32 else 1e-2
    if wa is not None and not torch.equal(wa, wa2):
        # G >= 4 rank1: the power steps' sums under other warps; the same unit vectors to fp32 rounding, except
        # groups whose top eigenvalues nearly coincide (another, equally valid, eigenvector)
        G = kw["group_size"]
        cos = (wa.view(*wa.shape[:-1], -1, G) * wa2.view(*wa2.shape[:-1], -1, G)).sum(-1).abs()
        assert G >= 4 and (cos > 1 - 1e-4).float().mean() > 0.999
    else:
        assert torch.allclose(qe.float(), qe2.float(), rtol=tol, atol=tol)
    # and the definition: Q_eff from the same groups and weights by torch ops
    G, bm = kw["group_size"], kw["block_m"]
    a, b = fusion_weights(q.float(), groups.long(), group_size=G, block_m=bm, fusion=kw["fusion"],
                          query_valid=kw["query_valid"])
    ref = fused_queries(q.float(), groups.long(), a, b, group_size=G, block_m=bm)
    tol_ref = 1e-5 if q.dtype == torch.float32 else 1e-2  # the kernel's weights: fp32 rounding off torch's
    assert torch.allclose(qe.float(), ref, rtol=tol_ref, atol=tol_ref * ref.abs().max())


@interpreter_only
@pytest.mark.parametrize("fusion,G,d,N,bm,tiles", [
    ("mean", 2, 64, 150, 64, None), ("rank1", 2, 32, 100, 32, None), ("rank1", 4, 80, 70, 32, None),
    ("mean", 4, 96, 140, 128, (4, 32, 64)), ("rank1", 2, 64, 130, 128, (2, 16, 16)),
    ("rank1", 2, 64, 130, 128, (4, 64, 128)), ("mean", 2, 32, 70, 64, (4, 32, 64))])  # whole block from registers
@pytest.mark.parametrize("with_valid", [True, False])
@pytest.mark.parametrize("way,fusion_from", [("dot", "memory"), ("dot16", "memory"), ("gather", "memory"),
                                             ("dot", "registers"), ("pair", "registers")])
def test_fused_qeff_launch_matches_two_launches(fusion, G, d, N, bm, tiles, with_valid, way, fusion_from):
    """One launch (grouping, then the block's Q_eff rows) = the grouping launch + the regroup launch: same groups,
    positions and weights, same Q_eff; tails, invalid rows and a non-contiguous q included; the fusion matrix read
    back from memory or built in registers (where the case allows: otherwise the memory path runs)."""
    q = rand_q(11, (2, N, 3, d)).transpose(1, 2)  # the [B, N, H, d] layout transformers produce
    valid = None
    if with_valid:
        valid = torch.ones(2, N, dtype=torch.bool)
        valid[1, N - 13:] = False
    _check_fused_qeff(q, tiles=tiles, way=way, fusion_from=fusion_from, group_size=G, block_m=bm, num_hash_bits=16,
                      seed=3, query_valid=valid, fusion=fusion)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16])  # bf16: the GPU test (the interpreter's bf16 dots are wrong)
@pytest.mark.parametrize("fusion,G,tiles", [("mean", 2, None), ("rank1", 2, None), ("rank1", 4, (4, 32, 32)),
                                            ("rank1", 2, (4, 64, 128))])  # the last: whole block from registers
@pytest.mark.parametrize("way,fusion_from", [("dot16", "memory"), ("dot16", "registers"), ("pair", "registers")])
def test_fused_qeff_launch_16bit_dot(dtype, fusion, G, tiles, way, fusion_from):
    """regroup_way="dot16" with 16-bit q (the fp32 tests above take the fp32 dot): the tile in q's dtype, the fusion
    matrix as hi + lo 16-bit parts (rank1) gives the two launches' Q_eff and the definition's to 16-bit rounding.
    "pair": the partner columns by a 16-bit one-hot dot, then fp32 sums (G = 4: "dot16")."""
    q = rand_q(21, (2, 150, 2, 64), dtype=dtype).transpose(1, 2)
    valid = torch.ones(2, 150, dtype=torch.bool)
    valid[0, 140:] = False
    _check_fused_qeff(q, tiles=tiles, way=way, fusion_from=fusion_from, group_size=G,
                      block_m=64 if tiles is None else 128, num_hash_bits=16, seed=5, query_valid=valid, fusion=fusion)


def test_fused_qeff_launch_rejects_bad_tiles():
    from distr_patch.ops.grouping_triton import triton_query_effective

    q = rand_q(1, (1, 1, 64, 32))
    with pytest.raises(ValueError, match="tiles"):
        triton_query_effective(q, group_size=2, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="mean", tiles=(3, 32, 32))
    with pytest.raises(ValueError, match="tiles"):
        triton_query_effective(q, group_size=2, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="mean", tiles=(4, 32))
    with pytest.raises(ValueError, match="regroup_way"):
        triton_query_effective(q, group_size=2, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="mean", regroup_way="scatter")
    with pytest.raises(ValueError, match="fusion_from"):
        triton_query_effective(q, group_size=2, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="mean", fusion_from="shared")
    with pytest.raises(ValueError, match="group_size"):
        triton_query_effective(q, group_size=1, block_m=64, num_hash_bits=16, seed=0, query_valid=None,
                               fusion="mean")


def test_fused_qeff_launch_refuses_the_faulting_tile():
    """(8 warps, rows per step = block_m) at d <= 64 made an illegal shared-memory access on the H200: refused by
    name before the launch, on any device; the same warps with fewer rows, or at d=128, are not refused."""
    from distr_patch.ops.grouping_triton import triton_query_effective

    kw = dict(group_size=2, block_m=128, num_hash_bits=16, seed=0, query_valid=None, fusion="mean")
    with pytest.raises(ValueError, match="illegal shared-memory access"):
        triton_query_effective(rand_q(2, (1, 2, 256, 64)), tiles=(8, 128, 128), **kw)
    with pytest.raises(ValueError, match="illegal shared-memory access"):
        triton_query_effective(rand_q(2, (1, 2, 256, 32)), tiles=(16, 64, 128), **kw)
    if INTERPRET:  # these run
        triton_query_effective(rand_q(2, (1, 1, 130, 64)), tiles=(8, 128, 64), **kw)
        triton_query_effective(rand_q(2, (1, 1, 130, 128)), tiles=(8, 128, 128), **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("fusion,G", [("mean", 2), ("rank1", 2), ("mean", 4), ("rank1", 4)])
@pytest.mark.parametrize("d", [64, 128, 80])
@pytest.mark.parametrize("way,fusion_from", [("dot", "memory"), ("dot16", "memory"), ("gather", "memory"),
                                             ("dot", "registers"), ("dot16", "registers"), ("pair", "registers")])
def test_fused_qeff_launch_matches_two_launches_gpu(d, G, fusion, way, fusion_from):
    q = rand_q(12, (2, 4000, 8, d), dtype=torch.bfloat16, device="cuda").transpose(1, 2)
    _check_fused_qeff(q, way=way, fusion_from=fusion_from, group_size=G, block_m=128, num_hash_bits=16, seed=0,
                      query_valid=None, fusion=fusion)
