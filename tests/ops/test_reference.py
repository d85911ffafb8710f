"""The PyTorch reference (the definition) against exact attention, and input validation."""
import pytest
import torch
import torch.nn.functional as F

from distr_patch.ops import distr_attention, exact_attention, reference_distr_attention


def qkv(seed, B=2, Hq=4, Hkv=2, N=70, M=70, d=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, N, d, generator=g, dtype=dtype), torch.randn(B, Hkv, M, d, generator=g, dtype=dtype),
            torch.randn(B, Hkv, M, d, generator=g, dtype=dtype))


def sdpa(q, k, v, mask=None, causal=False):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if causal:  # bottom-right aligned, as an explicit mask (SDPA's is_causal is top-left)
        N, M = q.shape[2], k.shape[2]
        cm = torch.ones(N, M, dtype=torch.bool).tril(M - N)
        mask = cm if mask is None else (mask & cm)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N,M", [(70, 70), (30, 90)])
def test_group_size_one_equals_sdpa(causal, N, M):
    q, k, v = qkv(0, N=N, M=M)
    out = distr_attention(q, k, v, group_size=1, causal=causal)
    assert torch.allclose(out, sdpa(q, k, v, causal=causal), atol=1e-5)


def test_padding_mask_and_fully_masked_rows():
    q, k, v = qkv(1)
    mask = torch.ones(2, 1, 70, 70, dtype=torch.bool)
    mask[0, :, :, 50:] = False
    mask[1, :, 10] = False  # row 10 of batch 1 sees nothing
    out = exact_attention(q, k, v, attention_mask=mask)
    ref = sdpa(q, k, v, mask=mask)
    keep = torch.ones(2, 1, 70, 1, dtype=torch.bool)
    keep[1, :, 10] = False
    assert torch.allclose(out * keep, ref.nan_to_num() * keep, atol=1e-5)
    assert torch.all(out[1, :, 10] == 0)


def test_additive_float_mask_uses_finfo_min_as_masked():
    q, k, v = qkv(2)
    bias = torch.randn(1, 1, 70, 70) * 0.3
    allowed = torch.rand(1, 1, 70, 70, generator=torch.Generator().manual_seed(0)) > 0.2
    float_mask = torch.where(allowed, bias, torch.tensor(torch.finfo(torch.float32).min))
    out = exact_attention(q, k, v, attention_mask=float_mask)
    ref = sdpa(q, k, v, mask=torch.where(allowed, bias, torch.tensor(float("-inf"))))
    assert torch.allclose(out, ref, atol=1e-5)


def test_grouping_changes_scores_and_window_restores_them():
    q, k, v = qkv(3, N=64, M=64)
    exact = exact_attention(q, k, v, causal=True)
    grouped = distr_attention(q, k, v, group_size=2, causal=True, block_m=32)
    assert (grouped - exact).abs().max() > 1e-2
    # a window that covers every causal key makes every score exact, whatever the correction
    full = distr_attention(q, k, v, group_size=2, causal=True, block_m=32, exact_window=64, window_correction=1.0)
    assert torch.allclose(full, exact, atol=1e-5)


def test_window_correction_lowers_only_grouped_scores():
    """With the band covering all but far keys, the correction shifts exactly those scores."""
    q, k, v = qkv(4, B=1, Hq=1, Hkv=1, N=40, M=40)
    kw = dict(group_size=2, block_m=32, fusion="rank1", exact_window=8)
    plain = reference_distr_attention(q, k, v, **kw)
    corrected = reference_distr_attention(q, k, v, window_correction=1.0, **kw)
    assert not torch.allclose(plain, corrected)
    # c = 0 is the uncorrected window
    assert torch.equal(reference_distr_attention(q, k, v, window_correction=0.0, **kw), plain)


def test_reference_autograd_gradcheck():
    """float64 gradcheck with the grouping held fixed (it carries no gradient by definition)."""
    from distr_patch.ops import compute_groups

    q, k, v = (t.double().requires_grad_() for t in qkv(5, B=1, Hq=2, Hkv=1, N=24, M=24, d=16))
    groups = compute_groups(q.detach(), group_size=2, block_m=32)
    mask = torch.ones(1, 1, 24, 24, dtype=torch.bool)
    mask[..., 20:] = False

    def f(q, k, v):
        return reference_distr_attention(q, k, v, group_size=2, block_m=32, fusion="mean", exact_window=4,
                                         window_correction=0.5, causal=True, attention_mask=mask, groups=groups)
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


def test_dtype_preserved_and_gqa_matches_repeated_heads():
    q, k, v = qkv(6, dtype=torch.bfloat16)
    out = distr_attention(q, k, v, group_size=2, block_m=32)
    assert out.dtype == torch.bfloat16
    rep = distr_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), group_size=2, block_m=32)
    assert torch.equal(out, rep)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(group_size=3), ValueError, "group_size"),
    (dict(block_m=100), ValueError, "block_m"),
    (dict(fusion="median"), ValueError, "fusion"),
    (dict(exact_window=-1), ValueError, "exact_window"),
    (dict(window_correction=-0.5), ValueError, "window_correction"),
    (dict(seed="7"), ValueError, "seed must be an int"),
    (dict(seed=-1), ValueError, "seed must be an int"),
    (dict(seed=1.0), ValueError, "seed must be an int"),
    (dict(backend="cuda"), ValueError, "backend"),
    (dict(attention_mask=torch.ones(3, 1, 70, 70, dtype=torch.bool)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.ones(2, 1, 70, 70, dtype=torch.int64)), TypeError, "attention_mask"),
    (dict(query_valid=torch.ones(2, 70)), TypeError, "query_valid"),
    (dict(groups=torch.zeros(2, 4, 2, 32, dtype=torch.long)), ValueError, "groups"),
    (dict(groups=torch.full((2, 4, 1, 32), 32, dtype=torch.long), block_m=128), ValueError, "column indices"),
    # in range but not a permutation (column 0 twice, column 1 nowhere)
    (dict(groups=torch.arange(32).clamp(min=1).sub(1).expand(2, 4, 1, 32).contiguous(), block_m=128), ValueError,
     "permutation of 0..31"),
    (dict(window_correction=float("inf")), ValueError, "window_correction must be a finite float"),
    (dict(window_correction=1e300), ValueError, "window_correction must be a finite float"),  # inf in fp32
    (dict(scale=0.0), ValueError, "scale must be a positive finite float"),
    (dict(scale=-0.125), ValueError, "scale must be a positive finite float"),
    (dict(scale=float("nan")), ValueError, "scale must be a positive finite float"),
    (dict(scale=float("inf")), ValueError, "scale must be a positive finite float"),
    (dict(scale="0.1"), TypeError, "scale must be a float or None"),
    (dict(causal="False"), TypeError, "causal must be a bool"),
    (dict(causal=2), TypeError, "causal must be a bool"),
])
@pytest.mark.parametrize("backend", ["reference", "triton", "sdpa"])
def test_bad_arguments_raise_named_errors(kwargs, exc, match, backend):
    """Every backend checks the same arguments before it runs (triton / sdpa: under the interpreter)."""
    kwargs = {"backend": backend, **kwargs}
    q, k, v = qkv(7)
    with pytest.raises(exc, match=match):
        distr_attention(q, k, v, **kwargs)


def test_bad_tensors_raise_named_errors():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="q must be 4-D"):
        distr_attention(q[0], k, v)
    with pytest.raises(ValueError, match="head count"):
        distr_attention(q[:, :3], k, v)
    with pytest.raises(ValueError, match="head dim"):
        distr_attention(q, k[..., :16], v[..., :16])
    with pytest.raises(TypeError, match="share a dtype"):
        distr_attention(q, k.half(), v)
    with pytest.raises(TypeError, match="floating point"):
        distr_attention(q.long(), k, v)
    with pytest.raises(ValueError, match="k and v"):
        distr_attention(q, k, v[:, :, :50])
    with pytest.raises(ValueError, match="group_size=8 must divide"):
        distr_attention(*qkv(9, d=36), group_size=8)
    with pytest.raises(ValueError, match="empty input"):
        distr_attention(q[:, :0], k, v)  # no query head
    with pytest.raises(ValueError, match="empty input"):
        distr_attention(q[..., :0], k[..., :0], v[..., :0], group_size=1)  # d = 0


def test_compute_groups_triton_on_cpu_without_the_interpreter_is_a_named_error(monkeypatch):
    from distr_patch.ops import compute_groups

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' on CPU tensors needs TRITON_INTERPRET=1"):
        compute_groups(qkv(11)[0], group_size=2, block_m=32, backend="triton")


def test_triton_backend_rejects_unsupported_head_dim():
    q, k, v = qkv(10, d=48)
    with pytest.raises(ValueError, match="head dim d=48 is not supported by the Triton kernel"):
        distr_attention(q, k, v, backend="triton")
