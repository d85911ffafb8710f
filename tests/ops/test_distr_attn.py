"""The Triton kernel against the PyTorch reference.

On the CPU the kernel runs under TRITON_INTERPRET=1 (set in tests/conftest.py) at small
sizes; with a CUDA device the same checks run again at real sizes in bf16.
Inputs are fresh heavy-tailed random tensors, seeded per test.
"""
import os
import zlib
from dataclasses import replace

import pytest
import torch
import triton
import triton.language as tl

from distr_patch.ops import compute_groups, distr_attention, reference_distr_attention
from distr_patch.ops.distr_attn import _exp2_tile

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")


def heavy_tailed(shape, gen, dtype, device):
    """Gaussian with a few large outliers per tensor (as real activations have)."""
    x = torch.randn(shape, generator=gen)
    spikes = torch.rand(shape, generator=gen) < 0.01
    x = torch.where(spikes, x * 8.0, x)
    return x.to(device=device, dtype=dtype)


def make_qkv(seed, B, Hq, Hkv, N, M, d, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = heavy_tailed((B, Hq, N, d), gen, dtype, device)
    k = heavy_tailed((B, Hkv, M, d), gen, dtype, device)
    v = heavy_tailed((B, Hkv, M, d), gen, dtype, device)
    return q, k, v


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


# Each case: (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind)
CPU_CASES = [
    (1, 2, 2, 64, 64, 32, 1, "mean", 64, 0, 0.0, False, None),
    (2, 4, 2, 100, 100, 32, 1, "mean", 32, 0, 0.0, True, "pad"),
    (2, 2, 1, 77, 77, 64, 2, "mean", 32, 0, 0.0, False, None),
    (1, 4, 2, 130, 130, 32, 2, "rank1", 64, 0, 0.0, True, None),
    (2, 2, 2, 150, 150, 64, 2, "mean", 128, 0, 0.0, True, "pad"),
    (1, 2, 1, 60, 140, 32, 2, "rank1", 32, 0, 0.0, True, None),   # N < M: bottom-right causal
    (1, 2, 2, 140, 60, 32, 2, "mean", 64, 0, 0.0, True, None),    # N > M: leading rows fully masked
    (2, 4, 1, 96, 96, 64, 4, "mean", 32, 0, 0.0, False, "float"),  # MQA
    (1, 2, 2, 120, 120, 64, 4, "rank1", 64, 0, 0.0, True, None),
    (1, 2, 2, 200, 200, 32, 2, "rank1", 32, 128, 0.0, True, None),
    (1, 2, 1, 200, 200, 32, 2, "rank1", 64, 128, 0.5, True, "pad"),
    (1, 2, 2, 180, 180, 64, 2, "mean", 128, 128, 0.5, False, None),
    (2, 2, 2, 150, 170, 32, 4, "rank1", 32, 128, 0.5, False, "float"),
    (1, 2, 2, 90, 90, 80, 2, "rank1", 32, 16, 0.5, True, None),     # d=80: padded head dim
    (1, 2, 2, 90, 90, 32, 8, "rank1", 64, 0, 0.0, False, None),    # G=8: d/G=4 padded to 16
    (1, 2, 1, 150, 190, 64, 2, "rank1", 128, 40, 0.5, True, "pad"),  # band sub-tiles, N < M, GQA
    (1, 2, 2, 130, 130, 128, 4, "rank1", 64, 0, 0.0, True, None),  # G>=4 rank1 at d=128: the Grams by dot in fp32
]


def make_mask(kind, B, Hq, N, M, gen, device):
    if kind is None:
        return None
    if kind == "pad":  # key padding per batch element, as transformers builds it: [B, 1, N, M] bool
        lens = torch.randint(M // 2, M + 1, (B,), generator=gen)
        keep = torch.arange(M)[None, :] < lens[:, None]
        return keep[:, None, None, :].expand(B, 1, N, M).to(device)
    # additive float mask with finfo.min for masked entries, broadcast over heads
    allowed = torch.rand(B, 1, N, M, generator=gen) > 0.3
    vals = torch.randn(B, 1, N, M, generator=gen) * 0.5
    return torch.where(allowed, vals, torch.tensor(torch.finfo(torch.float32).min)).to(device)


@pytest.fixture(params=["reduced", "expanded", "expanded+two", "expanded+prologue+tma+positions", "table"])
def grouped_qk(request, monkeypatch):
    """Each way the kernel computes the grouped scores, as the default: ``FwdConfig.grouped_qk`` reduced or
    expanded; Q_eff formed before the kernel (by the one grouping + Q_eff launch, or by "two": the grouping launch
    and the regroup launch) or in its prologue (reading a column -> position map scattered by torch or stored by
    the grouping launch); K/V tiles through pointers or TMA descriptors. "table": the config table's own choices
    (prologue and TMA by head dim, G and window)."""
    mode, *opts = request.param.split("+")
    monkeypatch.setattr("distr_patch.ops.distr_attn.QEFF_LAUNCH", "two" if "two" in opts else "one")
    if mode != "table":  # the table keeps the module's default map (kernel-stored positions)
        monkeypatch.setattr("distr_patch.ops.grouping_triton.POSITIONS", "kernel" if "positions" in opts else "torch")
    forced = mode == "expanded"
    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_GROUPED_QK", "reduced" if mode == "reduced" else "expanded")
    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_QEFF_PROLOGUE", ("prologue" in opts) if forced else None)
    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_KV_TMA", ("tma" in opts) if forced else None)
    return request.param


@interpreter_only
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_reference_interpreter(case, grouped_qk):
    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cpu")
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask)
    out = distr_attention(q, k, v, backend="triton", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
    if mask_kind is None and not causal:
        return
    # fully masked rows (if any) are zeros in both
    zero_rows = ref.abs().sum(-1) == 0
    assert torch.equal(out.abs().sum(-1) == 0, zero_rows)


@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (1, 6, 7, 10, 12)], ids=lambda c: "-".join(map(str, c)))
def test_softmax_forms_interpreter(case):
    """Both forms of the plain tiles' softmax (``FwdConfig.scale_after_max``: the row max on the raw dot and one
    FMA per score, or the scores scaled first) give the reference's output, and the same log-sum-exp (+inf on
    fully masked rows): G=1 with padding, N > M causal (fully masked rows), an additive float mask, the window's
    correction with padding and GQA."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cpu")
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask, scale=None, num_hash_bits=16, seed=0)
    ref = reference_distr_attention(q, k, v, **kw)
    lses = []
    for form in (True, False):
        cfg = replace(fwd_config(d, G, block_m, exact_window=W), scale_after_max=form)
        out, lse, *_ = _triton_forward(q, k, v, config=cfg, query_valid=None, groups=None, return_lse=True, **kw)
        assert rel_err(out, ref) < 1e-5, (form, rel_err(out, ref))
        assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)
        lses.append(lse)
    masked_rows = ref.abs().sum(-1) == 0
    for lse in lses:
        assert torch.equal(torch.isinf(lse), masked_rows) and torch.isfinite(lse[~masked_rows]).all()
    assert (lses[0][~masked_rows] - lses[1][~masked_rows]).abs().max() < 1e-4


def _case_call(case):
    """(q, k, v, ``_triton_forward``'s keyword arguments, the reference's output) of a case tuple (B, Hq, Hkv, N, M,
    d, G, fusion, block_m, W, c, causal, mask kind), seeded by the case."""
    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cpu")
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n not in ("query_valid", "groups")})
    return q, k, v, kw, ref


@interpreter_only
@pytest.mark.parametrize("case", [  # B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask
    (2, 4, 2, 150, 170, 32, 2, "rank1", 32, 0, 0.0, True, "pad"),
    (1, 3, 1, 130, 130, 64, 4, "mean", 64, 40, 0.5, True, None),
    (2, 2, 2, 100, 100, 32, 2, "mean", 128, 0, 0.0, False, "float"),
], ids=str)
def test_qeff_scratch_interpreter(case):
    """``FwdConfig.qt_scratch`` on the expanded path: the prologue's Q_eff goes through the scratch (or, when the
    backward keeps it, through the stored Q_eff) before the key loop; the output, lse and kept Q_eff are the
    plain prologue's, and the reference's output."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, ref = _case_call(case)
    d, G, block_m, W = case[5], case[6], case[8], case[9]
    base = replace(fwd_config(d, G, block_m, exact_window=W, grouped_qk="expanded"), qeff_prologue=True)
    for keep in (False, True):  # the scratch, or the Q_eff stored for the backward
        plain = _triton_forward(q, k, v, config=base, return_lse=True, keep_qeff=keep, **kw)
        scratch = _triton_forward(q, k, v, config=replace(base, qt_scratch=True), return_lse=True, keep_qeff=keep,
                                  **kw)
        assert rel_err(scratch[0], ref) < 1e-5, rel_err(scratch[0], ref)
        for a, b in zip(plain, scratch):
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6, rtol=1e-5)


@triton.jit
def _exp2_tile_kernel(X, Y, E: tl.constexpr):
    offs = tl.arange(0, 16)[:, None] * 64 + tl.arange(0, 64)[None, :]
    tl.store(Y + offs, _exp2_tile(tl.load(X + offs), 16, 64, E))


@interpreter_only
def test_exp2_on_the_fma_pipe_interpreter():
    """``_exp2_fma`` (the polynomial exp2 ``FwdConfig.exp_fma`` moves to the FMA pipe) against torch.exp2 over the
    softmax's range, relative error <= 7.5e-5; below -126 a non-negative denormal; ``_exp2_tile`` puts it on the
    last 1/2 or 1/4 of the columns, the MUFU's exp2 on the rest."""
    gen = torch.Generator().manual_seed(3)
    x = -torch.rand(16, 64, generator=gen) * 130  # [-130, 0]: the underflow side too
    x[:, ::7] = -torch.rand(16, 10, generator=gen) * 2  # near 0, where P matters
    x[0, :] = 0.0
    exact = torch.exp2(x.double())
    for share in (0, 2, 4):
        y = torch.empty_like(x)
        _exp2_tile_kernel[(1,)](x, y, share)
        poly_cols = 64 - 64 // share if share else 64
        on, off = y[:, poly_cols:].double(), y[:, :poly_cols].double()
        big = x[:, poly_cols:] >= -126
        rel = ((on - exact[:, poly_cols:]).abs() / exact[:, poly_cols:])[big]
        assert share == 0 or (rel.max() <= 7.5e-5 and rel.max() > 1e-7), rel.max()  # the polynomial, not exp2
        assert (on[~big] >= 0).all() and (on[~big] < 2.0 ** -125).all()
        assert ((off - exact[:, :poly_cols]).abs() / exact[:, :poly_cols]).max() < 1e-6


@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (1, 3, 6, 7, 10, 12, 15)], ids=lambda c: "-".join(map(str, c)))
def test_exp_fma_interpreter(case):
    """``FwdConfig.exp_fma`` 2 and 4 (a share of the unmasked tiles' exp2 by the polynomial): the reference's output
    within the polynomial's error (fp32 here: 2e-4), fully masked rows still zeros (masked tiles keep the MUFU), and
    the output moved (so the polynomial ran): padding, causal with N > M, an additive mask, the window, GQA."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, ref = _case_call(case)
    d, G, block_m, W, mask_kind = case[5], case[6], case[8], case[9], case[12]
    base = replace(fwd_config(d, G, block_m, exact_window=W), block_n=16, band_block_n=16)
    plain = _triton_forward(q, k, v, config=base, **kw)
    for share in (2, 4):
        out = _triton_forward(q, k, v, config=replace(base, exp_fma=share), **kw)
        assert rel_err(out, ref) < 2e-4, (share, rel_err(out, ref))
        assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)
        if mask_kind is None:  # (with a tensor mask every tile is a masked one: the MUFU throughout)
            assert not torch.equal(out, plain), share
    with pytest.raises(ValueError, match="config.exp_fma must be 0, 2 or 4"):
        _triton_forward(q, k, v, config=replace(base, exp_fma=3), **kw)


@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (3, 6, 11)], ids=lambda c: "-".join(map(str, c)))
def test_exp_fma_with_rescale_slack_interpreter(case):
    """``exp_fma`` and ``rescale_slack`` together: with the slack, exp2's arguments reach up to +slack, so the
    polynomial runs on positive inputs too (p up to 2**8). Keys planted late pass the first tiles' max by far more
    than the slack. The reference's output within the polynomial's error, the plain kernel's lse, fully masked
    rows zeros."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, _ = _case_call(case)
    d, G, block_m, W = case[5], case[6], case[8], case[9]
    k[:, :, -20:-17] *= 6.0
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n not in ("query_valid", "groups")})
    base = replace(fwd_config(d, G, block_m, exact_window=W), block_n=16, band_block_n=16)
    _, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    for share, slack in ((2, 8.0), (4, 0.5)):
        cfg = replace(base, exp_fma=share, rescale_slack=slack)
        out, lse = _triton_forward(q, k, v, config=cfg, return_lse=True, **kw)[:2]
        assert rel_err(out, ref) < 2e-4, (share, slack, rel_err(out, ref))
        fin = torch.isfinite(plain_lse)
        assert torch.equal(fin, torch.isfinite(lse)) and torch.allclose(lse[fin], plain_lse[fin], atol=1e-3)
        assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)


@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (1, 3, 6, 7, 10, 12, 15)], ids=lambda c: "-".join(map(str, c)))
def test_rescale_slack_interpreter(case):
    """``FwdConfig.rescale_slack`` (the reference max moves only when a tile's max passes it by the slack): the
    reference's output and the plain kernel's lse, with keys planted late that pass the first tiles' max by far
    more than the slack (so the rescale runs mid-loop as well as on the first tile); fully masked rows stay zeros;
    padding, causal with N > M, an additive mask, the window, GQA."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, _ = _case_call(case)
    d, G, block_m, W = case[5], case[6], case[8], case[9]
    k[:, :, -20:-17] *= 6.0  # late keys with much larger scores (both signs: some rows' max jumps)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n not in ("query_valid", "groups")})
    base = replace(fwd_config(d, G, block_m, exact_window=W), block_n=16, band_block_n=16)
    plain, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    for slack in (0.5, 8.0):
        out, lse = _triton_forward(q, k, v, config=replace(base, rescale_slack=slack), return_lse=True, **kw)[:2]
        assert rel_err(out, ref) < 1e-5, (slack, rel_err(out, ref))
        fin = torch.isfinite(plain_lse)
        assert torch.equal(fin, torch.isfinite(lse)) and torch.allclose(lse[fin], plain_lse[fin], atol=1e-4)
        assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)
        if slack == 8.0:  # rows whose max rose by less than 8 keep the old one: P on another scale rounds differently
            assert not torch.equal(out, plain)


def test_rescale_slack_is_checked_and_off_by_default(monkeypatch):
    """The slack is a number of log2 units in [0, 15]: other values are named errors (the config field, the
    environment variable); DISTR_FWD_RESCALE_SLACK reaches the table; the table keeps it off."""
    from distr_patch.ops import configs
    from distr_patch.ops.distr_attn import _triton_forward

    assert configs.fwd_config(64, 2, 128, interpret=False).rescale_slack == 0.0
    monkeypatch.setattr(configs, "DEFAULT_FWD_RESCALE_SLACK", "8")
    assert configs.fwd_config(64, 2, 128, interpret=False).rescale_slack == 8.0
    monkeypatch.setattr(configs, "DEFAULT_FWD_RESCALE_SLACK", "eight")
    with pytest.raises(ValueError, match="DISTR_FWD_RESCALE_SLACK must be a number of log2 units in"):
        configs.fwd_config(64, 2, 128, interpret=False)
    monkeypatch.setattr(configs, "DEFAULT_FWD_RESCALE_SLACK", None)
    q, k, v = make_qkv(5, 1, 2, 2, 40, 40, 32)
    kw = dict(group_size=2, block_m=32, fusion="mean", exact_window=0, window_correction=0.0, causal=False,
              attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    base = configs.fwd_config(32, 2, 32, interpret=True)
    for bad in (-1.0, 16.0, float("nan"), "x", True):
        with pytest.raises(ValueError, match="config.rescale_slack must be a number of log2 units in"):
            _triton_forward(q, k, v, config=replace(base, rescale_slack=bad), **kw)


def test_exp_fma_is_off_for_fp32_and_by_default(monkeypatch):
    """fp32 calls never take the polynomial (its 7.5e-5 would show there); DISTR_FWD_EXP_FMA reaches the table and a
    misspelled value is a named error."""
    from distr_patch.ops import configs

    assert configs.fwd_config(64, 2, 128, interpret=False).exp_fma == 0
    monkeypatch.setattr(configs, "DEFAULT_FWD_EXP_FMA", "2")
    assert configs.fwd_config(64, 2, 128, interpret=False).exp_fma == 2
    assert configs.fwd_config(64, 2, 128, interpret=False, fp32=True).exp_fma == 0
    monkeypatch.setattr(configs, "DEFAULT_FWD_EXP_FMA", "half")
    with pytest.raises(ValueError, match="DISTR_FWD_EXP_FMA must be one of"):
        configs.fwd_config(64, 2, 128, interpret=False)


@interpreter_only
@pytest.mark.parametrize("case", [  # B, Hq, Hkv, N, M, d, G, fusion, block_m, W, causal, mask
    (2, 4, 2, 150, 150, 32, 2, "rank1", 128, 40, True, "pad"),
    (1, 3, 1, 97, 130, 64, 2, "mean", 32, 24, False, None),
    (1, 2, 2, 120, 120, 32, 4, "rank1", 64, 50, False, "float"),
], ids=str)
def test_sigma2_by_difference_interpreter(case):
    """``FwdConfig.sigma2_diff``: the window's σ² from one dot, (Q_eff − Q) Kᵀ, gives the reference's output (fp32
    dots here, so Q_eff − Q is exact); the correction moves the output, so a wrong σ² would show."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cpu")
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, causal=causal, attention_mask=mask,
              scale=None, num_hash_bits=16, seed=0)
    cfg = replace(fwd_config(d, G, block_m, exact_window=W), sigma2_diff=True)
    assert cfg.grouped_qk == "expanded"
    out = _triton_forward(q, k, v, config=cfg, query_valid=None, groups=None, window_correction=1.0, **kw)
    ref = reference_distr_attention(q, k, v, window_correction=1.0, **kw)
    assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
    assert rel_err(reference_distr_attention(q, k, v, window_correction=0.0, **kw), ref) > 1e-3


@interpreter_only
@pytest.mark.parametrize("case", [  # B, Hq, Hkv, N, M, d, G, fusion, block_m, W, causal, mask, path
    (2, 4, 2, 150, 170, 32, 1, "mean", 128, 0, True, "pad", "expanded"),
    (1, 3, 1, 200, 200, 64, 2, "rank1", 32, 40, True, None, "expanded"),
    (2, 2, 1, 130, 130, 32, 2, "mean", 64, 0, True, "float", "reduced"),  # Q̃ through the scratch buffer
    (1, 2, 2, 140, 140, 32, 4, "rank1", 64, 24, False, "pad", "fused"),  # the grouping in the prologue
], ids=str)
def test_tile_orders_interpreter(case):
    """``FwdConfig.tile_order``: programs start in another order and compute the same thing, bit for bit (each one
    owns its query tile), and match the reference; an unknown order is a named error."""
    from distr_patch.ops.configs import fwd_config, with_fused_grouping
    from distr_patch.ops.distr_attn import _triton_forward

    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, causal, mask_kind, path = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cpu")
    valid = mask[:, 0, 0, :N].contiguous() if mask_kind == "pad" and N == M else None  # padded query rows
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=0.5 if W else 0.0,
              causal=causal, attention_mask=mask, scale=None, num_hash_bits=16, seed=0)
    base = fwd_config(d, G, block_m, exact_window=W, grouped_qk="reduced" if path == "reduced" else None)
    if path == "reduced":
        base = replace(base, qt_scratch=True)
    if path == "fused":
        base = with_fused_grouping(replace(base, block_m=block_m, qeff_prologue=True), d, block_m)
        assert base.fused_grouping
    outs = {order: _triton_forward(q, k, v, config=replace(base, tile_order=order), query_valid=valid, groups=None,
                                   return_lse=True, **kw)
            for order in ("natural", "reversed", "heavy_first", "auto")}
    for order in ("reversed", "heavy_first", "auto"):
        for a, b in zip(outs["natural"], outs[order]):
            assert (a is None and b is None) or torch.equal(a, b), order
    ref = reference_distr_attention(q, k, v, query_valid=valid, **kw)
    assert rel_err(outs["heavy_first"][0], ref) < 1e-5
    with pytest.raises(ValueError, match="config.tile_order must be one of"):
        _triton_forward(q, k, v, config=replace(base, tile_order="backwards"), query_valid=valid, groups=None, **kw)


@interpreter_only
@pytest.mark.parametrize("block_n,band_n,causal", [(128, 32, True), (128, 64, False), (64, 16, True)])
def test_window_band_subtiles_interpreter(block_n, band_n, causal):
    """The GPU table's shape: 128-row tiles, wide plain key tiles, narrower tiles where the band is
    (N != M, tails, padding, a window that is no multiple of any tile)."""
    from distr_patch.ops.configs import FwdConfig
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(block_n + band_n, 1, 2, 1, 300, 333, 32)
    mask = make_mask("pad", 1, 2, 300, 333, torch.Generator().manual_seed(5), "cpu")
    kw = dict(group_size=2, block_m=128, fusion="rank1", exact_window=40, window_correction=0.5, causal=causal,
              attention_mask=mask, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    cfg = FwdConfig(128, block_n, 4, 1, "transposed", qt_scratch=True, band_block_n=band_n)
    out = _triton_forward(q, k, v, config=cfg, **kw)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n not in ("query_valid", "groups")})
    assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
    with pytest.raises(ValueError, match="band_block_n=24 must divide block_n"):
        _triton_forward(q, k, v, config=FwdConfig(128, block_n, 4, 1, "transposed", band_block_n=24), **kw)


@interpreter_only
@pytest.mark.parametrize("grouped_qk", ["reduced", "expanded"])
@pytest.mark.parametrize("case", [(2, "mean", 32, 0, 0.0, True, 64), (2, "rank1", 64, 16, 0.5, True, 32),
                                  (4, "rank1", 32, 0, 0.0, False, 80), (8, "rank1", 64, 0, 0.0, True, 32)],
                         ids=["G2-mean", "G2-rank1-window", "G4-rank1-d80", "G8-rank1"])
def test_fused_grouping_prologue_interpreter(case, grouped_qk):
    """FwdConfig.fused_grouping: each program groups its own block; the same groups, weights, output and (expanded:
    Q_eff formed in the prologue from the positions the program stored) Q_eff and positions as the separate
    grouping launch, and the reference's output (tails, query_valid, GQA)."""
    from distr_patch.ops.configs import fwd_config, with_fused_grouping
    from distr_patch.ops.distr_attn import _triton_forward

    G, fusion, block_m, W, c, causal, d = case
    q, k, v = make_qkv(G * d + block_m, 2, 4, 2, 90, 90, d)
    valid = torch.ones(2, 90, dtype=torch.bool)
    valid[1, 70:] = False
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=valid[:, None, None, :], scale=None, num_hash_bits=16, seed=3, query_valid=valid,
              groups=None)
    base = fwd_config(d, G, block_m, exact_window=W, grouped_qk=grouped_qk)
    if grouped_qk == "expanded":  # one grouping block per program, as the fused grouping needs
        base = replace(base, block_m=block_m, qeff_prologue=True)
    fused = with_fused_grouping(base, d, block_m)
    assert fused.fused_grouping and not base.fused_grouping
    out_f, lse_f, grp_f, wa_f, _, *qe_f = _triton_forward(q, k, v, config=fused, return_lse=True, keep_qeff=True,
                                                          **kw)
    out_s, lse_s, grp_s, wa_s, _, *qe_s = _triton_forward(q, k, v, config=base, return_lse=True, keep_qeff=True,
                                                          **kw)
    assert torch.equal(grp_f, grp_s)
    assert (wa_f is None) == (fusion == "mean") and (wa_f is None or torch.allclose(wa_f, wa_s, atol=1e-6))
    torch.testing.assert_close(out_f, out_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse_f, lse_s, rtol=1e-5, atol=1e-6)
    if grouped_qk == "expanded":  # the Q_eff the prologue stored, and the positions the grouping stored
        assert torch.equal(qe_f[1], qe_s[1])
        torch.testing.assert_close(qe_f[0], qe_s[0], rtol=1e-5, atol=1e-6)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(out_f, ref) < 1e-5


@interpreter_only
def test_fused_grouping_expanded_needs_one_block_per_program():
    """The expanded path's fused grouping is refused by name where a tile holds several grouping blocks or has no
    Q_eff prologue; ``with_fused_grouping`` leaves such configs as they are."""
    from distr_patch.ops.configs import fwd_config, with_fused_grouping
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(4, 1, 2, 2, 70, 70, 32)
    kw = dict(group_size=2, block_m=32, fusion="mean", exact_window=0, window_correction=0.0, causal=False,
              attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    base = fwd_config(32, 2, 32, grouped_qk="expanded")
    assert base.block_m == 64 and with_fused_grouping(base, 32, 32) == base
    with pytest.raises(ValueError, match="fused_grouping with grouped_qk='expanded' needs qeff_prologue=True"):
        _triton_forward(q, k, v, config=replace(base, fused_grouping=True), **kw)
    with pytest.raises(ValueError, match="grouping block_m=32"):
        _triton_forward(q, k, v, config=replace(base, block_m=32, qeff_prologue=False, fused_grouping=True), **kw)


def test_softmax_form_switch_reaches_fwd_config(monkeypatch):
    """DISTR_FWD_SCALE_AFTER_MAX (configs.DEFAULT_FWD_SCALE_AFTER_MAX) overrides the table both ways."""
    from distr_patch.ops import configs

    for value in (True, False):
        monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_FWD_SCALE_AFTER_MAX", value)
        assert {configs.fwd_config(d, G, 128, interpret=False, masked=m).scale_after_max
                for d in (64, 128) for G in (1, 2) for m in (False, True)} == {value}


@interpreter_only
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_batches_past_the_grid_limit_run_in_slices(monkeypatch, backend):
    """B·Hq above a CUDA grid's second axis (MAX_GRID_Y, lowered here to 5: slices of 2 sequences at Hq=2) runs in batch
    slices: the same output and gradients as one call, with a per-sequence padding mask, query_valid and precomputed
    groups sliced along."""
    from distr_patch.ops import distr_attn

    B, Hq, Hkv, N, d = 5, 2, 1, 70, 32
    q, k, v = make_qkv(11, B, Hq, Hkv, N, N, d)
    mask = make_mask("pad", B, Hq, N, N, torch.Generator().manual_seed(12), "cpu")
    valid = mask[:, 0, 0, :].contiguous()
    kw = dict(group_size=2, block_m=32, fusion="rank1", causal=backend == "triton", attention_mask=mask,
              query_valid=valid, backend=backend)
    if backend == "triton":
        kw.update(exact_window=16, window_correction=0.5)
    else:  # the SDPA engine with a padding mask and no window: grouped SDPA on Q_eff
        kw.update(groups=compute_groups(q, group_size=2, block_m=32, num_hash_bits=16, seed=0, query_valid=valid))
    calls = []
    real = distr_attn._in_batch_chunks
    monkeypatch.setattr(distr_attn, "_in_batch_chunks", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    grads = []
    for limit in (10 ** 6, 5):
        monkeypatch.setattr(distr_attn, "MAX_GRID_Y", limit)
        qq, kk, vv = (t.clone().requires_grad_(backend == "triton") for t in (q, k, v))
        out = distr_attention(qq, kk, vv, **kw)
        if backend == "triton":
            out.square().sum().backward()
        grads.append((out.detach(), *(t.grad for t in (qq, kk, vv))))
    assert calls == [B]  # the second call was sliced (into 2 + 2 + 1 sequences), the first was not
    for whole, sliced in zip(*grads):
        assert (whole is None and sliced is None) or torch.equal(whole, sliced)
    monkeypatch.setattr(distr_attn, "MAX_GRID_Y", 1)
    with pytest.raises(ValueError, match="2 query heads exceed the 1"):
        distr_attention(q, k, v, **kw)


def test_tile_order_switch_reaches_fwd_config(monkeypatch):
    """DISTR_FWD_TILE_ORDER (configs.DEFAULT_FWD_TILE_ORDER) sets every config's order; a misspelled one is an error
    that names the variable."""
    from distr_patch.ops import configs

    assert configs.fwd_config(64, 2, 128, interpret=False).tile_order == "auto"
    assert [configs.tile_order_code("auto", c) for c in (False, True)] == [configs.TILE_ORDERS["natural"],
                                                                           configs.TILE_ORDERS["reversed"]]
    for value in ("reversed", "heavy_first", "natural", "auto"):
        monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_FWD_TILE_ORDER", value)
        assert {configs.fwd_config(d, G, 128, exact_window=W, interpret=False).tile_order
                for d in (64, 128) for G in (1, 2) for W in (0, 128)} == {value}
    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_FWD_TILE_ORDER", "backwards")
    with pytest.raises(ValueError, match="DISTR_FWD_TILE_ORDER must be one of"):
        configs.fwd_config(64, 2, 128, interpret=False)


def test_fused_grouping_switch_reaches_fwd_config(monkeypatch):
    """DISTR_FWD_FUSED_GROUPING (configs.DEFAULT_FUSED_GROUPING) turns the fused grouping, and on the expanded path
    the Q_eff prologue, on where a tile is one grouping block; G = 1 and other block_m stay as the table says."""
    from distr_patch.ops import configs

    monkeypatch.setattr(configs, "DEFAULT_FUSED_GROUPING", True)
    on = configs.fwd_config(64, 2, 128, interpret=False, grouped_qk="expanded")
    assert on.fused_grouping and on.qeff_prologue and on.block_m == 128
    assert configs.fwd_config(128, 2, 128, interpret=False, grouped_qk="reduced").fused_grouping
    assert not configs.fwd_config(64, 2, 32, interpret=False, grouped_qk="expanded").fused_grouping
    assert not configs.fwd_config(256, 2, 128, interpret=False, grouped_qk="expanded").fused_grouping
    assert not configs.fwd_config(64, 1, 128, interpret=False).fused_grouping
    monkeypatch.setattr(configs, "DEFAULT_FUSED_GROUPING", False)
    assert not configs.fwd_config(64, 2, 128, interpret=False, grouped_qk="reduced").fused_grouping
    monkeypatch.setenv("DISTR_FWD_FUSED_GROUPING", "yes")
    with pytest.raises(ValueError, match="DISTR_FWD_FUSED_GROUPING must be 0 or 1"):
        configs._env_flag("DISTR_FWD_FUSED_GROUPING", None)


@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_half_precision_interpreter(dtype):
    q, k, v = make_qkv(7, 1, 2, 1, 100, 100, 64, dtype=dtype)
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=16, window_correction=0.5, causal=True)
    out = distr_attention(q, k, v, backend="triton", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert out.dtype == dtype
    assert rel_err(out, ref) < 1e-2


@interpreter_only
def test_noncontiguous_inputs_interpreter():
    # transformers hands [B, N, H, d] projections transposed to [B, H, N, d]
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 70, 4, 32, generator=gen).transpose(1, 2)
    k = torch.randn(2, 70, 2, 32, generator=gen).transpose(1, 2)
    v = torch.randn(2, 70, 2, 32, generator=gen).transpose(1, 2)
    assert not q.is_contiguous()
    kw = dict(group_size=2, block_m=32, fusion="mean", causal=True)
    out = distr_attention(q, k, v, backend="triton", **kw)
    ref = reference_distr_attention(q.contiguous(), k.contiguous(), v.contiguous(), **kw)
    assert rel_err(out, ref) < 1e-5


@interpreter_only
def test_precomputed_groups_and_query_valid_interpreter():
    q, k, v = make_qkv(11, 2, 2, 2, 90, 90, 32)
    valid = torch.ones(2, 90, dtype=torch.bool)
    valid[1, 60:] = False
    groups = compute_groups(q, group_size=2, block_m=32, query_valid=valid, seed=5)
    kw = dict(group_size=2, block_m=32, fusion="rank1", query_valid=valid, seed=5, causal=True)
    out = distr_attention(q, k, v, backend="triton", groups=groups, **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert rel_err(out, ref) < 1e-5


# --------------------------------------------------------------------------- GPU, real sizes
GPU_CASES = [
    # (B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask)
    (2, 8, 8, 4096, 4096, 64, 1, "mean", 128, 0, 0.0, True, None),
    (2, 8, 8, 4096, 4096, 128, 1, "mean", 128, 0, 0.0, False, None),
    (2, 8, 2, 4096, 4096, 64, 2, "mean", 128, 0, 0.0, False, None),
    (2, 8, 2, 4096, 4096, 128, 2, "rank1", 128, 0, 0.0, True, None),
    (1, 8, 8, 4000, 4000, 64, 2, "rank1", 128, 128, 0.5, True, "pad"),
    (1, 8, 4, 3000, 4100, 128, 2, "rank1", 32, 128, 0.5, True, None),
    (1, 8, 8, 2048, 2048, 64, 4, "rank1", 64, 128, 0.0, False, "float"),
    (1, 12, 12, 197, 197, 64, 2, "mean", 128, 0, 0.0, False, None),  # ViT-B/16
    (1, 4, 4, 1000, 1000, 80, 2, "rank1", 64, 0, 0.0, True, None),
    (1, 4, 4, 1000, 1000, 96, 4, "mean", 128, 0, 0.0, False, None),
    (1, 4, 4, 1024, 1024, 256, 2, "rank1", 128, 64, 0.5, True, None),
    (1, 4, 4, 1024, 1024, 32, 8, "mean", 128, 0, 0.0, True, None),
    # tensor masks at 64 < d <= 128: the 128-key tiles did not fit in shared memory with a mask tile (fwd_config's
    # ``masked``); G = 1 with a padding mask is what a patched Llama-3-8B / Qwen2.5 batch runs
    (2, 8, 2, 2048, 2048, 128, 1, "mean", 128, 0, 0.0, True, "pad"),
    (1, 8, 2, 1500, 1700, 128, 2, "rank1", 128, 0, 0.0, False, "float"),
    (1, 4, 4, 1000, 1000, 80, 4, "mean", 64, 0, 0.0, False, "float"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("grouped_qk", ["reduced", "expanded"])
@pytest.mark.parametrize("d,G,fusion,W", [(64, 2, "mean", 0), (128, 2, "rank1", 0), (64, 2, "rank1", 128),
                                          (128, 4, "rank1", 0), (128, 2, "mean", 0)])
def test_fused_grouping_prologue_gpu(d, G, fusion, W, grouped_qk):
    """fused_grouping at real sizes, bf16: the same groups as the grouping launch, output within 1e-2 of the
    reference."""
    from distr_patch.ops.configs import fwd_config, with_fused_grouping
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(d + G + W, 2, 8, 2, 4000, 4000, d, dtype=torch.bfloat16, device="cuda")
    kw = dict(group_size=G, block_m=128, fusion=fusion, exact_window=W, window_correction=0.5 if W else 0.0,
              causal=True, attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    base = fwd_config(d, G, 128, exact_window=W, grouped_qk=grouped_qk)
    fused = with_fused_grouping(base, d, 128)
    assert fused.fused_grouping
    out_f, _, grp_f, wa_f, _ = _triton_forward(q, k, v, config=fused, return_lse=True, **kw)
    _, _, grp_s, wa_s, _ = _triton_forward(q, k, v, config=base, return_lse=True, **kw)
    assert torch.equal(grp_f, grp_s)
    assert wa_f is None or torch.allclose(wa_f, wa_s, atol=1e-6)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(out_f, ref) <= 1e-2, rel_err(out_f, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d,G,fusion,W,causal", [(64, 2, "mean", 0, False), (64, 2, "rank1", 0, True),
                                                 (64, 4, "mean", 0, True), (64, 2, "rank1", 128, True),
                                                 (128, 2, "rank1", 0, True), (128, 2, "mean", 128, False)])
def test_qeff_scratch_gpu(d, G, fusion, W, causal):
    """FwdConfig.qt_scratch on the expanded path's Q_eff prologue at real sizes, bf16, a tail and GQA: the output
    and lse of the plain prologue (within 1e-3: the same Q_eff, the dot reading it from shared memory) and within
    1e-2 of the reference, also when the backward keeps Q_eff (the round trip then goes through it)."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(d + G + W + 7, 2, 8, 2, 3000, 3000, d, dtype=torch.bfloat16, device="cuda")
    kw = dict(group_size=G, block_m=128, fusion=fusion, exact_window=W, window_correction=0.5 if W else 0.0,
              causal=causal, attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    base = replace(fwd_config(d, G, 128, exact_window=W), qeff_prologue=True)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    for keep in (False, True):
        plain = _triton_forward(q, k, v, config=base, return_lse=True, keep_qeff=keep, **kw)
        scratch = _triton_forward(q, k, v, config=replace(base, qt_scratch=True), return_lse=True, keep_qeff=keep,
                                  **kw)
        assert rel_err(scratch[0], plain[0]) <= 1e-3 and rel_err(scratch[1], plain[1]) <= 1e-5
        assert rel_err(scratch[0], ref) <= 1e-2, rel_err(scratch[0], ref)


# (d, G, fusion, W, causal) of the GPU tests of kernel options off by default (exp_fma, rescale_slack)
@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (9, 10, 11, 12)] + [
    (1, 2, 2, 190, 150, 32, 2, "rank1", 64, 96, 0.5, True, None),  # N > M, causal: leading rows fully masked
    (1, 2, 1, 160, 160, 32, 2, "mean", 64, 96, 0.5, False, "pad", "reduced"),  # Q̃ K̃ᵀ path, GQA
    (1, 2, 2, 130, 130, 32, 2, "rank1", 64, 40, 0.5, False, None),  # W < tile: no tile inside the band
], ids=lambda c: "-".join(map(str, c)))
def test_band_exact_tiles_interpreter(case):
    """``FwdConfig.band_exact_tiles``: the band's key tiles inside the band for every row take the exact product
    alone. The reference's output and the plain kernel's lse; with band sub-tiles as wide as the key tiles the plain
    kernel's output bit for bit; with narrower ones (16 keys against 32) the output differs in rounding from the
    plain kernel's wherever some tile is inside the band, which shows that the exact-only tiles ran."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    path = case[13] if len(case) > 13 else None
    q, k, v, kw, ref = _case_call(case[:13])
    d, G, block_m, W = case[5], case[6], case[8], case[9]
    base = replace(fwd_config(d, G, block_m, exact_window=W, grouped_qk=path), band_block_n=16)
    assert base.block_n == 32 and W > 0
    plain, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    out, lse = _triton_forward(q, k, v, config=replace(base, band_exact_tiles=True), return_lse=True, **kw)[:2]
    assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
    fin = torch.isfinite(plain_lse)
    assert torch.equal(fin, torch.isfinite(lse)) and torch.allclose(lse[fin], plain_lse[fin], atol=1e-4)
    assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)
    # a 32-key tile inside the band for all 64 rows of a query tile needs 2W - 64 >= 32 plus alignment
    assert torch.equal(out, plain) == (W < 80), W
    wide = replace(base, band_block_n=32)
    assert torch.equal(_triton_forward(q, k, v, config=replace(wide, band_exact_tiles=True), **kw),
                       _triton_forward(q, k, v, config=wide, **kw))


@interpreter_only
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (10, 11, 12, 13, 15)] + [
    (1, 2, 2, 190, 150, 32, 2, "rank1", 64, 96, 0.5, True, None),  # N > M, causal: leading rows fully masked
    (1, 2, 1, 160, 160, 32, 2, "mean", 64, 96, 0.5, False, "pad", "reduced"),  # Q̃ K̃ᵀ path, GQA
    (1, 2, 2, 120, 120, 32, 2, "rank1", 32, 24, 1.0, False, None, "diff"),  # with σ² by one dot
], ids=lambda c: "-".join(map(str, c)))
def test_sigma2_deferred_sums_interpreter(case):
    """``FwdConfig.sigma2_deferred_sums`` (the σ² pass sums over the keys once, the counts closed-form without a
    tensor mask): the reference's output and the per-tile sums' lse, with and without tensor masks, causal with
    N != M (rows with no band keys), both grouped paths; the correction moves the output, so a wrong σ² would show."""
    _window_option_vs_plain(case, dict(sigma2_deferred_sums=False), dict(sigma2_deferred_sums=True), 1e-6)


def _window_option_vs_plain(case, plain: dict, option: dict, max_vs_plain: float):
    """A window case with a correction (``case`` as CPU_CASES, optionally + "reduced" (the Q̃ K̃ᵀ path) or "diff"
    (σ² by one dot)) under the table's config changed by ``plain`` and by ``plain`` and ``option`` (FwdConfig fields):
    the option's output within 1e-5 of the reference and ``max_vs_plain`` of the plain one, its lse within 1e-5 of
    the plain one's, the same fully masked rows; and the correction moves the reference's output (so a wrong σ²
    would show)."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    way = case[13] if len(case) > 13 else None
    q, k, v, kw, ref = _case_call(case[:13])
    d, G, block_m, W, c = case[5], case[6], case[8], case[9], case[10]
    assert W > 0 and c > 0
    base = fwd_config(d, G, block_m, exact_window=W, grouped_qk="reduced" if way == "reduced" else None)
    base = replace(base, sigma2_diff=way == "diff", **plain)
    plain_out, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    out, lse = _triton_forward(q, k, v, config=replace(base, **option), return_lse=True, **kw)[:2]
    assert rel_err(out, ref) < 1e-5, rel_err(out, ref)
    assert rel_err(out, plain_out) < max_vs_plain, rel_err(out, plain_out)
    fin = torch.isfinite(plain_lse)
    assert torch.equal(fin, torch.isfinite(lse)) and torch.allclose(lse[fin], plain_lse[fin], atol=1e-5)
    assert torch.equal(out.abs().sum(-1) == 0, ref.abs().sum(-1) == 0)
    uncorrected = reference_distr_attention(q, k, v, **{**{n: kw[n] for n in kw if n not in ("query_valid", "groups")},
                                                         "window_correction": 0.0})
    assert rel_err(uncorrected, ref) > 1e-4


@interpreter_only
@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("case", [CPU_CASES[i] for i in (10, 11, 12, 13, 15)] + [
    (1, 2, 2, 190, 150, 32, 2, "rank1", 64, 96, 0.5, True, None),  # N > M, causal: leading rows fully masked
    (1, 2, 1, 160, 160, 32, 2, "mean", 64, 96, 0.5, False, "pad", "reduced"),  # Q̃ K̃ᵀ path, GQA
    (1, 2, 2, 120, 120, 32, 2, "rank1", 32, 24, 4.0, False, "float"),  # a strong correction, additive mask
    (1, 2, 2, 120, 120, 32, 2, "mean", 64, 40, 1.0, True, None, "diff"),  # with σ² by one dot
], ids=lambda c: "-".join(map(str, c)))
def test_band_first_interpreter(case, defer):
    """``FwdConfig.band_first`` (no σ² pass: the band's tiles first with their band entries only, σ² from their own
    two products, then the entries outside the band grouped and corrected), with per-tile and deferred σ² sums,
    against the reference and the table's config, with and without tensor masks, causal with N != M, both grouped
    paths, σ² by one dot; grouped entries left uncorrected, or left out, would show."""
    _window_option_vs_plain(case, {}, dict(band_first=True, sigma2_deferred_sums=defer), 1e-5)


def test_band_first_switch(monkeypatch):
    """DISTR_FWD_BAND_FIRST reaches the table; the table keeps the σ² pass (band_first off)."""
    from distr_patch.ops import configs

    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).band_first is False
    monkeypatch.setattr(configs, "DEFAULT_FWD_BAND_FIRST", True)
    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).band_first is True


def test_sigma2_deferred_sums_switch(monkeypatch):
    """DISTR_FWD_SIGMA2_DEFERRED reaches the table; the table sums σ² once after the pass (faster on the H100)
    without a tensor mask, per tile with one (fewer spills)."""
    from distr_patch.ops import configs

    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).sigma2_deferred_sums is True
    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False, masked=True).sigma2_deferred_sums is False
    monkeypatch.setattr(configs, "DEFAULT_FWD_SIGMA2_DEFER", False)
    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).sigma2_deferred_sums is False


def test_band_exact_tiles_switch(monkeypatch):
    """DISTR_FWD_BAND_EXACT_TILES reaches the table (0/1; other values a named error); the table's choice."""
    from distr_patch.ops import configs

    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).band_exact_tiles is False
    monkeypatch.setattr(configs, "DEFAULT_FWD_BAND_EXACT", True)
    assert configs.fwd_config(64, 2, 128, exact_window=128, interpret=False).band_exact_tiles is True
    monkeypatch.setenv("DISTR_FWD_BAND_EXACT_TILES", "yes")
    with pytest.raises(ValueError, match="DISTR_FWD_BAND_EXACT_TILES must be 0 or 1"):
        configs._env_flag("DISTR_FWD_BAND_EXACT_TILES", None)


OPTION_GPU_CASES = [(64, 1, "mean", 0, True), (64, 2, "mean", 0, False), (64, 2, "rank1", 0, True),
                    (128, 2, "rank1", 0, True), (64, 2, "rank1", 128, True), (128, 4, "mean", 0, False)]


def _gpu_option_case(seed, d, G, fusion, W, causal):
    """(q, k, v, ``_triton_forward``'s keyword arguments, the table's FwdConfig) of a GPU test of one kernel option:
    bf16, B=2, 8 query heads on 2 KV heads, N = M = 3000 (a tail), block_m=128, c=0.5 with a window."""
    from distr_patch.ops.configs import fwd_config

    q, k, v = make_qkv(seed, 2, 8, 2, 3000, 3000, d, dtype=torch.bfloat16, device="cuda")
    kw = dict(group_size=G, block_m=128, fusion=fusion, exact_window=W, window_correction=0.5 if W else 0.0,
              causal=causal, attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    return q, k, v, kw, fwd_config(d, G, 128, exact_window=W)


def _same_call_with_option_gpu(q, k, v, kw, base, option: dict, max_vs_plain: float):
    """The call with ``base`` changed by ``option`` (FwdConfig fields) against the reference (1e-2) and against
    ``base``'s own output (``max_vs_plain``: the option's other rounding) and lse (1e-3)."""
    from distr_patch.ops.distr_attn import _triton_forward

    plain, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    out, lse = _triton_forward(q, k, v, config=replace(base, **option), return_lse=True, **kw)[:2]
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    assert rel_err(out, plain) <= max_vs_plain, rel_err(out, plain)
    assert torch.allclose(lse, plain_lse, atol=1e-3, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("share", [2, 4])
@pytest.mark.parametrize("d,G,fusion,W,causal", OPTION_GPU_CASES)
def test_exp_fma_gpu(d, G, fusion, W, causal, share):
    """FwdConfig.exp_fma at real sizes, bf16, a tail and GQA: within 1e-2 of the reference and within 2e-3 of the
    MUFU's output (bf16 rounding of P dominates the polynomial's 7.5e-5)."""
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, base = _gpu_option_case(d + G + W + share, d, G, fusion, W, causal)
    plain = _triton_forward(q, k, v, config=base, **kw)
    out = _triton_forward(q, k, v, config=replace(base, exp_fma=share), **kw)
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    assert 0 < rel_err(out, plain) <= 2e-3, rel_err(out, plain)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("slack", [0.5, 8.0])
@pytest.mark.parametrize("d,G,fusion,W,causal", OPTION_GPU_CASES)
def test_rescale_slack_gpu(d, G, fusion, W, causal, slack):
    """FwdConfig.rescale_slack at real sizes, bf16, a tail, GQA and late keys that move the rows' max mid-loop:
    within 1e-2 of the reference, within 2e-3 of the plain kernel's output (at slack 8 not equal to it: P rounded
    on another scale) and its lse within 1e-3."""
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v, kw, base = _gpu_option_case(d + G + W + int(slack), d, G, fusion, W, causal)
    k[:, :, 2500:2503] *= 6.0
    plain, plain_lse = _triton_forward(q, k, v, config=base, return_lse=True, **kw)[:2]
    out, lse = _triton_forward(q, k, v, config=replace(base, rescale_slack=slack), return_lse=True, **kw)[:2]
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    assert rel_err(out, plain) <= 2e-3 and (slack < 8 or rel_err(out, plain) > 0), rel_err(out, plain)
    assert torch.allclose(lse, plain_lse, atol=1e-3, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d,G,fusion,W,causal", [(64, 2, "rank1", 128, True), (64, 2, "rank1", 128, False),
                                                 (128, 2, "mean", 128, False), (128, 2, "rank1", 128, True),
                                                 (64, 4, "rank1", 200, False)])
def test_band_exact_tiles_gpu(d, G, fusion, W, causal):
    """FwdConfig.band_exact_tiles at real sizes, bf16, a tail and GQA: within 1e-2 of the reference, within 2e-3 of
    the plain kernel's output (the exact-only tiles are wider than the band's sub-tiles: other rounding) and its lse
    within 1e-3."""
    q, k, v, kw, base = _gpu_option_case(d + G + W, d, G, fusion, W, causal)
    _same_call_with_option_gpu(q, k, v, kw, base, dict(band_exact_tiles=True), 2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize("d,G,fusion,W,causal", [(64, 2, "rank1", 128, True), (64, 2, "mean", 128, False),
                                                 (128, 2, "rank1", 128, False), (128, 2, "rank1", 128, True)])
def test_sigma2_deferred_sums_gpu(d, G, fusion, W, causal, mask_kind):
    """FwdConfig.sigma2_deferred_sums at real sizes, bf16, a tail and GQA, with and without a padding mask: within
    1e-2 of the reference, within 1e-3 of the per-tile sums' output (σ² summed in another order) and its lse."""
    q, k, v, kw, base = _gpu_option_case(d + G + W + 7, d, G, fusion, W, causal)
    kw["attention_mask"] = make_mask(mask_kind, 2, 8, 3000, 3000, torch.Generator().manual_seed(d), "cuda")
    _same_call_with_option_gpu(q, k, v, kw, replace(base, sigma2_deferred_sums=False), dict(sigma2_deferred_sums=True),
                               1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "pad"])
@pytest.mark.parametrize("d,G,fusion,W,causal", [(64, 2, "rank1", 128, True), (64, 2, "mean", 128, False),
                                                 (128, 2, "rank1", 128, False), (128, 2, "rank1", 128, True)])
def test_band_first_gpu(d, G, fusion, W, causal, mask_kind, defer):
    """FwdConfig.band_first at real sizes, bf16, a tail and GQA, with and without a padding mask and deferred σ²
    sums: within 1e-2 of the reference, within 2e-3 of the plain kernel's output (P rounded to bf16 before the
    grouped part's factor) and its lse."""
    q, k, v, kw, base = _gpu_option_case(d + G + W + 11, d, G, fusion, W, causal)
    kw["attention_mask"] = make_mask(mask_kind, 2, 8, 3000, 3000, torch.Generator().manual_seed(d), "cuda")
    _same_call_with_option_gpu(q, k, v, kw, base, dict(band_first=True, sigma2_deferred_sums=defer), 2e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d,G,W", [(64, 1, 0), (128, 1, 0), (64, 2, 0), (128, 2, 0), (64, 2, 128), (128, 2, 128)])
def test_tile_orders_gpu(d, G, W):
    """FwdConfig.tile_order at real sizes, bf16, causal with a tail and GQA: every order gives the natural order's
    output and lse bit for bit, within 1e-2 of the reference."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(d + G + W, 2, 8, 2, 3000, 3000, d, dtype=torch.bfloat16, device="cuda")
    kw = dict(group_size=G, block_m=128, fusion="rank1", exact_window=W, window_correction=0.5 if W else 0.0,
              causal=True, attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    base = fwd_config(d, G, 128, exact_window=W)
    outs = [_triton_forward(q, k, v, config=replace(base, tile_order=o), return_lse=True, **kw)[:2]
            for o in ("natural", "reversed", "heavy_first", "auto")]
    for other in outs[1:]:
        assert torch.equal(outs[0][0], other[0]) and torch.equal(outs[0][1], other[1])
    ref = reference_distr_attention(q, k, v, **{n: kw[n] for n in kw if n != "groups"})
    assert rel_err(outs[2][0], ref) <= 1e-2, rel_err(outs[2][0], ref)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernel_matches_reference_gpu(case, dtype, grouped_qk):
    B, Hq, Hkv, N, M, d, G, fusion, block_m, W, c, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d, dtype=dtype, device="cuda")
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), "cuda")
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, exact_window=W, window_correction=c, causal=causal,
              attention_mask=mask)
    poison = torch.full_like(q, float("nan"))  # the caching allocator hands this block to the output
    del poison
    out = distr_attention(q, k, v, backend="triton", **kw)  # the fused kernel (auto may take SDPA: DISTR_AUTO_SDPA)
    ref = reference_distr_attention(q, k, v, **kw)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    if G == 1:
        allowed = torch.ones(N, M, dtype=torch.bool, device="cuda").tril(M - N) if causal else None
        attn = allowed
        if mask is not None and mask.dtype == torch.bool:
            attn = mask if allowed is None else mask & allowed
        elif mask is not None:  # additive
            attn = mask if allowed is None else mask.masked_fill(~allowed, float("-inf"))
        exact = torch.nn.functional.scaled_dot_product_attention(
            q.float(), k.float().repeat_interleave(Hq // Hkv, 1), v.float().repeat_interleave(Hq // Hkv, 1),
            attn_mask=attn)
        assert rel_err(out, exact) <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d,fusion,W,G", [(64, "rank1", 32, 2), (64, "mean", 0, 2), (128, "rank1", 0, 2),
                                          (32, "rank1", 0, 2), (128, "rank1", 0, 4)])
def test_fp32_gpu(d, fusion, W, G, grouped_qk):
    """fp32 is computed in fp32 on every path (Q_eff prologue and TMA tiles included: no tf32 products); G=4 rank1 at
    d=128 takes the grouping's Grams by dot (``grouping_triton.power_grams``)."""
    q, k, v = make_qkv(5 + d, 1, 4, 2, 1000, 1000, d, dtype=torch.float32, device="cuda")
    kw = dict(group_size=G, block_m=64, fusion=fusion, exact_window=W, window_correction=0.5, causal=True)
    assert rel_err(distr_attention(q, k, v, backend="triton", **kw), reference_distr_attention(q, k, v, **kw)) < 1e-4



@interpreter_only
def test_transpose_keys_interpreter():
    from distr_patch.ops.distr_attn import transpose_keys

    k = torch.randn(2, 70, 3, 80).transpose(1, 2)  # non-contiguous, tail keys, padded head dim
    assert torch.equal(transpose_keys(k), k.transpose(-1, -2).contiguous())


@pytest.mark.parametrize("version,release", [("3.6.0", (3, 6)), ("3.9.0", (3, 9)), ("3.10.0rc1", (3, 10)),
                                              ("3.11.0+git1234abc", (3, 11))])
def test_triton_release_parses_the_version(monkeypatch, version, release):
    from distr_patch.ops import configs

    monkeypatch.setattr(triton, "__version__", version)
    assert configs._triton_release() == release


def test_prologue_at_d64_follows_the_sm90_ptxas():
    """The d=64 Q_eff prologue is the default where the sm_90 ptxas does not serialise its wgmma: below 13.3 (CPU
    compiles: 12.8, 12.9, 13.1 clean; 13.3, 13.4 C7513); where the ptxas is unknown, below Triton 3.9."""
    from distr_patch.ops.configs import prologue_at_d64_rule as rule

    assert [rule(p, (3, 9)) for p in ((12, 8), (12, 9), (13, 1), (13, 2), (13, 3), (13, 4), (14, 0))] == \
        [True, True, True, True, False, False, False]
    assert rule(None, (3, 6)) and rule(None, (3, 8)) and not rule(None, (3, 9)) and not rule(None, (3, 10))
    assert rule((12, 9), (3, 10)) and not rule((13, 4), (3, 6))  # the ptxas decides where it is known


def test_sm90_ptxas_release_is_the_one_triton_compiles_with(monkeypatch):
    """Triton's own choice for sm_90, and TRITON_PTXAS_BLACKWELL_PATH / TRITON_PTXAS_PATH followed (3.9 takes its
    CUDA 13 'ptxas-blackwell' for sm_90; earlier releases their 12.x 'ptxas')."""
    import subprocess
    from pathlib import Path

    from distr_patch.ops import configs

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "ptxas").exists():
        pytest.skip("this Triton ships no ptxas")

    def release(path):
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
        major, minor = out.split("release ")[1].split(",")[0].split(".")
        return int(major), int(minor)

    configs.sm90_ptxas_release.cache_clear()
    monkeypatch.setattr(configs, "QEFF_PROLOGUE_AT_D64", None)
    try:
        with monkeypatch.context() as mp:  # in a trace before any eager call: no ptxas query, the release's rule
            mp.setattr(torch.compiler, "is_compiling", lambda: True)
            assert configs.qeff_prologue_at_d64() == (configs._triton_release() < (3, 9))
            assert configs.QEFF_PROLOGUE_AT_D64 is None and configs.sm90_ptxas_release.cache_info().currsize == 0
        assert configs.qeff_prologue_at_d64() == (configs.sm90_ptxas_release() < (13, 3))  # eager: the ptxas
        assert configs.QEFF_PROLOGUE_AT_D64 is not None
        got = configs.sm90_ptxas_release()
        expected = "ptxas-blackwell" if configs._triton_release() >= (3, 9) else "ptxas"
        assert got == release(bin_dir / expected)
        for env in ("TRITON_PTXAS_BLACKWELL_PATH", "TRITON_PTXAS_PATH"):  # the legacy ptxas, as a user may set it
            monkeypatch.setenv(env, str(bin_dir / "ptxas"))
        configs.sm90_ptxas_release.cache_clear()
        assert configs.sm90_ptxas_release() == release(bin_dir / "ptxas") < (13, 0)
    finally:
        configs.sm90_ptxas_release.cache_clear()


def test_fwd_config_table(monkeypatch):
    """The GPU table: expanded tiles for any grouping block_m, fp32 halves the key tiles (shared memory),
    a window's band sub-tiles divide the key tile, and an unknown grouped_qk is refused."""
    from distr_patch.ops import configs
    from distr_patch.ops.configs import fwd_config

    for d in (32, 64, 80, 128, 256):
        for bm in (32, 64, 128):
            for W in (0, 128):
                for fp32 in (False, True):
                    cfg = fwd_config(d, 2, bm, exact_window=W, interpret=False, grouped_qk="expanded", fp32=fp32)
                    assert cfg.block_m == 128 and cfg.grouped_qk == "expanded" and not cfg.fused_grouping
                    band = cfg.band_block_n or cfg.block_n
                    assert cfg.block_n % band == 0 and band >= 16
                    red = fwd_config(d, 2, bm, exact_window=W, interpret=False, grouped_qk="reduced", fp32=fp32)
                    assert red.block_m == bm and red.block_n % (red.band_block_n or red.block_n) == 0
    assert fwd_config(64, 2, 128, interpret=False, fp32=True).block_n == \
        fwd_config(64, 2, 128, interpret=False).block_n // 2
    # the measured choices: Q_eff in the prologue (with a window at d=64 under a 128-register cap; d=32 with a
    # window keeps the regroup launch); TMA at d<=64 without a window (and for exact attention at d<=64); the
    # reduced path never forms Q_eff
    monkeypatch.setattr(configs, "QEFF_PROLOGUE_AT_D64", True)  # a ptxas that does not serialise the prologue
    pick = {(d, W): fwd_config(d, 2, 128, exact_window=W, interpret=False, grouped_qk="expanded")
            for d in (32, 64, 128) for W in (0, 128)}
    assert [pick[k].qeff_prologue for k in sorted(pick)] == [True, False, True, True, False, True]
    # ptxas >= 13.3 (Triton 3.9's) serialises the d=64 prologue's wgmma: Q_eff by the regroup launch there (G=2 and
    # 4, window or not; the interpreter keeps the prologue, so CI still runs its source); d=32 and d=128 as they were
    monkeypatch.setattr(configs, "QEFF_PROLOGUE_AT_D64", False)
    expected = {2: [True, False, False, False, False, True], 4: [True, False, False, False, True, True]}
    new = {G: {(d, W): fwd_config(d, G, 128, exact_window=W, interpret=False, grouped_qk="expanded")
               for d in (32, 64, 128) for W in (0, 128)} for G in (2, 4)}
    for G in (2, 4):
        assert [new[G][k].qeff_prologue for k in sorted(pick)] == expected[G]
        assert fwd_config(64, G, 128, interpret=True, grouped_qk="expanded").qeff_prologue
    assert all(replace(new[2][k], qeff_prologue=False) == replace(pick[k], qeff_prologue=False)
               for k in pick)  # nothing else changes
    monkeypatch.setattr(configs, "QEFF_PROLOGUE_AT_D64", None)  # the installed ptxas decides
    assert fwd_config(64, 2, 128, interpret=False, grouped_qk="expanded").qeff_prologue == \
        configs.qeff_prologue_at_d64() == (configs.sm90_ptxas_release() < (13, 3))
    assert fwd_config(64, 2, 128, interpret=True, grouped_qk="expanded").qeff_prologue
    # ... except at 64 < d <= 128, G=2, no window: Q_eff by one launch before the kernel
    assert fwd_config(80, 2, 128, interpret=False, grouped_qk="expanded").qeff_prologue is False
    assert fwd_config(128, 4, 128, interpret=False, grouped_qk="expanded").qeff_prologue
    assert [pick[k].kv_tma for k in sorted(pick)] == [True, False, True, False, False, False]
    assert [pick[k].maxnreg for k in sorted(pick)] == [None, None, None, 128, None, None]
    assert fwd_config(64, 2, 128, exact_window=128, interpret=True, grouped_qk="expanded").maxnreg is None
    assert fwd_config(64, 1, 128, interpret=False).kv_tma and not fwd_config(128, 1, 128, interpret=False).kv_tma
    assert not fwd_config(64, 2, 128, interpret=False, grouped_qk="reduced").qeff_prologue
    assert not fwd_config(256, 2, 128, interpret=False, grouped_qk="expanded").qeff_prologue
    # the softmax's form: one FMA per score for exact calls at d <= 64 (G=1 has no window), with a tensor mask or
    # without (a padded batch and its sequences alone must round alike)
    form = {(d, G, m, W): fwd_config(d, G, 128, exact_window=W, interpret=False, masked=m).scale_after_max
            for d in (32, 64, 128, 256) for G in (1, 2) for m in (False, True) for W in (0, 128)}
    assert sorted(k for k, on in form.items() if on) == [
        (d, 1, m, W) for d in (32, 64) for m in (False, True) for W in (0, 128)]
    with pytest.raises(ValueError, match="grouped_qk must be 'reduced' or 'expanded'"):
        fwd_config(64, 2, 128, grouped_qk="fast")
    with pytest.raises(ValueError, match="k_layout must be 'transposed' or 'natural'"):
        fwd_config(64, 2, 128, grouped_qk="reduced", k_layout="rows")


def test_misspelled_environment_choices_are_named_errors(monkeypatch):
    """DISTR_GROUPED_QK / DISTR_PAIR_WEIGHTS / DISTR_COLUMN_ORDER with an unknown value fail naming the variable,
    instead of silently running another path."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.grouping_triton import triton_grouping

    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_GROUPED_QK", "expand")
    with pytest.raises(ValueError, match="DISTR_GROUPED_QK must be 'reduced' or 'expanded', got 'expand'"):
        fwd_config(64, 2, 128)
    q = torch.randn(1, 1, 8, 32)
    kw = dict(group_size=2, block_m=32, num_hash_bits=16, seed=0, query_valid=None, fusion="rank1")
    monkeypatch.setattr("distr_patch.ops.grouping_triton.PAIR_WEIGHTS", "grams")
    with pytest.raises(ValueError, match="DISTR_PAIR_WEIGHTS"):
        triton_grouping(q, **kw)
    monkeypatch.setattr("distr_patch.ops.grouping_triton.PAIR_WEIGHTS", "gram")
    monkeypatch.setattr("distr_patch.ops.grouping_triton.COLUMN_ORDER", "sorted")
    with pytest.raises(ValueError, match="DISTR_COLUMN_ORDER"):
        triton_grouping(q, **kw)
    monkeypatch.setattr("distr_patch.ops.grouping_triton.COLUMN_ORDER", "rank")
    monkeypatch.setattr("distr_patch.ops.grouping_triton.POSITIONS", "kernels")
    with pytest.raises(ValueError, match="DISTR_GROUPING_POSITIONS"):
        triton_grouping(q, **kw)
    from distr_patch.ops.configs import _env_flag

    monkeypatch.setenv("DISTR_KV_TMA", "yes")
    with pytest.raises(ValueError, match="DISTR_KV_TMA must be 0 or 1, got 'yes'"):
        _env_flag("DISTR_KV_TMA", False)
    monkeypatch.setenv("DISTR_KV_TMA", "1")
    assert _env_flag("DISTR_KV_TMA", False)


@interpreter_only
def test_misspelled_qeff_launch_is_a_named_error(monkeypatch):
    """DISTR_FWD_QEFF_LAUNCH with an unknown value fails naming the variable."""
    q, k, v = make_qkv(5, 1, 2, 2, 40, 40, 32)
    monkeypatch.setattr("distr_patch.ops.configs.DEFAULT_QEFF_PROLOGUE", False)
    monkeypatch.setattr("distr_patch.ops.distr_attn.QEFF_LAUNCH", "1")
    with pytest.raises(ValueError, match=r"DISTR_FWD_QEFF_LAUNCH\) must be 'one' or 'two', got '1'"):
        distr_attention(q, k, v, group_size=2, block_m=32, backend="triton")


@interpreter_only
def test_kv_descriptors_fall_back_on_unaligned_strides():
    """TMA descriptors apply to 16-byte aligned strides with a unit stride along d; otherwise the kernel takes
    pointer loads (None), and the output is the same either way."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward, kv_descriptors

    q, k, v = make_qkv(3, 1, 2, 2, 70, 70, 32)
    assert kv_descriptors(k, v, 32, 32) is not None
    k_odd = torch.randn(1, 2, 70, 33)[..., :32]  # row stride 33 floats: not 16-byte aligned
    assert kv_descriptors(k_odd, v, 32, 32) is None
    assert kv_descriptors(k.transpose(-1, -2).contiguous().transpose(-1, -2), v, 32, 32) is None  # stride(d) != 1
    assert kv_descriptors(k[:, :1].expand(1, 2, 70, 32), v, 32, 32) is None  # broadcast heads: stride 0
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=0, window_correction=0.0, causal=True,
              attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    cfg = replace(fwd_config(32, 2, 32, grouped_qk="expanded"), kv_tma=True, qeff_prologue=True)
    k_odd.copy_(k)
    out_tma = _triton_forward(q, k, v, config=cfg, **kw)
    out_ptr = _triton_forward(q, k_odd, v, config=cfg, **kw)
    assert torch.equal(out_tma, out_ptr)
    assert rel_err(out_tma, reference_distr_attention(q, k, v, **kw)) < 1e-5


@interpreter_only
def test_register_cap_is_a_launch_option():
    """FwdConfig.maxnreg reaches the launch (a compiler option: the interpreter accepts and ignores it) and
    leaves the function unchanged."""
    from distr_patch.ops.configs import fwd_config
    from distr_patch.ops.distr_attn import _triton_forward

    q, k, v = make_qkv(11, 1, 2, 1, 70, 90, 64)
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=16, window_correction=0.5, causal=True,
              attention_mask=None, scale=None, num_hash_bits=16, seed=0, query_valid=None, groups=None)
    cfg = replace(fwd_config(64, 2, 32, exact_window=16), maxnreg=128, qeff_prologue=True)
    assert rel_err(_triton_forward(q, k, v, config=cfg, **kw), reference_distr_attention(q, k, v, **kw)) < 1e-5
    with pytest.raises(ValueError, match=r"config.maxnreg must be None or in \[24, 255\]"):
        _triton_forward(q, k, v, config=replace(cfg, maxnreg=512), **kw)


def test_triton_backend_on_cpu_without_the_interpreter_is_a_named_error(monkeypatch):
    """backend="triton" with CPU tensors and no TRITON_INTERPRET: a ValueError that says what to set, not a Triton
    crash (the same check serves the torch.compile path, ``validate.check_triton_inputs``)."""
    q, k, v = make_qkv(5, 1, 2, 2, 40, 40, 32)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' on CPU tensors needs TRITON_INTERPRET=1"):
        distr_attention(q, k, v, group_size=2, block_m=32, backend="triton")


# (backend, G, fusion, block_m, W, c, causal, mask_kind, backward): each path a call can take on the CPU
UNTOUCHED_CASES = [
    ("reference", 2, "rank1", 64, 16, 0.5, True, "float", True),
    ("triton", 2, "rank1", 64, 0, 0.0, True, "float", True),
    ("triton", 4, "mean", 32, 16, 0.5, False, "pad", True),
    ("triton", 1, "mean", 64, 0, 0.0, False, "pad", False),
    ("sdpa", 2, "rank1", 64, 0, 0.0, True, None, True),
    ("sdpa", 2, "mean", 64, 16, 0.5, True, None, False),  # the window's pieces and band kernel
]


@interpreter_only
@pytest.mark.parametrize("case", UNTOUCHED_CASES, ids=lambda c: "-".join(map(str, c)))
def test_inputs_are_left_untouched_interpreter(case):
    """No path writes into its inputs: q, k, v (GQA, q a transposed view as transformers passes it), the mask,
    query_valid and precomputed groups are bit-equal after the forward and the backward. (A peer that did this,
    SageAttention 1.0.6 centring K in place, skewed the bench's errors of every variant timed after it.)"""
    backend, G, fusion, block_m, W, c, causal, mask_kind, backward = case
    B, Hq, Hkv, N, d = 2, 4, 2, 96, 32
    gen = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    q = heavy_tailed((B, N, Hq, d), gen, torch.float32, "cpu").transpose(1, 2)  # [B, Hq, N, d], not contiguous
    k = heavy_tailed((B, Hkv, N, d), gen, torch.float32, "cpu")
    v = heavy_tailed((B, Hkv, N, d), gen, torch.float32, "cpu")
    mask = make_mask(mask_kind, B, Hq, N, N, gen, "cpu")
    valid = mask[:, 0, -1, :].clone() if mask_kind == "pad" else None  # padded keys are padded queries too
    groups = compute_groups(q, group_size=G, block_m=block_m, num_hash_bits=16, seed=3, query_valid=valid) \
        if backend != "sdpa" else None
    inputs = dict(q=q, k=k, v=v, attention_mask=mask, query_valid=valid, groups=groups)
    before = {name: t.clone() for name, t in inputs.items() if t is not None}
    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)
    out = distr_attention(q, k, v, group_size=G, fusion=fusion, block_m=block_m, exact_window=W,
                          window_correction=c, causal=causal, attention_mask=mask, query_valid=valid, groups=groups,
                          backend=backend)
    if backward:
        out.backward(torch.randn(out.shape, generator=gen))
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.isfinite(out).all()
    for name, t in before.items():
        assert torch.equal(inputs[name].detach(), t), f"{backend} wrote into {name}"


@pytest.mark.parametrize("W", [70, 2**31 - 1, 2**31, 2**63 - 1, 10**20])
@pytest.mark.parametrize("causal", [True, False])
def test_a_window_wider_than_the_sequence_is_exact_on_every_backend(W, causal):
    """Every score lies in a band of W >= max(N, M), so the call is exact attention whatever W: the operator narrows
    W to max(N, M) before the kernels, which add W to 32-bit indices (W near 2**31 overflowed them, and 10**20
    overflowed the reference's band). The reference, the fused kernel (interpreter) and the SDPA engine's pieces."""
    q, k, v = make_qkv(zlib.crc32(repr((W, causal)).encode()), 1, 2, 1, 40, 40, 32)
    exact = distr_attention(q, k, v, group_size=1, causal=causal, backend="reference")
    backends = ["reference", "sdpa"] + (["triton"] if INTERPRET else [])
    for backend in backends:
        with torch.no_grad():
            out = distr_attention(q, k, v, group_size=2, block_m=32, exact_window=W, window_correction=0.5,
                                  causal=causal, backend=backend)
        assert rel_err(out, exact) <= 1e-5, (backend, rel_err(out, exact))
