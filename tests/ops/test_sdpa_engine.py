"""backend="sdpa": Q_eff by our launches (or torch ops), then torch's SDPA, against the PyTorch reference.

On the CPU both ways of forming Q_eff run: the Triton grouping and regroup launches under the interpreter, and the
torch ops (TRITON_INTERPRET unset for the call). Inputs are fresh heavy-tailed random tensors, seeded per case;
masks include fully masked rows (which must give zeros, not SDPA's NaN or uniform rows).
"""
import zlib

import pytest
import torch

from distr_patch.ops import compute_groups, distr_attention, reference_distr_attention
from test_distr_attn import CUDA, INTERPRET, make_mask, make_qkv, rel_err

# (B, Hq, Hkv, N, M, d, G, fusion, block_m, causal, mask)
CASES = [
    (1, 2, 2, 64, 64, 32, 1, "mean", 64, True, None),
    (2, 2, 1, 77, 77, 64, 2, "mean", 32, False, None),             # tail block, MQA
    (1, 4, 2, 130, 130, 32, 2, "rank1", 64, True, None),           # GQA
    (2, 2, 2, 150, 150, 64, 2, "mean", 128, True, "pad"),          # padding mask and causal
    (1, 2, 1, 60, 140, 32, 2, "rank1", 32, True, None),            # N < M: bottom-right causal
    (1, 2, 2, 140, 60, 32, 2, "mean", 64, True, None),             # N > M: leading rows fully masked
    (2, 4, 1, 96, 96, 64, 4, "mean", 32, False, "float"),          # additive mask
    (1, 2, 2, 120, 120, 64, 4, "rank1", 64, True, "float"),
    (1, 2, 2, 90, 90, 80, 2, "rank1", 32, False, "pad"),           # d=80
]


def _case_inputs(case, dtype=torch.float32, device="cpu"):
    B, Hq, Hkv, N, M, d, G, fusion, block_m, causal, mask_kind = case
    seed = zlib.crc32(repr(case).encode())
    q, k, v = make_qkv(seed, B, Hq, Hkv, N, M, d, dtype=dtype, device=device)
    mask = make_mask(mask_kind, B, Hq, N, M, torch.Generator().manual_seed(seed + 1), device)
    if mask is not None:  # one query row with no key at all: zeros, like the reference
        mask = mask.clone()
        mask[:, :, 3] = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    kw = dict(group_size=G, block_m=block_m, fusion=fusion, causal=causal, attention_mask=mask)
    return q, k, v, kw


@pytest.fixture(params=["launches", "torch"])
def qeff_way(request, monkeypatch):
    """How Q_eff is formed on the CPU: the Triton launches (interpreter) or torch ops."""
    if request.param == "launches":
        if not INTERPRET:
            pytest.skip("CPU tensors through Triton need TRITON_INTERPRET=1")
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # read per call by configs.interpreting()
    return request.param


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_matches_reference(case, qeff_way):
    q, k, v, kw = _case_inputs(case)
    out = distr_attention(q, k, v, backend="sdpa", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5, rel_err(out, ref)
    if kw["attention_mask"] is not None:
        assert out[:, :, 3].abs().max() == 0  # the row with no allowed key
    if kw["causal"] and q.shape[2] > k.shape[2]:  # rows before the first key: zeros
        assert out[:, :, : q.shape[2] - k.shape[2]].abs().max() == 0


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5], CASES[7]], ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_gradients_match_reference(case, qeff_way):
    """Gradients in q, k, v against autograd through the reference (fp64, so any mismatch is not rounding)."""
    q, k, v, kw = _case_inputs(case, dtype=torch.float64)
    if qeff_way == "launches":  # the regroup launch's dots: fp32 is the widest the kernels take
        q, k, v = (t.float() for t in (q, k, v))
    grads = []
    for fn in (lambda *x: distr_attention(*x, backend="sdpa", **kw), lambda *x: reference_distr_attention(*x, **kw)):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*x)
        gen = torch.Generator().manual_seed(7)
        torch.autograd.backward(out, torch.randn(out.shape, generator=gen, dtype=out.dtype))
        grads.append([t.grad for t in x])
    tol = 1e-5 if q.dtype == torch.float32 else 1e-9
    for name, a, b in zip("qkv", *grads):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))


def test_sdpa_backend_takes_precomputed_groups(qeff_way):
    from distr_patch.ops import compute_groups

    q, k, v, kw = _case_inputs(CASES[2])
    groups = compute_groups(q, group_size=2, block_m=kw["block_m"], seed=3)
    out = distr_attention(q, k, v, backend="sdpa", groups=groups, **kw)
    ref = reference_distr_attention(q, k, v, groups=groups, **kw)
    assert rel_err(out, ref) <= 1e-5


# (B, Hq, Hkv, N, d, G, fusion, block_m, causal, W, c)
WINDOW_CASES = [
    (1, 2, 2, 200, 32, 2, "rank1", 64, True, 64, 0.5),
    (2, 4, 2, 150, 64, 2, "mean", 32, False, 32, 1.0),     # GQA, a tail tile, both sides of the band
    (1, 2, 1, 100, 32, 4, "rank1", 32, False, 128, 0.5),   # W >= N: the band is every key
    (1, 2, 2, 300, 64, 2, "rank1", 128, True, 128, 0.0),   # no correction
    (1, 2, 2, 129, 80, 2, "mean", 64, False, 1, 0.5),      # W = 1: the band is the diagonal; d=80
]


def _window_inputs(case, dtype=torch.float32, device="cpu"):
    B, Hq, Hkv, N, d, G, fusion, block_m, causal, W, c = case
    q, k, v = make_qkv(zlib.crc32(repr(case).encode()), B, Hq, Hkv, N, N, d, dtype=dtype, device=device)
    return q, k, v, dict(group_size=G, fusion=fusion, block_m=block_m, causal=causal, exact_window=W,
                         window_correction=c)


@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_window_matches_reference(case, qeff_way):
    """The exact window as pieces (grouped SDPA calls left and right of the band with their log-sum-exps, the exact
    band and the merge: the Triton kernel under the interpreter, torch ops otherwise) is the reference's function."""
    q, k, v, kw = _window_inputs(case)
    with torch.no_grad():
        out = distr_attention(q, k, v, backend="sdpa", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5, rel_err(out, ref)
    no_window = reference_distr_attention(q, k, v, **dict(kw, exact_window=0))
    assert rel_err(ref, no_window) > 1e-3  # the window changed the function, so the match above tests it


@pytest.mark.parametrize("case", [WINDOW_CASES[0], WINDOW_CASES[1]], ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_window_in_bf16(case, qeff_way):
    """bf16 windows on the CPU: the band kernel under the interpreter takes fp32 dot operands (the interpreter's
    bf16 dots are wrong, off by ~1e8 before the fix), the torch band merge its own; both within bf16 rounding of the
    reference on the same bf16 inputs."""
    q, k, v, kw = _window_inputs(case, dtype=torch.bfloat16)
    with torch.no_grad():
        out = distr_attention(q, k, v, backend="sdpa", **kw)
        ref = reference_distr_attention(q, k, v, **kw)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_err(out, ref) <= 2e-2, rel_err(out, ref)


def test_sdpa_backend_window_limits():
    """What the windowed pieces cannot do is named, with the way out; G = 1 ignores the window."""
    q, k, v, kw = _case_inputs(CASES[1])
    with pytest.raises(ValueError, match="exact_window=16 needs no gradient"):
        distr_attention(q.requires_grad_(), k, v, backend="sdpa", exact_window=16, **kw)
    q = q.detach()
    with torch.no_grad():
        with pytest.raises(ValueError, match="attention_mask must be None"):
            distr_attention(q, k, v, backend="sdpa", exact_window=16, **dict(kw, attention_mask=torch.ones(
                q.shape[2], k.shape[2], dtype=torch.bool)))
        with pytest.raises(ValueError, match=r"N == M \(got N=77, M=60\).*backend='triton'"):
            distr_attention(q, k[:, :, :60], v[:, :, :60], backend="sdpa", exact_window=16, **kw)
    exact = dict(kw, group_size=1)  # G = 1: every score is exact, so a window is no error, with grad too
    torch.testing.assert_close(distr_attention(q, k, v, backend="sdpa", exact_window=16, **exact),
                               reference_distr_attention(q, k, v, **exact), atol=1e-5, rtol=1e-5)
    if INTERPRET:  # Q_eff by the Triton launches: their head dims, named like the fused kernel's
        q48, k48, v48 = (t[..., :48] for t in (q, k, v))
        with pytest.raises(ValueError, match="head dim d=48"):
            distr_attention(q48, k48, v48, backend="sdpa", **kw)
    with pytest.raises(ValueError, match="backend must be one of"):
        distr_attention(q, k, v, backend="cudnn", **kw)


def test_auto_rule(monkeypatch):
    """With DISTR_AUTO_SDPA=1, backend="auto" on CUDA takes SDPA on Q_eff exactly where that is the whole call (no
    window, no mask tensor, aligned causal masks), the fused kernel elsewhere; by default the kernel everywhere."""
    from distr_patch.ops import configs

    rule = configs.auto_runs_sdpa
    assert configs.DEFAULT_AUTO_SDPA is False and not rule(2, 0, None, True, 512, 512)  # the default
    monkeypatch.setattr(configs, "DEFAULT_AUTO_SDPA", True)
    assert rule(2, 0, None, True, 512, 512) and rule(4, 0, None, False, 100, 300) and rule(1, 128, None, True, 64, 64)
    assert not rule(2, 128, None, True, 512, 512)  # the exact window
    assert not rule(2, 0, torch.ones(1, 1, 4, 4, dtype=torch.bool), False, 4, 4)  # a tensor mask
    assert not rule(2, 0, None, True, 100, 300)  # bottom-right causal with N != M (a KV-cache prefill)
    monkeypatch.setattr(configs, "DEFAULT_AUTO_SDPA", False)
    assert not rule(2, 0, None, True, 512, 512)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
def test_auto_dispatch_gpu(monkeypatch):
    """With DISTR_AUTO_SDPA=1, auto sends plain calls to the SDPA engine and window / masked calls to the fused
    kernel, with the same function as forcing either."""
    from distr_patch.ops import configs, sdpa_engine

    monkeypatch.setattr(configs, "DEFAULT_AUTO_SDPA", True)
    seen = []
    real = sdpa_engine.sdpa_distr_attention
    monkeypatch.setattr(sdpa_engine, "sdpa_distr_attention", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    q, k, v, _ = _case_inputs((1, 8, 2, 1000, 1000, 64, 2, "mean", 128, True, None), torch.bfloat16, "cuda")
    plain = dict(group_size=2, fusion="rank1", causal=True)
    out = distr_attention(q, k, v, **plain)
    assert len(seen) == 1
    assert rel_err(out, distr_attention(q, k, v, backend="triton", **plain)) <= 1e-2
    distr_attention(q, k, v, exact_window=64, window_correction=0.5, **plain)
    distr_attention(q, k, v, attention_mask=torch.ones(1000, 1000, dtype=torch.bool, device="cuda"), **plain)
    assert len(seen) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [
    (2, 8, 2, 4096, 4096, 64, 2, "mean", 128, True, None),
    (2, 8, 2, 4096, 4096, 128, 2, "rank1", 128, False, None),
    (1, 8, 8, 3000, 4100, 128, 2, "rank1", 32, True, "pad"),
    (1, 9, 3, 1000, 1000, 64, 4, "mean", 64, False, "float"),
], ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_gpu(case):
    """bf16 at real sizes: within 1e-2 of the fp32 reference and of the fused kernel; gradients within 2e-2."""
    q, k, v, kw = _case_inputs(case, dtype=torch.bfloat16, device="cuda")
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = distr_attention(*x, backend="sdpa", **kw)
    ref = reference_distr_attention(q, k, v, **kw)  # fp32 inside, on the same bf16 inputs
    fused = distr_attention(q, k, v, backend="triton", **kw)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    assert rel_err(out, fused) <= 1e-2, rel_err(out, fused)
    do = torch.randn_like(out)
    out.backward(do)
    xr = [t.clone().requires_grad_() for t in (q, k, v)]
    reference_distr_attention(*xr, **kw).backward(do)
    for name, a, b in zip("qkv", x, xr):
        assert rel_err(a.grad, b.grad) <= 2e-2, (name, rel_err(a.grad, b.grad))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("case", [
    (2, 8, 2, 4096, 64, 2, "rank1", 128, True, 128, 0.5),
    (1, 8, 8, 4096, 128, 2, "mean", 128, False, 128, 0.5),
    (1, 9, 3, 1000, 64, 2, "rank1", 32, False, 128, 1.0),
    (1, 4, 4, 100, 128, 2, "rank1", 128, True, 128, 0.5),   # N <= W: the band alone
], ids=lambda c: "-".join(map(str, c)))
def test_sdpa_backend_window_gpu(case):
    """The windowed pieces in bf16 at real sizes (PyTorch's exact kernels with log-sum-exps, our band kernel): within
    1e-2 of the fp32 reference and of the fused kernel."""
    q, k, v, kw = _window_inputs(case, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        out = distr_attention(q, k, v, backend="sdpa", **kw)
        fused = distr_attention(q, k, v, backend="triton", **kw)
    ref = reference_distr_attention(q, k, v, **kw)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-2, rel_err(out, ref)
    assert rel_err(out, fused) <= 1e-2, rel_err(out, fused)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
def test_sdpa_backend_window_fp32_gpu():
    """fp32 on CUDA: the exact kernel with a log-sum-exp is the memory-efficient one (cuDNN and flash refuse fp32)."""
    q, k, v, kw = _window_inputs((1, 8, 2, 1000, 64, 2, "rank1", 64, False, 128, 0.5), device="cuda")
    with torch.no_grad():
        out = distr_attention(q, k, v, backend="sdpa", **kw)
    assert rel_err(out, reference_distr_attention(q, k, v, **kw)) <= 1e-4


@pytest.mark.parametrize("way", ["cpu flash repeated kv", "math"])
def test_window_pieces_by_each_cpu_way(way, monkeypatch):
    """Each way of getting the grouped pieces' log-sum-exps on the CPU (PyTorch's CPU flash kernel, and the torch-ops
    last resort that CUDA falls back to as well) gives the reference's function."""
    from distr_patch.ops import sdpa_engine

    monkeypatch.setitem(sdpa_engine._LSE_WAYS, "cpu", (way,))
    monkeypatch.setattr(sdpa_engine, "_lse_way", {})
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, kw = _window_inputs(WINDOW_CASES[1])
    with torch.no_grad():
        out = distr_attention(q, k, v, backend="sdpa", **kw)
    assert rel_err(out, reference_distr_attention(q, k, v, **kw)) <= 1e-5
    assert sdpa_engine._lse_way == {("cpu", torch.float32, 64, True): way}


def _window_pieces(q, k, v, W: int, block_m: int, causal: bool):
    """The windowed engine's pieces for q, k, v (G=2 rank1): Q_eff, the grouped partials left and right of the band
    (right: None when causal) and band_merge's keywords (c=0.5)."""
    from distr_patch.ops.sdpa_engine import _attention_lse, query_effective

    scale = q.shape[-1] ** -0.5
    qe = query_effective(q, group_size=2, block_m=block_m, fusion="rank1", num_hash_bits=16, seed=0,
                         query_valid=None, groups=None)
    left = _attention_lse(qe[:, :, W:], k[:, :, :-W], v[:, :, :-W], causal=True, scale=scale)
    right = None if causal else _attention_lse(qe[:, :, :-W].flip(2), k[:, :, W:].flip(2), v[:, :, W:].flip(2),
                                               causal=True, scale=scale)
    return qe, left, right, dict(causal=causal, window=W, scale=scale, window_correction=0.5)


@pytest.mark.parametrize("W", [24, 48])
@pytest.mark.parametrize("causal", [True, False])
def test_band_merge_torch_blocks_and_kernel_agree(causal, W):
    """The torch band merge gives the same output whatever its query block (tails, blocks narrower than the band),
    and the Triton band kernel (interpreter) gives it too, on the same pieces, at the default tile and at tiles
    narrower than the band (16 keys; query tiles of 16 and 32 rows), with the σ² sums per key tile and deferred."""
    from distr_patch.ops.configs import BandConfig
    from distr_patch.ops.window_merge import band_merge, band_merge_torch

    q, k, v, kw = _window_inputs((1, 4, 2, 150, 32, 2, "rank1", 32, causal, W, 0.5))
    qe, left, right, bkw = _window_pieces(q, k, v, W, 32, causal)
    outs = [band_merge_torch(q, qe, k, v, left, right, block=b, **bkw) for b in (128, 16, 7)]
    if INTERPRET:  # the default tile and four others
        outs.append(band_merge(q, qe, k, v, left, right, **bkw))
        for cfg in (BandConfig(16, 32, 4, 1), BandConfig(32, 16, 4, 1), BandConfig(32, 16, 4, 1, deferred_sums=True),
                    BandConfig(16, 32, 4, 1, deferred_sums=True)):
            outs.append(band_merge(q, qe, k, v, left, right, config=cfg, **bkw))
    for o in outs[1:]:
        assert rel_err(o, outs[0]) <= 1e-6, rel_err(o, outs[0])
    with torch.no_grad():
        ref = reference_distr_attention(q, k, v, **kw)
    assert rel_err(outs[0], ref) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_band_deferred_sums_gpu(causal, d):
    """BandConfig.deferred_sums (σ² summed once after the band loop) on the GPU at a real size, bf16: the per-tile
    sums' output to rounding, and the reference's within 1e-2, at the table's tile."""
    from dataclasses import replace

    from distr_patch.ops.configs import band_config
    from distr_patch.ops.window_merge import band_merge

    q, k, v, kw = _window_inputs((2, 8, 2, 2000, d, 2, "rank1", 128, causal, 128, 0.5), dtype=torch.bfloat16,
                                 device="cuda")
    with torch.no_grad():
        qe, left, right, bkw = _window_pieces(q, k, v, 128, 128, causal)
        cfg = band_config(causal)
        per_tile = band_merge(q, qe, k, v, left, right, config=replace(cfg, deferred_sums=False), **bkw)
        deferred = band_merge(q, qe, k, v, left, right, config=replace(cfg, deferred_sums=True), **bkw)
    assert rel_err(deferred, per_tile) <= 2e-3, rel_err(deferred, per_tile)
    assert rel_err(deferred, reference_distr_attention(q, k, v, **kw)) <= 1e-2


def test_band_tiles_parsed_or_named():
    """DISTR_BAND_TILES / bench --tiles: four positive sizes; anything else is named."""
    from distr_patch.ops.configs import BandConfig, parse_band_tiles

    assert parse_band_tiles("64,32,4,2") == BandConfig(64, 32, 4, 2)
    assert parse_band_tiles(" 64, 64, 4, 3") == BandConfig(64, 64, 4, 3)
    for bad in ("64,32,4", "64,32,4,2,1", "64,x,4,2", "64,0,4,2", "64,-32,4,2"):
        with pytest.raises(ValueError, match="DISTR_BAND_TILES must be"):
            parse_band_tiles(bad, "DISTR_BAND_TILES")


def test_band_config_deferred_sums_switch(monkeypatch):
    """BandConfig.deferred_sums: off in the table; DISTR_BAND_SIGMA2_DEFERRED (configs.DEFAULT_BAND_DEFERRED) turns it
    on or off over the table's tiles and over DISTR_BAND_TILES's."""
    from distr_patch.ops import configs

    for causal in (True, False):
        assert not configs.band_config(causal, interpret=False).deferred_sums
    monkeypatch.setattr(configs, "DEFAULT_BAND_DEFERRED", True)
    assert configs.band_config(True, interpret=False) == configs.BandConfig(64, 32, 4, 2, deferred_sums=True)
    monkeypatch.setattr(configs, "_BAND_TILES_ENV", "32,16,4,1")
    assert configs.band_config(False) == configs.BandConfig(32, 16, 4, 1, deferred_sums=True)
    monkeypatch.setattr(configs, "DEFAULT_BAND_DEFERRED", False)
    assert not configs.band_config(False).deferred_sums


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_backend_additive_mask_beyond_the_query_dtype(dtype, qeff_way):
    """An fp32 additive mask with values fp16 cannot hold (-1e9: an additive value, not a masked key, by the mask
    convention; large biases that differ by a few units) gives the reference's softmax, not zeros; and the reference
    keeps the scores that fp32 would round away beside -1e9 (it equals its fp64 self)."""
    q, k, v = make_qkv(zlib.crc32(b"big additive"), 1, 2, 1, 40, 40, 32, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    mask = torch.randn(40, 40, generator=g)
    mask[0] = -1e9                                  # a row of one huge bias: uniform, as the reference
    mask[1, 4:] = -1e9                              # huge biases beside ordinary ones
    mask[2] = 1e6 + 3 * torch.randn(40, generator=g)  # huge values whose differences matter
    mask[3] = float("-inf")                         # a fully masked row: zeros
    for G in (1, 2):
        out = distr_attention(q, k, v, group_size=G, block_m=32, attention_mask=mask, backend="sdpa")
        ref = reference_distr_attention(q, k, v, group_size=G, block_m=32, attention_mask=mask)
        assert torch.isfinite(out).all()
        assert (out[:, :, 3] == 0).all()
        assert rel_err(out, ref) <= 1e-2, (G, rel_err(out, ref))
        assert (out - ref).abs().amax(-1)[..., :3].max() <= 2e-2
        groups = None if G == 1 else compute_groups(q, group_size=G, block_m=32)
        ref64 = reference_distr_attention(q.double(), k.double(), v.double(), group_size=G, block_m=32,
                                          attention_mask=mask.double(), groups=groups)
        assert rel_err(ref.float(), ref64.float()) <= 1e-2
        if qeff_way == "launches":  # the fused kernel too (the interpreter)
            triton = distr_attention(q, k, v, group_size=G, block_m=32, attention_mask=mask, backend="triton")
            assert rel_err(triton, ref) <= 1e-2
