"""Patched tiny models (built from configs, no hub) against their unpatched selves."""
import pytest
import torch
import transformers as tf

import distr_patch
from distr_patch import DistrConfig, patch_model, patched, unpatch_model
from distr_patch.integrations import hf
from distr_patch.patching import patched_modules
from tiny_patch_models import CONFIGS, VISION_TYPES, build, inputs, logits

# Decoder sequences longer than the default 128-token exact window, so G=2 really groups.
LONG = 160
ALL_TYPES = tuple(CONFIGS)
G1 = DistrConfig.exact(exact_below=1)  # every call through DistrAttention with G=1 (= exact attention)


@pytest.fixture
def spy(monkeypatch):
    """Records the query length of every call that reaches the DistrAttention operator."""
    calls = []
    real = hf.distr_attention

    def wrapped(q, *args, **kwargs):
        calls.append(q.shape[2])
        return real(q, *args, **kwargs)

    monkeypatch.setattr(hf, "distr_attention", wrapped)
    return calls


def _close(a, b):
    torch.testing.assert_close(a, b, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("model_type", ALL_TYPES)
def test_g1_matches_unpatched_and_unpatch_restores_exactly(model_type, spy):
    model = build(model_type)
    x = inputs(model_type)
    ref = logits(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())

    assert patch_model(model, G1) is model
    out = logits(model, x)
    assert len(spy) == len(patched_modules(model)) > 0  # every attention layer went through the operator
    _close(out, ref)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == n_params

    assert unpatch_model(model) is model
    assert torch.equal(logits(model, x), ref)  # bit-identical
    assert model.config._attn_implementation == "sdpa" and not hasattr(model.config, "distr_config")
    assert not any(hasattr(m, "_distr_settings") for m in model.modules())


@pytest.mark.parametrize("model_type", ALL_TYPES)
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_g2_differs_keeps_shapes_and_is_finite(model_type, preset):
    model = build(model_type)
    x = inputs(model_type, seq=LONG)
    ref = logits(model, x)
    patch_model(model, DistrConfig() if preset == "default" else DistrConfig.paper())
    out = logits(model, x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    if model_type == "mistral" and preset == "default":
        # the sliding window (24) lies inside the 128-token exact window: every attended score is exact
        _close(out, ref)
        return
    assert (out - ref).abs().max() > 1e-3 * ref.abs().max()  # far beyond rounding (G=1 agrees to ~1e-6)


def test_context_manager_and_layers_argument(spy):
    model = build("llama")
    x = inputs("llama", seq=LONG)
    ref = logits(model, x)
    with patched(model, DistrConfig.paper(), layers=[1]) as m:
        assert m is model and model.config._attn_implementation == "distr"
        out = logits(model, x)
        assert len(spy) == 1  # layer 0 kept exact (transformers' SDPA), layer 1 through DistrAttention
        with patched(model, G1):
            _close(logits(model, x), ref)
        assert torch.equal(logits(model, x), out)  # the outer settings came back
    assert torch.equal(logits(model, x), ref)
    assert not distr_patch.patching.is_patched(model)


def test_a_patched_block_on_a_patched_model_restores_the_settings_that_ran():
    """The outer settings come back as they ran, even after an edit of config.distr_config (which patch_model's
    attached settings outrank, so it had no effect): the dict comes back edited, the layers as they were."""
    model = build("llama")
    x = inputs("llama", seq=LONG)
    patch_model(model, DistrConfig.paper())
    paper = logits(model, x)
    model.config.distr_config = G1.to_dict()
    assert torch.equal(logits(model, x), paper)
    with patched(model, DistrConfig()):
        pass
    assert torch.equal(logits(model, x), paper)
    assert model.config.distr_config == G1.to_dict()
    with patched(model, G1):
        unpatch_model(model)  # the block unpatches: the model comes back patched as it was
    assert distr_patch.patching.is_patched(model) and torch.equal(logits(model, x), paper)
    unpatch_model(model)


def test_per_layer_settings_reach_each_layer():
    model = build("dinov2")
    cfg = DistrConfig(exact_layers=[-1], layer_overrides={0: {"group_size": 4, "block_m": 64}})
    patch_model(model, cfg)
    mods = distr_patch.patching.attention_modules(model)
    assert [m._distr_settings.exact for m in mods] == [False, True]
    assert (mods[0]._distr_settings.group_size, mods[0]._distr_settings.block_m) == (4, 64)
    assert model.config.distr_config == cfg.to_dict()


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "vit", "deit"])
def test_attn_implementation_distr_from_config_and_from_pretrained(model_type, tmp_path, spy):
    cfg = DistrConfig.paper(exact_below=4)
    x = inputs(model_type, seq=48)
    model = build(model_type)
    expected = logits(patch_model(model, cfg), x)

    loaded = build(model_type, attn_implementation="distr")  # from_config; settings: the defaults
    assert loaded.config._attn_implementation == "distr"
    loaded.config.distr_config = cfg.to_dict()
    assert torch.equal(logits(loaded, x), expected)

    model.save_pretrained(tmp_path)  # distr_config is in config.json
    auto = tf.AutoModelForImageClassification if model_type in VISION_TYPES else tf.AutoModelForCausalLM
    spy.clear()
    reloaded = auto.from_pretrained(tmp_path, attn_implementation="distr").eval()
    assert reloaded.config.distr_config == cfg.to_dict()
    assert torch.equal(logits(reloaded, x), expected) and spy

    reloaded.set_attn_implementation("sdpa")
    unpatched = logits(reloaded, x)
    reloaded.set_attn_implementation("distr")
    assert not torch.equal(unpatched, expected) and torch.equal(logits(reloaded, x), expected)


def test_attn_implementation_distr_compiles_whole_on_the_first_call(tmp_path):
    """from_pretrained(..., attn_implementation="distr") under torch.compile(fullgraph=True), cold: the settings are
    read from config.distr_config inside the trace (DistrConfig.from_dict used dataclasses.fields, which Dynamo cannot
    trace: the graph broke, and fullgraph raised, unless an eager call had cached the settings first)."""
    cfg = DistrConfig(block_m=32, exact_window=8, exact_below=4)
    x = inputs("llama", seq=40)
    patch_model(build("llama"), cfg).save_pretrained(tmp_path)
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="distr").eval()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(**x).logits
        assert torch.equal(compiled, logits(model, x))


def test_loaded_per_layer_config_without_layer_index_asks_for_patch_model():
    model = build("vit", attn_implementation="distr")
    model.config.distr_config = DistrConfig(exact_layers=[0]).to_dict()
    x = inputs("vit")
    with pytest.raises(ValueError, match="patch_model"):
        logits(model, x)
    patch_model(model)  # attaches the per-layer settings from config.distr_config
    assert [m._distr_settings.exact for m in distr_patch.patching.attention_modules(model)] == [True, False]
    assert torch.isfinite(logits(model, x)).all()
    unpatch_model(model)
    assert model.config._attn_implementation == "distr" and model.config.distr_config["exact_layers"] == [0]


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_generate_prefills_through_distr_and_decodes_exact(model_type, spy):
    model = build(model_type)
    prompt = inputs(model_type, batch=1, seq=24)["input_ids"]
    ref = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    patch_model(model, G1.replace(exact_below=DistrConfig().exact_below))
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert out.shape == (1, 24 + 20) and torch.equal(out, ref)  # G=1: the same greedy tokens
    assert spy == [24] * model.config.num_hidden_layers  # prefill only; 1-row decode steps ran SDPA
    patch_model(model, DistrConfig.paper())
    out2 = model.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert out2.shape == (1, 44) and torch.equal(out2[:, :24], prompt)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("config", ["g1", "g2"])
def test_right_padded_batch_matches_each_sequence_alone(model_type, config, spy):
    """Padding rows are kept out of the grouping, so each sequence's logits do not depend on its batch."""
    model = build(model_type)
    patch_model(model, G1 if config == "g1" else DistrConfig.paper(exact_below=1))
    ids = inputs(model_type, batch=2, seq=LONG)["input_ids"]
    lengths = (LONG, 131)  # the short one ends inside the second grouping block
    mask = torch.zeros(2, LONG, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, :n]).logits
            _close(batched[b:b + 1, :n], alone)


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_left_padded_batch_matches_each_sequence_alone_at_g1(model_type):
    """At G>1 left padding shifts rows across grouping blocks, so results change (documented)."""
    model = build(model_type)
    patch_model(model, G1)
    ids = inputs(model_type, batch=2, seq=40)["input_ids"]
    lengths = (40, 29)
    mask = torch.zeros(2, 40, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, 40 - n:] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=pos).logits
        for b, n in enumerate(lengths):
            alone = model(ids[b:b + 1, 40 - n:]).logits
            _close(batched[b:b + 1, 40 - n:], alone)


@pytest.mark.parametrize("model_type", ["llama", "vit"])
def test_autograd_through_the_patched_model(model_type):
    model = build(model_type).train()
    patch_model(model, DistrConfig.paper(exact_below=1))
    x = inputs(model_type, seq=40)
    model(**x).logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")  # renamed `cache` in 5.2x; 5.0 has only this
@pytest.mark.parametrize("model_type, overrides", [("llama", None), ("mistral", None),
                                                    ("mistral", {"sliding_window": 64})],
                         ids=["llama", "mistral", "mistral-sliding64"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "compiled"])
def test_static_cache_calls_match_the_dynamic_cache_with_an_exact_window(model_type, overrides, traced, spy):
    """A static cache hands over keys with an unwritten tail (masked): the exact window is placed at each row's own
    position, not bottom-right of the whole cache, so a left-padded prefill and a continued chunk give the logits
    of the dynamic cache (where the keys end at the last query). Under torch.compile (dynamo, eager backend: no host
    read of the mask) the adapter rotates the key axis instead of cutting the tail. Mistral's tiny window (24) is
    full after the prefill, so its cache has no unwritten tail; with a 64-token window the sliding layers' static
    cache (64 slots, 40 then 60 written) keeps one, and a rotation left undone changes its logits."""
    model = build(model_type, config_overrides=overrides)
    patch_model(model, DistrConfig(block_m=32, exact_window=8))
    if traced:
        torch._dynamo.reset()
        model.forward = torch.compile(model.forward, backend="eager", dynamic=False)
    ids = inputs(model_type, batch=2, seq=40)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    more = inputs(model_type, batch=2, seq=20, seed=7)["input_ids"]
    outs = []
    with torch.no_grad():
        for cache in (tf.DynamicCache(config=model.config), tf.StaticCache(config=model.config, max_cache_len=96)):
            first = model(ids, attention_mask=mask, position_ids=pos, past_key_values=cache).logits
            mask2 = torch.cat([mask, torch.ones_like(more)], 1)
            second = model(more, attention_mask=mask2, position_ids=pos[:, -1:] + 1 + torch.arange(20),
                           past_key_values=cache).logits
            outs.append((first, second))
    (dyn1, dyn2), (st1, st2) = outs
    assert spy, "no call reached the operator"
    _close(st1, dyn1)
    _close(st2, dyn2)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
def test_right_padded_static_cache_prefill_groups_as_the_dynamic_cache():
    """Without a window the static cache's unwritten tail stays, and the padding rows of a right-padded batch must
    still be found (their own key sits at the attended end, not at the end of the cache): the grouping then equals
    the dynamic cache's, logits and all, and the short sequence's real rows equal that sequence alone."""
    model = build("llama")
    patch_model(model, DistrConfig.paper(block_m=32, exact_below=1))
    ids = inputs("llama", batch=2, seq=40)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, 29:] = 0
    with torch.no_grad():
        dyn = model(ids, attention_mask=mask, past_key_values=tf.DynamicCache(config=model.config)).logits
        static = model(ids, attention_mask=mask,
                       past_key_values=tf.StaticCache(config=model.config, max_cache_len=96)).logits
        alone = model(ids[1:, :29]).logits
    _close(static, dyn)
    _close(static[1:, :29], alone)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
@pytest.mark.parametrize("kind", ["prefix-lm mask", "bidirectional"])
def test_static_cache_matches_the_dynamic_cache_with_masks_beyond_causal(kind):
    """A custom prefix-LM mask on a causal model, and a bidirectional call (is_causal=False), each prefilled into a
    static cache with G=2 and an exact window: the same logits as a dynamic cache (the unwritten tail dropped, every
    real row valid)."""
    N, P, slots = 40, 8, 96
    model = build("llama")
    patch_model(model, DistrConfig(group_size=2, exact_window=4, window_correction=0.5, block_m=32, exact_below=1))
    ids = inputs("llama", batch=2, seq=N)["input_ids"]

    def mask(kv_len):
        m = torch.zeros(N, kv_len, dtype=torch.bool)
        m[:, :N] = True if kind == "bidirectional" else torch.ones(N, N, dtype=torch.bool).tril()
        m[:P, :P] = True
        return m[None, None].expand(2, 1, N, kv_len)

    extra = {"is_causal": False} if kind == "bidirectional" else {}
    with torch.no_grad():
        dynamic = model(ids, attention_mask=mask(N), past_key_values=tf.DynamicCache(config=model.config),
                        **extra).logits
        static = model(ids, attention_mask=mask(slots),
                       past_key_values=tf.StaticCache(config=model.config, max_cache_len=slots), **extra).logits
        none = model(ids, attention_mask=mask(N), **extra).logits
    _close(dynamic, none)
    _close(static, dynamic)


def test_a_loaded_model_follows_edits_of_its_distr_config_dict(tmp_path):
    """attn_implementation="distr" reads config.distr_config: an edit in place counts like an assignment."""
    x = inputs("llama", seq=LONG)
    ref = logits(build("llama"), x)
    model = build("llama", attn_implementation="distr")
    model.config.distr_config = DistrConfig.paper().to_dict()
    grouped = logits(model, x)
    model.config.distr_config.update(group_size=1, exact_below=1)
    _close(logits(model, x), ref)
    model.config.distr_config["group_size"] = 2
    assert torch.equal(logits(model, x), grouped)
    model.config.distr_config = DistrConfig.paper()  # an object, not its dict: runs, and is stored as the dict
    assert torch.equal(logits(model, x), grouped)
    assert model.config.distr_config == DistrConfig.paper().to_dict()
    model.save_pretrained(tmp_path)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_chunked_prefill_with_block_aligned_chunks_matches_one_prefill(model_type):
    """A prefill cut into chunks of block_m tokens groups each chunk's query block as one prefill does, and places the
    exact window at each row's own key: the logits agree. Mistral's dynamic cache keeps only its sliding window's
    last keys, so its later chunks see fewer keys than queries' positions (M = window - 1 + chunk)."""
    model = build(model_type)
    patch_model(model, DistrConfig(block_m=32, exact_window=8, exact_below=1))
    ids = inputs(model_type, seq=96)["input_ids"]
    with torch.no_grad():
        whole = model(ids).logits
        cache = tf.DynamicCache(config=model.config)
        chunks = [model(ids[:, s:s + 32], past_key_values=cache, use_cache=True).logits for s in range(0, 96, 32)]
        if model_type == "mistral":
            assert cache.layers[0].get_seq_length() == 96 and cache.layers[0].keys.shape[2] < 96
        exact = logits(build(model_type), {"input_ids": ids})
    assert (whole - exact).abs().max() > 1e-3 * exact.abs().max()  # G=2 outside the window really groups
    _close(torch.cat(chunks, 1), whole)


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
def test_static_cache_with_a_window_under_inference_mode():
    """Masks made under torch.inference_mode have no version counter: the static cache's attended length is read
    for them without the per-mask memo, and the logits equal the dynamic cache's."""
    model = build("llama")
    patch_model(model, DistrConfig(block_m=32, exact_window=8))
    ids = inputs("llama", batch=2, seq=40)["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.inference_mode():
        dyn, static = (model(ids, attention_mask=mask, position_ids=pos, past_key_values=cache).logits
                       for cache in (tf.DynamicCache(config=model.config),
                                     tf.StaticCache(config=model.config, max_cache_len=96)))
    _close(static, dyn)


@pytest.mark.skipif(not hasattr(tf.GenerationMixin, "generate_batch"), reason="no continuous batching in this release")
def test_continuous_batching_is_refused_and_leaves_the_patched_model_as_it_was():
    """transformers' continuous batching (generate_batch) refuses "distr" with a ValueError (README, "Not supported");
    the model stays patched and runs as before the attempt."""
    model = build("llama")
    patch_model(model, DistrConfig(block_m=32, exact_below=1))
    ids = inputs("llama", batch=1, seq=40)["input_ids"]
    before = logits(model, {"input_ids": ids})
    config = tf.GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0)
    with pytest.raises(ValueError, match="distr"):
        model.generate_batch([ids[0, :7].tolist(), ids[0, :5].tolist()], generation_config=config)
    assert model.config._attn_implementation == "distr"
    assert torch.equal(logits(model, {"input_ids": ids}), before)
    unpatch_model(model)
    assert model.config._attn_implementation == "sdpa"
