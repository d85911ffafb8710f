"""The "distr" attention adapter against transformers' own SDPA adapter, and its registration."""
import inspect

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import (ALL_MASK_ATTENTION_FUNCTIONS, bidirectional_mask_function,
                                        causal_mask_function, sdpa_mask)

import distr_patch  # noqa: F401  (registers "distr")
from distr_patch import DistrConfig, distr_attention
from distr_patch.integrations import hf
from distr_patch.integrations.hf import ATTN_IMPLEMENTATION, distr_attention_forward, query_rows_valid


class _Attn(torch.nn.Module):
    """Stand-in for an attention module: what transformers' adapters read from it."""

    def __init__(self, settings, is_causal=True, n_rep=2):
        super().__init__()
        self.is_causal, self.num_key_value_groups, self._distr_settings = is_causal, n_rep, settings


G1 = DistrConfig.exact(exact_below=1).for_layer(None)
G2 = DistrConfig(exact_window=4, exact_below=1).for_layer(None)


def _qkv(B=2, Hq=4, Hkv=2, N=24, M=24, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, Hq, N, d, generator=g), torch.randn(B, Hkv, M, d, generator=g),
            torch.randn(B, Hkv, M, d, generator=g))


def _padding_mask(lengths, N, M, left=False, causal=True):
    """sdpa_mask for 2-D padding masks (True = real token): bool [B, 1, N, M]."""
    pad = torch.zeros(len(lengths), M, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left:
            pad[b, M - n:] = True
        else:
            pad[b, :n] = True
    fn = causal_mask_function if causal else bidirectional_mask_function
    # the query rows: (q_length, q_offset) in newer transformers, cache_position in 5.0 (pyproject's floor)
    rows = dict(q_length=N, q_offset=M - N) if "q_length" in inspect.signature(sdpa_mask).parameters \
        else dict(cache_position=torch.arange(M - N, M))
    return sdpa_mask(batch_size=len(lengths), kv_length=M, mask_function=fn, attention_mask=pad,
                     allow_is_causal_skip=False, **rows)


def test_registered_in_both_interfaces_under_a_neutral_name():
    assert AttentionInterface()[ATTN_IMPLEMENTATION] is distr_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS[ATTN_IMPLEMENTATION] is sdpa_mask
    assert "flash" not in ATTN_IMPLEMENTATION and "sdpa" not in ATTN_IMPLEMENTATION


@pytest.mark.parametrize("case", ["causal", "causal_prefix", "bidirectional", "right_pad", "left_pad",
                                  "bidirectional_pad", "static_cache_prefill", "kwarg_overrides_module"])
def test_g1_matches_transformers_sdpa(case):
    N, M = 24, 24
    mask, module_causal, kw = None, True, {}
    if case == "causal_prefix":  # prefill after a cached prefix: keys longer than queries, explicit mask
        M = 32
        mask = _padding_mask([32, 32], N, M)
    elif case == "bidirectional":
        module_causal = False
    elif case == "right_pad":
        mask = _padding_mask([24, 17], N, M)
    elif case == "left_pad":
        mask = _padding_mask([24, 17], N, M, left=True)
    elif case == "bidirectional_pad":
        module_causal, mask = False, _padding_mask([24, 17], N, M, causal=False)
    elif case == "static_cache_prefill":  # mask skipped, keys are the whole (unwritten) static cache
        M = 40
    elif case == "kwarg_overrides_module":  # 5.17's Dinov2 passes is_causal=False from the call
        kw = dict(is_causal=False)
    q, k, v = _qkv(N=N, M=M)
    ref, _ = sdpa_attention_forward(_Attn(G1, module_causal), q, k, v, mask, scaling=0.3, **kw)
    out, weights = distr_attention_forward(_Attn(G1, module_causal), q, k, v, mask, scaling=0.3, **kw)
    assert weights is None and out.shape == (2, N, 4, 16)
    if mask is not None:  # rows that see no key: transformers' SDPA gives NaN or junk, the operator zeros
        real = mask.any(-1)[:, 0, :, None, None].expand_as(out)
        out, ref = out[real], ref[real]
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_g2_differs_and_decode_falls_back_to_sdpa():
    q, k, v = _qkv(N=40, M=40)
    ref, _ = sdpa_attention_forward(_Attn(G1), q, k, v, None, scaling=0.25)
    out, _ = distr_attention_forward(_Attn(G2), q, k, v, None, scaling=0.25)
    assert torch.isfinite(out).all() and (out - ref).abs().max() > 1e-2
    q1 = q[:, :, -1:]  # one query row, as in a KV-cache decode step: exact (exact_below > 1)
    dec = DistrConfig(exact_window=4).for_layer(None)
    ref1, _ = sdpa_attention_forward(_Attn(G1), q1, k, v, None, scaling=0.25)
    out1, _ = distr_attention_forward(_Attn(dec), q1, k, v, None, scaling=0.25)
    assert torch.equal(out1, ref1)


def test_layers_kept_exact_use_sdpa(monkeypatch):
    called = []
    monkeypatch.setattr(hf, "distr_attention", lambda *a, **k: called.append(1))
    exact = DistrConfig(exact_layers=[0]).for_layer(0, 2)
    q, k, v = _qkv(N=40, M=40)
    out, _ = distr_attention_forward(_Attn(exact), q, k, v, None, scaling=0.25)
    ref, _ = sdpa_attention_forward(_Attn(exact), q, k, v, None, scaling=0.25)
    assert not called and torch.equal(out, ref)


def test_query_rows_valid():
    N = M = 6
    right = _padding_mask([6, 4], N, M)
    assert query_rows_valid(right, 2, N, M).tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    left = _padding_mask([6, 4], N, M, left=True)
    assert query_rows_valid(left, 2, N, M).tolist() == [[True] * 6, [False] * 2 + [True] * 4]
    bidir = _padding_mask([6, 4], N, M, causal=False)
    assert query_rows_valid(bidir, 2, N, M).tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    prefix = _padding_mask([9, 7], 6, 9)  # 3 cached tokens, then 6 queries; the second sequence ends at 7
    assert query_rows_valid(prefix, 2, 6, 9).tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    additive = torch.zeros(1, 1, N, M).masked_fill(~right[1:], torch.finfo(torch.float32).min)
    assert query_rows_valid(additive, 1, N, M).tolist() == [[True] * 4 + [False] * 2]
    # a static cache's unwritten tail: no row's own (bottom-right) key is allowed -> rows that see any key
    static = torch.zeros(1, 1, 4, 10, dtype=torch.bool)
    static[0, 0, :3, :3] = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    assert query_rows_valid(static, 1, 4, 10).tolist() == [[True, True, True, False]]


def test_attended_length_drops_only_a_tail_no_row_reaches():
    static = torch.zeros(2, 1, 4, 10, dtype=torch.bool)  # 3 cached + 4 new tokens in a 10-slot static cache
    static[:, 0] = torch.arange(10) <= torch.arange(3, 7)[:, None]
    static[1, 0, :, :2] = False  # left padding
    assert hf.attended_length(static, 4, 10) == 7
    right = _padding_mask([9, 7], 6, 9)  # a dynamic cache: rows end at the last key, padding rows see fewer
    assert hf.attended_length(right, 6, 9) == 9
    both_padded = _padding_mask([7, 6], 6, 9)  # every sequence ends in padding: the keys are still all in place
    assert hf.attended_length(both_padded, 6, 9) == 9
    assert hf.attended_length(torch.zeros(1, 1, 4, 10, dtype=torch.bool), 4, 10) == 10  # no row sees a key
    assert hf.attended_length(torch.ones(1, 1, 1, 10, dtype=torch.bool), 4, 10) == 10  # rows broadcast


def test_the_attended_end_of_masks_whose_rows_see_past_their_own_key():
    """A static cache (96 slots) holding 40 keys: a prefix-LM mask (the first 8 rows see each other both ways) on a
    causal call, and a bidirectional mask on a non-causal one. Reading the end off the row that reaches furthest
    past its own index put it at 47 and 79, and marked rows 1-39 as padding."""
    N, M = 40, 96
    prefix = torch.zeros(2, 1, N, M, dtype=torch.bool)
    prefix[..., :N] = torch.ones(N, N, dtype=torch.bool).tril()
    prefix[..., :8, :8] = True
    assert hf.attended_length(prefix, N, M) == N
    assert query_rows_valid(prefix, 2, N, M).all()
    bidir = torch.zeros(2, 1, N, M, dtype=torch.bool)
    bidir[..., :N] = True
    bidir[1, ..., 30:] = False  # the second sequence ends in 10 padding tokens (their keys are masked)
    assert hf.attended_length(bidir, N, M, causal=False) == N
    assert query_rows_valid(bidir, 2, N, M, causal=False).tolist() == [[True] * N, [True] * 30 + [False] * 10]
    # a causal continuation whose sequences all end in padding keeps its keys in place (as before)
    both_padded = _padding_mask([7, 6], 6, 9)
    assert hf.attended_length(both_padded, 6, 9) == 9


def test_attended_length_reads_a_mask_once_until_it_is_written(monkeypatch):
    """The layers of one forward share a mask: one host read for all of them, a new one after an in-place write."""
    reads = []
    real = hf._attended_end
    monkeypatch.setattr(hf, "_attended_end", lambda *a: reads.append(1) or real(*a))
    static = torch.zeros(1, 1, 4, 10, dtype=torch.bool)
    static[0, 0] = torch.arange(10) <= torch.arange(3, 7)[:, None]
    assert [hf.attended_length(static, 4, 10) for _ in range(3)] == [7, 7, 7] and len(reads) == 1
    assert hf.attended_length(static.clone(), 4, 10) == 7 and len(reads) == 2  # another tensor
    static[0, 0] = torch.arange(10) <= torch.arange(4, 8)[:, None]  # written in place (one token more): a new read
    assert hf.attended_length(static, 4, 10) == 8 and len(reads) == 3
    assert hf.attended_length(static[..., :9], 4, 9) == 8 and len(reads) == 4
    with torch.inference_mode():  # no version counter: read at every call, never a stale answer
        frozen = torch.arange(10) <= torch.arange(3, 7)[:, None]
        assert [hf.attended_length(frozen, 4, 10) for _ in range(2)] == [7, 7] and len(reads) == 6
        frozen[:] = torch.arange(10) <= torch.arange(4, 8)[:, None]
        assert hf.attended_length(frozen, 4, 10) == 8


def test_query_rows_are_read_once_per_mask_in_a_forward(monkeypatch):
    """Every layer of a forward gets the same mask: its valid query rows are computed once (each time an [N, M]
    pass) and reused, the same answer as computing them per layer; a new mask, an in-place write or an
    inference-mode mask computes them again."""
    calls = []
    real = hf.query_rows_valid
    monkeypatch.setattr(hf, "query_rows_valid", lambda *a: calls.append(a[1:]) or real(*a))
    q, k, v = _qkv(N=40, M=40)
    mask = _padding_mask([40, 29], 40, 40)
    outs = [distr_attention_forward(_Attn(G2), q, k, v, mask, scaling=0.25)[0] for _ in range(3)]  # three layers
    assert len(calls) == 1 and all(torch.equal(o, outs[0]) for o in outs[1:])
    monkeypatch.setattr(hf, "per_mask", lambda what, m, args, compute: compute())  # no memo: the same output
    assert torch.equal(distr_attention_forward(_Attn(G2), q, k, v, mask, scaling=0.25)[0], outs[0])
    monkeypatch.undo()
    monkeypatch.setattr(hf, "query_rows_valid", lambda *a: calls.append(a[1:]) or real(*a))
    calls.clear()
    distr_attention_forward(_Attn(G2), q, k, v, mask.clone(), scaling=0.25)  # another tensor
    mask[1] = _padding_mask([40, 33], 40, 40)[1]  # written in place: rows 29-32 are real now
    written = distr_attention_forward(_Attn(G2), q, k, v, mask, scaling=0.25)[0]
    assert len(calls) == 2
    fresh = distr_attention_forward(_Attn(G2), q, k, v, mask.clone(), scaling=0.25)[0]
    assert torch.equal(written, fresh) and not torch.equal(written, outs[0])
    with torch.inference_mode():
        frozen = _padding_mask([40, 29], 40, 40)
        for _ in range(2):
            distr_attention_forward(_Attn(G2), q, k, v, frozen, scaling=0.25)
    assert len(calls) == 5  # no version counter: computed at every call


def test_rotation_puts_the_attended_keys_last_and_keeps_the_function():
    """The traced way: the unattended tail moves in front (masked for every row); with the window, the operator on
    the rotated keys gives what it gives on the keys cut at the attended length."""
    static = torch.zeros(2, 1, 4, 10, dtype=torch.bool)  # 3 cached + 4 new tokens in a 10-slot static cache
    static[:, 0] = torch.arange(10) <= torch.arange(3, 7)[:, None]
    static[1, 0, :, :2] = False  # left padding
    q, k, v = _qkv(B=2, N=4, M=10)
    k2, v2, m2 = hf.rotate_to_attended_end(k, v, static, 4)
    assert torch.equal(k2[:, :, 3:], k[:, :, :7]) and torch.equal(v2[:, :, :3], v[:, :, 7:])
    assert torch.equal(m2[..., 3:], static[..., :7]) and not m2[..., :3].any()
    kw = dict(group_size=2, block_m=32, exact_window=2, window_correction=0.5, seed=0, scale=0.25)
    cut = distr_attention(q, k[:, :, :7], v[:, :, :7], attention_mask=static[..., :7], **kw)
    torch.testing.assert_close(distr_attention(q, k2, v2, attention_mask=m2, **kw), cut, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(distr_attention(q, k, v, attention_mask=static, **kw), cut, atol=1e-3)  # unrotated
    for same in (torch.zeros(1, 1, 4, 10, dtype=torch.bool), torch.ones(1, 1, 1, 10, dtype=torch.bool)):
        k3, _, m3 = hf.rotate_to_attended_end(k, v, same, 4)  # no row sees a key / rows broadcast: unchanged
        assert torch.equal(k3, k) and torch.equal(m3, same)


def test_unsupported_features_raise_or_warn():
    q, k, v = _qkv(N=40, M=40)
    with pytest.raises(NotImplementedError, match="softcap"):
        distr_attention_forward(_Attn(G2), q, k, v, None, scaling=0.25, softcap=30.0)
    # the calls that run SDPA (a layer kept exact, fewer rows than exact_below) refuse too: SDPA would drop them
    exact_layer = DistrConfig(exact_layers=[0]).for_layer(0, 2)
    for settings, rows in [(exact_layer, 40), (DistrConfig().for_layer(None), 4)]:
        for name, value in [("softcap", 30.0), ("s_aux", torch.zeros(4))]:
            with pytest.raises(NotImplementedError, match=name):
                distr_attention_forward(_Attn(settings), q[:, :, :rows], k, v, None, scaling=0.25, **{name: value})
    out, _ = distr_attention_forward(_Attn(G2), q, k, v, None, dropout=0.1, scaling=0.25)  # warns once, no dropout
    ref, _ = distr_attention_forward(_Attn(G2), q, k, v, None, scaling=0.25)
    assert torch.equal(out, ref)


# ----------------------------------------------------------------------------- per-head settings
BASE = dict(exact_window=0, window_correction=0.0, block_m=32, exact_below=1)


def _per_head(heads):
    return DistrConfig(**BASE, head_overrides={0: heads}).for_layer(0, 1)


def test_head_partitions_group_heads_by_setting():
    s = _per_head({0: {"group_size": 4}, 1: {"group_size": 4}, 2: {"group_size": 1}, 5: {"exact_below": 64}})
    parts = hf.head_partitions(s, 6, 40)
    assert [heads for heads, _ in parts] == [[0, 1], [2, 5], [3, 4]]
    assert parts[0][1]["group_size"] == 4 and parts[2][1] == s.operator_kwargs()
    # G=1 heads and heads below their exact_below share one exact group (no window)
    assert parts[1][1] == {**s.operator_kwargs(), "group_size": 1, "exact_window": 0, "window_correction": 0.0}
    assert [h for h, _ in hf.head_partitions(s, 6, 80)] == [[0, 1], [2], [3, 4, 5]]
    uniform = DistrConfig(**BASE).for_layer(None)
    assert hf.head_partitions(uniform, 4, 40) == [([0, 1, 2, 3], uniform.operator_kwargs())]
    slow = DistrConfig(**{**BASE, "exact_below": 16}, head_overrides={0: {h: {"exact_below": 8} for h in range(4)}})
    assert hf.head_partitions(slow.for_layer(0, 1), 4, 4) is None  # every head below its exact_below: SDPA
    assert len(hf.head_partitions(slow.for_layer(0, 1), 4, 12)) == 1
    with pytest.raises(hf.DistrSettingsError, match="query head 5"):
        hf.head_partitions(s, 4, 40)


def _mask(kind, B, Hq, N, M):
    if kind == "padding":  # broadcast over heads
        return _padding_mask([N, N - 7], N, M)
    g = torch.Generator().manual_seed(3)
    per_head = (torch.rand(B, Hq, N, M, generator=g) > 0.3) | torch.eye(N, M, dtype=torch.bool)
    if kind == "per_head_3d":
        return per_head[0]
    if kind == "per_head_additive":
        return torch.zeros(B, Hq, N, M).masked_fill(~per_head, torch.finfo(torch.float32).min)
    return per_head


@pytest.mark.parametrize("mask_kind", [None, "padding", "per_head", "per_head_3d", "per_head_additive"])
@pytest.mark.parametrize("heads", [
    {0: {"group_size": 4}, 1: {"group_size": 4}, 2: {"group_size": 1}},        # a whole KV group, an exact head
    {0: {"fusion": "mean"}, 2: {"fusion": "mean"}, 3: {"exact_window": 8, "window_correction": 0.5}},
])
def test_per_head_output_is_the_operator_with_each_heads_setting(heads, mask_kind, monkeypatch):
    B, Hq, Hkv, N = 2, 4, 2, 40
    q, k, v = _qkv(B=B, Hq=Hq, Hkv=Hkv, N=N, M=N)
    mask = None if mask_kind is None else _mask(mask_kind, B, Hq, N, N)
    s = _per_head(heads)
    calls = []
    real = hf.distr_attention

    def spy(q_, k_, v_, **kw):
        calls.append((q_.shape[1], k_.clone()))
        return real(q_, k_, v_, **kw)

    monkeypatch.setattr(hf, "distr_attention", spy)
    out, _ = distr_attention_forward(_Attn(s), q, k, v, mask, scaling=0.3)
    valid = None if mask is None else query_rows_valid(mask, B, N, N)
    for h in range(Hq):
        alone = real(q, k, v, causal=mask is None, attention_mask=mask, scale=0.3, query_valid=valid,
                     backend="reference", **s.for_head(h).operator_kwargs())
        torch.testing.assert_close(out[:, :, h], alone[:, h], atol=1e-6, rtol=1e-6)
    assert len(calls) == 3
    if 0 in heads and heads[0].get("group_size") == 4:  # heads 0, 1 are KV group 0: its K once, not per head
        assert calls[0][0] == 2 and torch.equal(calls[0][1], k[:, :1])
        assert [c[0] for c in calls[1:]] == [1, 1] and all(torch.equal(c[1], k[:, 1:]) for c in calls[1:])
    else:  # heads 0, 2 (KV heads 0, 1), then 1 (KV 0), then 3 (KV 1): one KV head per query head
        assert torch.equal(calls[0][1], k) and torch.equal(calls[1][1], k[:, :1]) and torch.equal(calls[2][1], k[:, 1:])


def test_all_heads_alike_is_one_call_equal_to_the_layer_setting(monkeypatch):
    q, k, v = _qkv(N=40, M=40)
    layer = DistrConfig(**BASE, layer_overrides={0: {"group_size": 4}}).for_layer(0, 1)
    heads = _per_head({h: {"group_size": 4} for h in range(4)})
    ref, _ = distr_attention_forward(_Attn(layer), q, k, v, None, scaling=0.25)
    calls, real = [], hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out, _ = distr_attention_forward(_Attn(heads), q, k, v, None, scaling=0.25)
    assert calls == [1] and torch.equal(out, ref)


def test_engine_sdpa_routes_the_calls_it_runs_whole(monkeypatch):
    """DistrConfig(engine="sdpa"): unmasked inference calls go to the SDPA engine (the window included), with the
    operator's function; a padding mask, or a windowed call that needs a gradient, goes to "auto"."""
    seen, real = [], hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", lambda *a, **kw: seen.append(kw["backend"]) or real(*a, **kw))
    q, k, v = _qkv(N=40, M=40, d=32)  # a head dim of the Triton launches that form Q_eff under the interpreter
    for window in (0, 8):
        settings = DistrConfig(exact_window=window, exact_below=1, engine="sdpa").for_layer(None)
        auto = DistrConfig(exact_window=window, exact_below=1).for_layer(None)
        with torch.no_grad():
            out, _ = distr_attention_forward(_Attn(settings), q, k, v, None, scaling=0.25)
            ref, _ = distr_attention_forward(_Attn(auto), q, k, v, None, scaling=0.25)
        assert seen[-2:] == ["sdpa", "auto"]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            distr_attention_forward(_Attn(settings), q, k, v, _padding_mask([40, 30], 40, 40), scaling=0.25)
        assert seen[-1] == "auto"
        qg = q.clone().requires_grad_()
        distr_attention_forward(_Attn(settings), qg, k, v, None, scaling=0.25)[0].sum().backward()
        assert seen[-1] == ("auto" if window else "sdpa") and qg.grad is not None
    with pytest.raises(ValueError, match="engine must be one of"):
        DistrConfig(engine="cudnn")
    assert DistrConfig.from_dict(DistrConfig(engine="sdpa").to_dict()).engine == "sdpa"


@pytest.mark.parametrize("settings", [G2, G1, DistrConfig(exact_layers=[0]).for_layer(0, 2)], ids=["G2", "G1", "exact"])
def test_a_mask_one_key_column_longer_than_the_keys_is_cut_to_them(settings):
    """StableLM's legacy mask code on transformers 5.0 builds N+1 key columns for N keys (its eager attention cuts
    them); the adapter cuts them too, on the operator's path and on SDPA's."""
    q, k, v = _qkv(N=40, M=40)
    mask = _padding_mask([40, 29], 40, 40)
    longer = torch.cat([mask, torch.zeros_like(mask[..., :1])], dim=-1)  # [B, 1, 40, 41]
    assert torch.equal(distr_attention_forward(_Attn(settings), q, k, v, longer, scaling=0.25)[0],
                       distr_attention_forward(_Attn(settings), q, k, v, mask, scaling=0.25)[0])
