"""The Triton backward against autograd through the PyTorch reference.

On the CPU the kernels run under TRITON_INTERPRET=1 at small sizes in fp32 (tight
tolerance); with a CUDA device the same comparison runs at real sizes in bf16, plus a
memory check (no [N, M] tensor). Inputs are fresh heavy-tailed tensors, seeded per test (and Gaussian ones
for the bf16 bound of the issue: see HEAVY_BF16_TOL for why).
"""
import zlib

import pytest
import torch

from distr_patch.ops import compute_groups, distr_attention, reference_distr_attention

from test_distr_attn import CUDA, INTERPRET, interpreter_only, make_mask, make_qkv, rel_err


def grads_of(fn, q, k, v, do, mask=None):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


def reference_grads(q, k, v, do, **kw):
    """fp32 autograd through the definition (fp32 leaves, so the gradients stay fp32)."""
    return grads_of(lambda *t: reference_distr_attention(*t, **kw), q.float(), k.float(), v.float(), do.float())


def check_case(case, seed, tol=1e-4, dtype=torch.float32, device="cpu", backend="triton", gaussian=False):
    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    if gaussian:
        gen0 = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(B, H, n, d, generator=gen0).to(device=device, dtype=dtype)
                   for H, n in ((Hq, N), (Hkv, M), (Hkv, M)))
    else:
        q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    mask = make_mask(mask_kind, B, Hq, N, M, gen, device)
    do = torch.randn(B, Hq, N, d, generator=gen).to(device=device, dtype=dtype)
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask)
    got = grads_of(lambda *t: distr_attention(*t, backend=backend, **kw), q, k, v, do)
    ref = reference_grads(q, k, v, do, **kw)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))
    return got, ref


# (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind)
CPU_CASES = [
    (1, 2, 2, 40, 40, 32, 1, "mean", 32, 0, 0.0, False, None),
    (1, 4, 2, 70, 70, 64, 1, "mean", 64, 0, 0.0, True, "pad"),      # G=1, GQA, padding mask
    (1, 2, 2, 70, 70, 32, 2, "mean", 32, 0, 0.0, False, None),
    (1, 4, 2, 70, 40, 32, 2, "rank1", 64, 0, 0.0, True, None),      # N > M: leading rows fully masked
    (1, 2, 1, 40, 70, 64, 2, "mean", 64, 0, 0.0, True, "float"),    # N < M, MQA, additive mask
    (1, 2, 2, 70, 70, 32, 4, "rank1", 32, 0, 0.0, False, "pad"),
    (1, 4, 2, 70, 70, 64, 4, "mean", 32, 0, 0.0, True, None),
    (1, 2, 2, 70, 70, 32, 2, "rank1", 32, 16, 0.0, True, None),     # exact window
    (1, 4, 2, 70, 70, 32, 2, "rank1", 32, 16, 0.5, True, "pad"),    # window + correction
    (1, 2, 2, 70, 40, 64, 2, "mean", 64, 16, 0.5, False, "float"),
    (2, 2, 2, 40, 70, 32, 4, "rank1", 32, 16, 0.5, True, None),
    (1, 4, 2, 70, 70, 32, 2, "mean", 64, 16, 0.5, False, "float"),
    (1, 1, 1, 40, 40, 80, 2, "rank1", 32, 16, 0.5, True, None),     # d=80: padded head dim
    (1, 4, 2, 70, 70, 80, 2, "rank1", 32, 0, 0.0, True, "pad"),     # 64 < d <= 128, G=2, no window: Q_eff by one
    (1, 2, 2, 70, 40, 96, 2, "mean", 64, 0, 0.0, False, None),      # launch before the kernel (not the prologue)
]


@interpreter_only
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_grads_match_reference_interpreter(case):
    check_case(case, zlib.crc32(repr(case).encode()))


@interpreter_only
def test_fully_masked_row_interpreter():
    B, H, N, M, d = 1, 2, 40, 40, 32
    q, k, v = make_qkv(21, B, H, H, N, M, d)
    mask = torch.rand(B, H, N, M, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[:, :, 5] = False  # row 5 sees nothing
    mask[:, 1, 33] = False
    do = torch.randn(B, H, N, d, generator=torch.Generator().manual_seed(4))
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=16, window_correction=0.5, causal=False,
              attention_mask=mask)
    got = grads_of(lambda *t: distr_attention(*t, backend="triton", **kw), q, k, v, do)
    ref = reference_grads(q, k, v, do, **kw)
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all() and rel_err(a, b) <= 1e-4
    out, dq = got[0], got[1]
    assert (out[:, :, 5] == 0).all() and (dq[:, :, 5] == 0).all() and (dq[:, 1, 33] == 0).all()


def window_problem(seed, shape, *, causal):
    """G=2 rank1, block_m=32, W=16, c=0.5 on fresh inputs of ``shape`` (B, Hq, Hkv, N, M, d):
    ((q, k, v, dO), the options, the reference gradients, the Triton forward's (out, lse, groups, wa, wb))."""
    from distr_patch.ops.distr_attn import _triton_forward

    B, Hq, Hkv, N, M, d = shape
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    do = torch.randn(B, Hq, N, d, generator=torch.Generator().manual_seed(seed + 1))
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=16, window_correction=0.5, causal=causal,
              attention_mask=None, scale=None)
    fwd = _triton_forward(q, k, v, num_hash_bits=16, seed=0, query_valid=None, groups=None, return_lse=True, **kw)
    return (q, k, v, do), kw, reference_grads(q, k, v, do, **kw), fwd


@interpreter_only
def test_gqa_split_and_partial_needs_interpreter():
    """The dK/dV kernel split over query heads (as picked on a small GPU grid), and calls that
    need only some gradients."""
    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_bwd import _triton_backward

    d = 32
    (q, k, v, do), kw, ref, (out, lse, grp, wa, wb) = window_problem(8, (1, 4, 1, 40, 40, d), causal=True)
    base = bwd_config(d)
    for split in (2, 4):
        cfg = type(base)(**{**base.__dict__, "kv_split": split})
        dq, dk, dv = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, config=cfg, **kw)
        assert rel_err(dk, ref[2]) <= 1e-4 and rel_err(dv, ref[3]) <= 1e-4 and rel_err(dq, ref[1]) <= 1e-4
    # only q needs grad / only k, v need grad
    kw.update(exact_window=0, window_correction=0.0)
    ref = reference_grads(q, k, v, do, **kw)
    k2, v2 = k.clone().requires_grad_(), v.clone().requires_grad_()
    q2 = q.clone().requires_grad_()
    (dq,) = torch.autograd.grad(distr_attention(q2, k, v, backend="triton", **kw), q2, do)
    assert rel_err(dq, ref[1]) <= 1e-4
    dk, dv = torch.autograd.grad(distr_attention(q, k2, v2, backend="triton", **kw), (k2, v2), do)
    assert rel_err(dk, ref[2]) <= 1e-4 and rel_err(dv, ref[3]) <= 1e-4


@interpreter_only
@pytest.mark.parametrize("causal,band", [(True, (16, 16)), (True, (16, 32)), (False, (32, 16))],
                         ids=["causal-b16x16", "causal-b16x32", "noncausal-b32x16"])
def test_window_band_subtiles_interpreter(causal, band):
    """Window + correction with band sub-tiles smaller than the block tiles (dK/dV rows, dQ keys),
    N != M (70 queries, 100 keys: both with tails), GQA, against autograd through the reference;
    and a band tile that does not divide its block is refused."""
    from distr_patch.ops.configs import BwdConfig
    from distr_patch.ops.distr_bwd import _triton_backward

    (q, k, v, do), kw, ref, (out, lse, grp, wa, wb) = window_problem(17, (1, 2, 1, 70, 100, 32), causal=causal)
    blk = 64 if 32 in band else 32
    cfg = BwdConfig(blk, 32, 4, 1, 32, blk, 4, 1, kv_band_m=band[0], q_band_n=band[1])
    dq, dk, dv = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, config=cfg, **kw)
    for name, a, b in zip(("dq", "dk", "dv"), (dq, dk, dv), ref[1:]):
        assert rel_err(a, b) <= 1e-4, (name, rel_err(a, b))
    with pytest.raises(ValueError, match="band sub-tiles"):
        _triton_backward(do, q, k, v, out, lse, grp, wa, wb, config=BwdConfig(32, 32, 4, 1, 32, 32, 4, 1,
                                                                               kv_band_m=24), **kw)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_interpreter(dtype):
    check_case((1, 2, 1, 70, 70, 64, 2, "rank1", 32, 16, 0.5, True, None), 31, tol=2e-2, dtype=dtype)


@interpreter_only
def test_noncontiguous_groups_query_valid_and_public_api_interpreter(recwarn):
    """[B, N, H, d] projections transposed to [B, H, N, d], precomputed groups, query_valid, and
    an output gradient with stride 0 (out.sum()); the public call warns no more."""
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(1, 70, 2, 32, generator=gen).transpose(1, 2)
    k = torch.randn(1, 70, 1, 32, generator=gen).transpose(1, 2)
    v = torch.randn(1, 70, 1, 32, generator=gen).transpose(1, 2)
    valid = torch.ones(1, 70, dtype=torch.bool)
    valid[0, 50:] = False
    groups = compute_groups(q, group_size=2, block_m=32, query_valid=valid, seed=5)
    kw = dict(group_size=2, block_m=32, fusion="rank1", query_valid=valid, seed=5, causal=True, exact_window=16,
              window_correction=0.5, groups=groups)
    qs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    assert not qs[0].is_contiguous()
    distr_attention(*qs, backend="triton", **kw).sum().backward()
    qr = [t.detach().contiguous().requires_grad_() for t in (q, k, v)]
    reference_distr_attention(*qr, **kw).sum().backward()
    for a, b in zip(qs, qr):
        assert rel_err(a.grad, b.grad) <= 1e-4
    assert not [w for w in recwarn.list if "reference" in str(w.message)]


@interpreter_only
def test_mask_requiring_grad_uses_the_reference_interpreter():
    import distr_patch.ops.distr_attn as da

    q, k, v = (t.requires_grad_() for t in make_qkv(13, 1, 1, 1, 40, 40, 32))
    mask = torch.zeros(1, 1, 40, 40, requires_grad=True)
    da._warned_autograd = False
    with pytest.warns(UserWarning, match="requires grad"):
        out = distr_attention(q, k, v, backend="triton", attention_mask=mask, block_m=32)
    out.sum().backward()
    assert mask.grad is not None


@interpreter_only
def test_regroup_is_fused_queries_and_its_adjoint_interpreter():
    from distr_patch.ops.distr_bwd import regroup
    from distr_patch.ops.grouping import fused_queries, fusion_weights

    q = make_qkv(14, 2, 2, 2, 70, 70, 64)[0]
    for G, fusion in ((2, "rank1"), (4, "mean"), (8, "rank1")):
        groups = compute_groups(q, group_size=G, block_m=32)
        a, b = fusion_weights(q, groups, group_size=G, block_m=32, fusion=fusion)
        g32 = groups.to(torch.int32).contiguous()
        qe = regroup(q, g32, a, b, group_size=G, block_m=32, out_dtype=torch.float32)
        assert torch.allclose(qe, fused_queries(q, groups, a, b, group_size=G, block_m=32), atol=1e-5)
        for tiles in ((8, 32), (4, 16), (4, 32, 16)):  # other launch tiles (and rows per program): the same function
            assert torch.allclose(regroup(q, g32, a, b, group_size=G, block_m=32, out_dtype=torch.float32,
                                          tiles=tiles), qe, atol=1e-6)
        y = torch.randn_like(q)  # the swapped weights give the adjoint: <Q_eff, y> = <q, adj(y)>
        adj = regroup(y, g32, b, a, group_size=G, block_m=32, out_dtype=torch.float32)
        assert abs((qe * y).sum() - (q * adj).sum()) <= 1e-3 * (qe * y).abs().sum()
    for tiles in ((4, 24), (4, 32, 64)):  # columns not a power of two; rows spanning two 32-row grouping blocks
        with pytest.raises(ValueError, match="tiles must be"):
            regroup(q, g32, a, b, group_size=G, block_m=32, out_dtype=torch.float32, tiles=tiles)


# (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, dQ tile rows)
BWD_PATH_CASES = [
    (1, 4, 2, 70, 70, 32, 2, "rank1", 32, 0, 0.0, True, 64),     # a 64-row dQ tile holds two grouping blocks
    (1, 2, 2, 70, 70, 64, 4, "mean", 128, 16, 0.5, False, 32),   # 32-row tiles inside a 128-row block, window
    (1, 2, 1, 40, 70, 32, 2, "mean", 32, 16, 0.0, True, 32),     # N < M, MQA; forward Q_eff by a regroup launch
    (1, 2, 2, 70, 70, 80, 2, "rank1", 64, 16, 0.5, True, 64),    # padded head dim
]


def _backward_paths(case, device="cpu", dtype=torch.float32):
    """Gradients of one problem under each backward path: the dQ kernel's epilogue or a regroup launch for
    dQ = dQ_eff Wᵀ, and the forward's kept Q_eff / position map or the backward's own. Returns
    ({(epilogue, kept): (dq, dk, dv)}, the reference gradients, the kept Q_eff, the regroup's Q_eff)."""
    from dataclasses import replace

    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_attn import _triton_forward
    from distr_patch.ops.distr_bwd import _triton_backward
    from distr_patch.ops.regroup import regroup

    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, rows = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d, dtype=dtype, device=device)
    do = torch.randn(B, Hq, N, d, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=None, scale=None)
    out, lse, grp, wa, wb, qe, inv = _triton_forward(q, k, v, num_hash_bits=16, seed=0, query_valid=None,
                                                     groups=None, return_lse=True, keep_qeff=True, **kw)
    assert qe is not None and qe.dtype == q.dtype
    mean = wa is None
    qe_launch = regroup(q, grp, wa, wb, group_size=G, block_m=block_m, out_dtype=q.dtype,
                        mean_weights=(1.0 / G, 1.0) if mean else None)
    base = bwd_config(d, G, W, fp32=dtype == torch.float32)
    grads = {}
    for epilogue in (True, False):
        for kept in (True, False):
            cfg = replace(base, q_block_m=rows, dq_epilogue=epilogue)
            grads[epilogue, kept] = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, config=cfg,
                                                     qeff=qe if kept else None, inv=inv if kept else None, **kw)
    ref = reference_grads(q, k, v, do, **kw)
    return grads, ref, qe, qe_launch


@interpreter_only
@pytest.mark.parametrize("case", BWD_PATH_CASES, ids=lambda c: "-".join(map(str, c)))
def test_dq_epilogue_and_kept_qeff_interpreter(case):
    """The dQ kernel's epilogue and the forward's kept Q_eff compute the gradients of the regroup launches,
    and of the reference (fp32)."""
    grads, ref, qe, qe_launch = _backward_paths(case)
    assert rel_err(qe, qe_launch) <= 1e-6
    for path, got in grads.items():
        for name, a, b in zip(("dq", "dk", "dv"), got, ref[1:]):
            assert a.dtype == torch.float32 and rel_err(a, b) <= 1e-4, (path, name, rel_err(a, b))
            assert rel_err(a, grads[False, False][("dq", "dk", "dv").index(name)]) <= 1e-5, (path, name)


# (B, Hq, Hkv, N, M, d, G, fusion, block_m, causal, mask): no window (the atomic path's domain); tails, GQA
# with the dK/dV split, N != M, masks, both fusions, G = 1, 2, 4
ATOMIC_CASES = [
    (1, 4, 2, 70, 70, 32, 1, "mean", 64, True, "pad"),
    (1, 2, 2, 70, 40, 32, 2, "rank1", 32, True, None),
    (2, 4, 1, 40, 70, 64, 2, "mean", 64, False, "float"),
    (1, 2, 2, 70, 70, 32, 4, "rank1", 32, False, "pad"),
]


def _forward_problem(case, device, dtype):
    """Gaussian q, k, v, dO and mask (seeded by the case) for a case (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c,
    causal, mask_kind), and the forward's saved tensors: (q, k, v, do, kw, (out, lse, groups, wa, wb, Q_eff, inv))."""
    from distr_patch.ops.distr_attn import _triton_forward

    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    gen0 = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=gen0).to(device=device, dtype=dtype)
               for H, n in ((Hq, N), (Hkv, M), (Hkv, M)))
    gen = torch.Generator().manual_seed(seed + 1)
    mask = make_mask(mask_kind, B, Hq, N, M, gen, device)
    do = torch.randn(B, Hq, N, d, generator=gen).to(device=device, dtype=dtype)
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask, scale=None)
    saved = _triton_forward(q, k, v, num_hash_bits=16, seed=0, query_valid=None, groups=None, return_lse=True,
                            keep_qeff=True, **kw)
    return q, k, v, do, kw, saved


def _atomic_vs_kernel(case, device="cpu", dtype=torch.float32, split=None):
    """Gradients of the atomic dQ path and of the dQ kernel (same forward), and the fp32 reference's."""
    from dataclasses import replace

    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_bwd import _triton_backward

    B, Hq, Hkv, N, M, d, G, fusion, block_m, causal, mask_kind = case
    q, k, v, do, kw, (out, lse, grp, wa, wb, qe, inv) = _forward_problem(
        (B, Hq, Hkv, N, M, d, G, fusion, block_m, 0, 0.0, causal, mask_kind), device, dtype)
    base = bwd_config(d, G, 0, fp32=dtype == torch.float32)
    got = {}
    for atomic in (True, False):
        cfg = replace(base, dq_atomic=atomic, kv_split=split)
        got[atomic] = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, config=cfg, qeff=qe, inv=inv, **kw)
    return got, reference_grads(q, k, v, do, **kw)


@interpreter_only
@pytest.mark.parametrize("case", ATOMIC_CASES, ids=lambda c: "-".join(map(str, c)))
def test_dq_atomic_interpreter(case):
    """dQ summed by atomics in the dK/dV kernel: the reference's gradients (fp32), and the dQ kernel's to
    fp32 rounding; dK and dV are the same kernel's either way. GQA cases also run with the dK/dV split."""
    for split in ((None, 2) if case[1] // case[2] >= 2 else (None,)):
        got, ref = _atomic_vs_kernel(case, split=split)
        for name, a, b, c in zip(("dq", "dk", "dv"), got[True], ref[1:], got[False]):
            assert a.dtype == torch.float32 and torch.isfinite(a).all(), name
            assert rel_err(a, b) <= 1e-4, (name, split, rel_err(a, b))
            assert rel_err(a, c) <= 1e-5, (name, split, rel_err(a, c))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [(2, 8, 2, 2048, 2048, 64, 1, "mean", 128, False, None),
                                  (2, 8, 2, 2000, 2000, 64, 2, "mean", 128, True, "pad"),
                                  (1, 8, 4, 1500, 1700, 128, 2, "rank1", 32, True, None),
                                  (1, 4, 4, 1000, 1000, 80, 4, "mean", 64, False, "float")],
                         ids=lambda c: "-".join(map(str, c)))
def test_dq_atomic_gpu(case):
    """bf16 at real sizes (tails, GQA, masks, d = 64 / 80 / 128): the atomic dQ path within the issue's 2e-2 of the
    fp32 reference, and within bf16 noise of the dQ kernel's gradients."""
    got, ref = _atomic_vs_kernel(case, device="cuda", dtype=torch.bfloat16)
    for name, a, b, c in zip(("dq", "dk", "dv"), got[True], ref[1:], got[False]):
        assert a.dtype == torch.bfloat16 and torch.isfinite(a).all(), name
        assert rel_err(a, b) <= 2e-2, (name, rel_err(a, b))
        assert rel_err(a, c) <= 1e-2, (name, rel_err(a, c))


# (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind): tails, GQA, N != M, masks, a window, d = 80
TMA_CASES = [
    (1, 4, 2, 70, 70, 32, 2, "rank1", 32, 0, 0.0, True, None),
    (1, 2, 2, 70, 40, 64, 1, "mean", 64, 0, 0.0, False, "pad"),
    (2, 4, 1, 40, 70, 32, 2, "mean", 32, 16, 0.5, True, "float"),
    (1, 2, 2, 50, 50, 80, 4, "rank1", 32, 0, 0.0, False, None),
]


def _descriptor_paths(case, device="cpu", dtype=torch.float32, atomic=False):
    """Gradients with pointer loads and with descriptor loads in both backward kernels (same forward), and the
    fp32 reference's."""
    from dataclasses import replace

    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_bwd import _triton_backward

    q, k, v, do, kw, (out, lse, grp, wa, wb, qe, inv) = _forward_problem(case, device, dtype)
    d, G, W, causal = case[5], case[6], case[9], case[11]
    base = replace(bwd_config(d, G, W, causal=causal, fp32=dtype == torch.float32), dq_atomic=atomic)
    got = {tma: _triton_backward(do, q, k, v, out, lse, grp, wa, wb, qeff=qe, inv=inv,
                                 config=replace(base, kv_tma=tma, q_tma=tma), **kw) for tma in (False, True)}
    return got, reference_grads(q, k, v, do, **kw)


def test_dq_tile_order_switch_reaches_bwd_config(monkeypatch):
    """DISTR_BWD_DQ_TILE_ORDER (configs.DEFAULT_DQ_TILE_ORDER) sets the dQ kernel's order; the table keeps natural; a
    misspelled order is an error that names the variable."""
    from distr_patch.ops import configs

    assert configs.bwd_config(128, 2, 0, causal=True, interpret=False).dq_tile_order == "natural"
    for value in ("reversed", "auto"):
        monkeypatch.setattr(configs, "DEFAULT_DQ_TILE_ORDER", value)
        assert {configs.bwd_config(d, 2, W, causal=True, interpret=False).dq_tile_order
                for d in (64, 128) for W in (0, 128)} == {value}
    monkeypatch.setattr(configs, "DEFAULT_DQ_TILE_ORDER", "heavy_first")
    for interpret in (False, True):  # the interpreter's tiles ignore the order, but not a misspelling of it
        with pytest.raises(ValueError, match="DISTR_BWD_DQ_TILE_ORDER must be one of"):
            configs.bwd_config(64, 2, 0, interpret=interpret)


@interpreter_only
@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_dq_tile_orders_interpreter(case):
    """BwdConfig.dq_tile_order: the dQ kernel's programs started last tile first give the same gradients bit for bit
    (the dQ kernel runs: no atomics), and an unknown order is a named error."""
    from dataclasses import replace

    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_bwd import _triton_backward

    q, k, v, do, kw, (out, lse, grp, wa, wb, qe, inv) = _forward_problem(case, "cpu", torch.float32)
    d, G, W, causal = case[5], case[6], case[9], case[11]
    base = replace(bwd_config(d, G, W, causal=causal, fp32=True), dq_atomic=False)
    got = {order: _triton_backward(do, q, k, v, out, lse, grp, wa, wb, qeff=qe, inv=inv,
                                   config=replace(base, dq_tile_order=order), **kw)
           for order in ("natural", "reversed", "auto")}
    for order in ("reversed", "auto"):
        for a, b in zip(got["natural"], got[order]):
            assert torch.equal(a, b), order
    ref = reference_grads(q, k, v, do, **kw)
    for a, b in zip(got["reversed"], ref[1:]):
        assert rel_err(a, b) <= 1e-4
    with pytest.raises(ValueError, match="config.dq_tile_order must be one of"):
        _triton_backward(do, q, k, v, out, lse, grp, wa, wb, qeff=qe, inv=inv,
                         config=replace(base, dq_tile_order="heavy_first"), **kw)


@interpreter_only
@pytest.mark.parametrize("case", TMA_CASES, ids=lambda c: "-".join(map(str, c)))
def test_descriptor_loads_interpreter(case):
    """Q_eff / dO (dK/dV kernel) and K / V (dQ kernel) through tensor descriptors: the reference's gradients, and
    the pointer loads' to fp32 rounding (past-the-end rows and padded head dims read as zeros either way)."""
    for atomic in ((False, True) if case[9] == 0 else (False,)):
        got, ref = _descriptor_paths(case, atomic=atomic)
        for name, a, b, p in zip(("dq", "dk", "dv"), got[True], ref[1:], got[False]):
            assert torch.isfinite(a).all(), name
            assert rel_err(a, b) <= 1e-4, (name, atomic, rel_err(a, b))
            assert rel_err(a, p) <= 1e-6, (name, atomic, rel_err(a, p))


@interpreter_only
def test_broadcast_output_gradient_takes_pointer_loads():
    """``out.sum().backward()`` hands the backward an expanded dO (every stride 0), which a tensor descriptor cannot
    express: with descriptors asked for, the backward loads it by pointers and gets the reference's gradients."""
    from dataclasses import replace

    from distr_patch.ops.configs import bwd_config
    from distr_patch.ops.distr_attn import tile_descriptors
    from distr_patch.ops.distr_bwd import _triton_backward

    case = (1, 2, 2, 40, 40, 32, 2, "mean", 32, 0, 0.0, True, None)
    q, k, v, _, kw, (out, lse, grp, wa, wb, qe, inv) = _forward_problem(case, "cpu", torch.float32)
    do = torch.ones(()).expand(q.shape)
    assert tile_descriptors((qe, do), 32, 32) is None and tile_descriptors((k, v), 32, 32) is not None
    cfg = replace(bwd_config(32, 2, 0, causal=True), kv_tma=True, q_tma=True)
    got = _triton_backward(do, q, k, v, out, lse, grp, wa, wb, qeff=qe, inv=inv, config=cfg, **kw)
    ref = reference_grads(q, k, v, do.contiguous(), **kw)
    for name, a, b in zip(("dq", "dk", "dv"), got, ref[1:]):
        assert rel_err(a, b) <= 1e-4, (name, rel_err(a, b))


@interpreter_only
@pytest.mark.parametrize("kernel", ["_bwd_dkdv_kernel", "_bwd_dq_kernel"])
def test_descriptor_build_that_fails_to_compile_falls_back(monkeypatch, kernel):
    """A descriptor-load build that ptxas rejects (it crashed on some in Triton 3.6) runs with pointer loads: same
    gradients, one warning, and the specialisation is not compiled with descriptors again. For either kernel."""
    from distr_patch.ops import distr_bwd

    real, tried = getattr(distr_bwd, kernel), []

    class Rejecting:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                tried.append(kw["TMA"])
                if kw["TMA"]:
                    raise distr_bwd._COMPILE_ERRORS[0]("ptxas failed with error code -11")
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(distr_bwd, "_NO_TMA", set())
    want, _ = _descriptor_paths(TMA_CASES[0])
    monkeypatch.setattr(distr_bwd, kernel, Rejecting())
    with pytest.warns(RuntimeWarning, match="failed to compile"):
        got, _ = _descriptor_paths(TMA_CASES[0])
    for a, b in zip(got[True], want[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert tried == [False, True, False]  # pointer-load call, then the descriptor build once and its fallback
    _descriptor_paths(TMA_CASES[0])
    assert tried[3:] == [False, False]
    assert len(distr_bwd._NO_TMA) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [(1, 8, 2, 1500, 1700, 128, 2, "mean", 128, 0, 0.0, True, None),
                                  (2, 8, 8, 1024, 1024, 128, 1, "mean", 128, 0, 0.0, True, None),
                                  (1, 8, 4, 1000, 1000, 96, 2, "rank1", 64, 128, 0.5, True, None)],
                         ids=lambda c: "-".join(map(str, c)))
def test_descriptor_loads_gpu(case):
    """bf16 at real sizes where the table uses descriptor loads (64 < d <= 128, causal, no mask): the builds
    compile (no fallback), within the issue's 2e-2 of the fp32 reference and bf16 noise of the pointer loads."""
    from distr_patch.ops import configs, distr_bwd

    assert configs.bwd_config(case[5], case[6], case[9], causal=True, interpret=False).kv_tma
    got, ref = _descriptor_paths(case, device="cuda", dtype=torch.bfloat16)
    assert not distr_bwd._NO_TMA, distr_bwd._NO_TMA
    for name, a, b, p in zip(("dq", "dk", "dv"), got[True], ref[1:], got[False]):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= 2e-2, (name, rel_err(a, b))
        assert rel_err(a, p) <= 1e-2, (name, rel_err(a, p))


def test_bwd_config_table_picks_dq_paths():
    """The GPU table: atomics for d <= 64 causal calls without a window, 128-row dQ tiles from LONG_KEYS keys,
    neither at d = 128 or with a window; the environment switch overrides; the interpreter keeps its tiles."""
    from distr_patch.ops import configs

    gpu = dict(interpret=False)
    assert configs.bwd_config(64, 2, 0, causal=True, **gpu).dq_atomic
    assert not configs.bwd_config(64, 2, 0, causal=False, **gpu).dq_atomic
    assert not configs.bwd_config(64, 2, 128, causal=True, **gpu).dq_atomic
    assert not configs.bwd_config(128, 2, 0, causal=True, **gpu).dq_atomic
    long = configs.bwd_config(64, 1, 0, keys=configs.LONG_KEYS, **gpu)
    assert (long.q_block_m, long.q_warps) == (128, 8)
    assert configs.bwd_config(64, 1, 0, keys=configs.LONG_KEYS - 1, **gpu).q_block_m == 64
    assert configs.bwd_config(128, 1, 0, keys=configs.LONG_KEYS, **gpu).q_block_m == 64
    assert configs.bwd_config(64, 2, 0, causal=True, interpret=True).q_block_m == 32
    # descriptor loads in the dK/dV kernel: 64 < d <= 128, causal, no tensor mask, not fp32
    assert configs.bwd_config(128, 2, 0, causal=True, **gpu).kv_tma
    assert configs.bwd_config(96, 2, 128, causal=True, **gpu).kv_tma
    assert not configs.bwd_config(128, 2, 0, causal=False, **gpu).kv_tma
    assert not configs.bwd_config(128, 2, 0, causal=True, masked=True, **gpu).kv_tma
    assert not configs.bwd_config(128, 2, 0, causal=True, fp32=True, **gpu).kv_tma
    assert not configs.bwd_config(64, 2, 0, causal=True, **gpu).kv_tma
    assert not any(configs.bwd_config(128, 2, 0, causal=True, interpret=True).__dict__[f] for f in ("kv_tma", "q_tma"))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [(1, 4, 2, 16400, 16400, 64, 1, "mean", 128, 0, 0.0, False, None),
                                  (1, 4, 4, 16400, 16400, 64, 2, "mean", 128, 0, 0.0, True, None),
                                  (1, 2, 2, 16400, 16400, 64, 2, "rank1", 32, 0, 0.0, False, "pad")],
                         ids=lambda c: "-".join(map(str, c)))
def test_grads_long_sequence_gpu(case, gpu_memory_alone):
    """N = M past LONG_KEYS with a tail (the 128-row dQ tiles; the atomic path for the causal case), bf16. The
    reference's fp32 [N, M] scores take several GB: one such test at a time across the test processes."""
    check_case(case, zlib.crc32(repr(case).encode()), tol=2e-2, dtype=torch.bfloat16, device="cuda",
               backend="triton", gaussian=True)


@pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs the Triton backward (GPU or TRITON_INTERPRET=1)")
def test_dq_atomic_is_off_when_deterministic(monkeypatch):
    """torch.use_deterministic_algorithms(True) takes the dQ kernel: the atomic path is not reproducible."""
    import distr_patch.ops.distr_bwd as bwd

    seen = []
    monkeypatch.setattr(bwd.torch, "are_deterministic_algorithms_enabled", lambda: seen.append(1) or True)
    got, ref = _atomic_vs_kernel(ATOMIC_CASES[1], device="cuda" if CUDA else "cpu")
    assert seen, "the backward did not ask torch whether determinism is required"
    for a, c in zip(got[True], got[False]):
        assert torch.equal(a, c)  # the same (deterministic) path both times


def test_reference_gradcheck_window_correction():
    """float64 gradcheck of the definition (the oracle), window + correction, grouping held fixed."""
    gen = torch.Generator().manual_seed(15)
    q, k, v = (torch.randn(1, 1, 12, 8, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3))
    groups = compute_groups(q.detach(), group_size=2, block_m=32)

    def f(q, k, v):
        return reference_distr_attention(q, k, v, group_size=2, block_m=32, fusion="mean", exact_window=3,
                                         window_correction=0.5, causal=True, groups=groups)
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)


@interpreter_only
def test_bench_backward_smoke_interpreter(load_script, capsys):
    bench = load_script("bench_attention")
    rows = bench.main(["--backward", "--device", "cpu", "--d", "32", "--n", "64", "--causal", "1",
                       "--tokens", "64", "--model-dim", "32", "--rep-ms", "1", "--backward-paths", "--rounds", "1"])
    text = capsys.readouterr().out
    names = {r["variant"] for r in rows}
    assert {"distr G=1", "distr G=2 mean", "distr G=2 rank1", "distr G=2 rank1 W128 c.5"} <= names
    assert {"distr G=2 mean (launches)", "distr G=2 rank1 W128 c.5 (kept Q_eff)"} <= names
    assert {"distr G=1 (atomic dQ)", "distr G=1 (dQ kernel)", "distr G=2 rank1 (atomic dQ)"} <= names
    assert "distr G=1 (launches)" not in names  # the Q_eff / dQ_eff mapping paths are for grouped variants only
    assert {"distr G=2 mean sdpa", "distr G=2 rank1 sdpa"} <= names  # Q_eff, then torch's SDPA (its own backward)
    assert not any(n.startswith("distr G=2 mean sdpa (") for n in names)  # the paths are our kernels' switches
    for r in rows:
        if r["variant"].startswith("distr"):
            assert max(r["err_dq"], r["err_dk"], r["err_dv"]) < 1e-4, r
    assert "| fwd+bwd ms | TFLOP/s | vs flash | vs cuDNN | dq err | dk err | dv err | err vs exact | spread % |" in text
    assert all(len(r["ms_passes"]) == 1 for r in rows)


@interpreter_only
def test_bench_backward_times_each_variants_own_step(load_script, monkeypatch, tmp_path):
    """The variants are all called once before any is timed: each timing still runs its own variant's step (its
    closure bound at creation; a late-bound one would time the last variant every time). --plot draws the rows."""
    pytest.importorskip("matplotlib")
    bench = load_script("bench_attention")
    monkeypatch.setattr(bench, "_time_cpu", lambda step, ms: float(step()[0].double().abs().sum()))  # dq's size
    rows = bench.main(["--backward", "--device", "cpu", "--d", "32", "--n", "64", "--causal", "1", "--tokens", "64",
                       "--model-dim", "32", "--rep-ms", "1", "--variants", "distr G=1", "distr G=2 mean",
                       "distr G=2 rank1", "--plot", str(tmp_path / "bwd.png")])
    assert (tmp_path / "bwd.png").stat().st_size > 10_000
    timed = {r["variant"]: r["ms"] for r in rows if r["variant"].startswith("distr")}
    assert len(timed) == 3 and len(set(timed.values())) == 3, timed
    for r in rows:  # three passes by default, each timing this variant's own step
        assert len(r["ms_passes"]) == 3 and set(r["ms_passes"]) == {r["ms"]} and r["spread_pct"] == 0.0, r


# --------------------------------------------------------------------------- GPU, real sizes
GPU_CASES = [
    # (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask)
    (2, 8, 2, 1024, 1024, 64, 1, "mean", 128, 0, 0.0, True, None),
    (2, 8, 2, 2048, 2048, 128, 1, "mean", 128, 0, 0.0, False, None),
    (2, 8, 2, 2048, 2048, 64, 2, "mean", 128, 0, 0.0, False, None),
    (2, 8, 2, 1024, 1024, 128, 2, "mean", 128, 0, 0.0, True, None),
    (2, 8, 2, 2048, 2048, 64, 2, "rank1", 128, 128, 0.5, True, None),
    (2, 8, 2, 1024, 1024, 128, 2, "rank1", 128, 128, 0.5, False, None),
    (1, 8, 2, 1500, 1700, 128, 2, "rank1", 64, 128, 0.5, True, "pad"),
    (1, 8, 8, 1024, 1024, 64, 4, "rank1", 32, 64, 0.5, False, "float"),
    (1, 4, 4, 1000, 1000, 80, 2, "rank1", 64, 0, 0.0, True, None),
    (1, 4, 4, 1024, 1024, 256, 2, "rank1", 128, 64, 0.5, True, None),
]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_grads_match_reference_gpu(case):
    """bf16 at real sizes, Gaussian inputs: each gradient within 2e-2 of fp32 autograd (the issue's bound)."""
    check_case(case, zlib.crc32(repr(case).encode()), tol=2e-2, dtype=torch.bfloat16, device="cuda",
               backend="triton", gaussian=True)


# Heavy-tailed inputs (x8 outliers) in bf16. G=1 stays near 5e-3, but grouped variants measured
# 2.0e-2 .. 5.4e-2 on the H100: the forward scores use bf16(K̃) (the sum of G key columns rounded
# once), the backward recomputes them as Q_eff·K from the unrounded columns, so P in the backward
# differs from the forward's by ~2^-9·|s|, which the outliers' large scores make visible. The fp32
# GPU test below (1e-4, same heavy-tailed inputs) shows the math is exact; this bound guards
# against regressions of that bf16 noise floor.
HEAVY_BF16_TOL = {1: 1e-2, 2: 7e-2, 4: 7e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", GPU_CASES[::2], ids=lambda c: "-".join(map(str, c)))
def test_grads_heavy_tailed_bf16_gpu(case):
    check_case(case, zlib.crc32(repr(case).encode()), tol=HEAVY_BF16_TOL[case[6]], dtype=torch.bfloat16,
               device="cuda", backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [(2, 8, 2, 1024, 1024, 64, 2, "mean", 128, 0, 0.0, True, 64),
                                  (1, 8, 2, 1500, 1700, 128, 2, "rank1", 32, 128, 0.5, False, 64),
                                  (1, 4, 4, 1000, 1000, 256, 2, "rank1", 128, 64, 0.5, True, 32)],
                         ids=lambda c: "-".join(map(str, c)))
def test_dq_epilogue_and_kept_qeff_gpu(case):
    """bf16 at real sizes: every backward path within the issue's 2e-2 of the fp32 reference, and the epilogue /
    kept Q_eff within bf16 noise of the regroup launches (d=256's forward forms Q_eff by a launch)."""
    grads, ref, qe, qe_launch = _backward_paths(case, device="cuda", dtype=torch.bfloat16)
    assert rel_err(qe, qe_launch) <= 4e-3
    for path, got in grads.items():
        for i, (a, b) in enumerate(zip(got, ref[1:])):
            assert torch.isfinite(a).all() and rel_err(a, b) <= 2e-2, (path, i, rel_err(a, b))
            # the paths differ by bf16 roundings of Q_eff / dQ (heavy-tailed inputs: up to 1.4e-2 measured)
            assert rel_err(a, grads[False, False][i]) <= 2e-2, (path, i)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
def test_grads_fp32_gpu():
    check_case((1, 4, 2, 1000, 1000, 64, 2, "rank1", 64, 32, 0.5, True, None), 41, tol=1e-4,
               device="cuda", backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("kw", [dict(group_size=1), dict(group_size=2, fusion="rank1", exact_window=128,
                                                            window_correction=0.5)], ids=["G1", "G2-W128"])
def test_backward_memory_is_linear_gpu(kw):
    """At N = 16384 the backward's extra memory (O(N·d): tens of MB) stays far below one bf16
    [B, H, N, N] tensor (2.1 GB)."""
    B, H, N, d = 1, 4, 16384, 64
    q, k, v = (t.requires_grad_() for t in make_qkv(16, B, H, H, N, N, d, dtype=torch.bfloat16, device="cuda"))
    out = distr_attention(q, k, v, causal=True, backend="triton", **kw)
    do = torch.randn_like(out)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    n2 = B * H * N * N * 2
    assert extra < n2 / 16, (extra, n2)
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_bench_paths_options_need_backward(load_script):
    """--paths without --backward-paths (or --backward-paths without --backward) is an error naming the option,
    not a silently ignored flag."""
    bench = load_script("bench_attention")
    for argv, name in ((["--backward", "--paths", "atomic dQ"], "--paths"), (["--backward-paths"], "--backward-paths")):
        with pytest.raises(SystemExit) as exc:
            bench.main(["--device", "cpu", *argv])
        assert exc.value.code == 2, name
