"""The replacement registry: built-in entries, user entries, unsupported models, patch-time errors."""
import pytest
import torch
import transformers as tf

from distr_patch import DistrConfig, patch_model, register_attention_replacement, unpatch_model
from distr_patch.patching import registry
from distr_patch.patching.registry import UnsupportedModelError, attention_modules, supported_model_types
from tiny_patch_models import CONFIGS, HYBRID_TYPES, build, inputs, logits


def test_every_builtin_entry_has_a_tiny_model_under_test():
    """Meta-test: each registered type is covered by the tiny-model tests (test_models.py runs them all)."""
    assert set(supported_model_types()) == set(CONFIGS)
    assert {"llama", "mistral", "qwen2", "vit", "deit", "dinov2"} <= set(supported_model_types())


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_builtin_finder_gives_one_attention_module_per_layer(model_type):
    model = build(model_type)
    mods = registry.get_replacement(model_type).find_attention(model)
    attention_layers = [i for i, t in enumerate(getattr(model.config, "layer_types", None) or ())
                        if t.endswith("attention") and t != "linear_attention"]  # hybrids: layers 1 and 3
    if model_type in HYBRID_TYPES:
        assert [m.layer_idx for m in mods] == attention_layers == [1, 3]
    else:
        assert len(mods) == model.config.num_hidden_layers
    assert all(m.is_causal == (model_type not in ("vit", "deit", "dinov2")) for m in mods)


def test_unsupported_model_type_lists_the_supported_ones():
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    msg = r"'gpt2' is not supported.*'llama'.*register_attention_replacement"
    with pytest.raises(UnsupportedModelError, match=msg):
        patch_model(model)
    assert model.config._attn_implementation != "distr"


def test_patching_something_that_is_no_model_is_a_named_error():
    for thing in (torch.nn.Linear(4, 4), "meta-llama/Llama-3.2-1B", None):
        with pytest.raises(TypeError, match="patch_model: model must be a loaded transformers model"):
            patch_model(thing)


def test_user_entry_patches_a_new_model_type():
    torch.manual_seed(0)
    config = tf.OlmoConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=128, initializer_range=0.2)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    x = inputs("llama", seq=40)
    ref = logits(model, x)
    builtin = registry._REGISTRY.pop("olmo")  # a built-in type since the fifty-first session: unregister it here
    with pytest.raises(UnsupportedModelError):
        patch_model(model)
    found = []
    entry = register_attention_replacement("olmo", lambda m: found.append(1) or attention_modules(m))
    try:
        assert entry.model_type == "olmo" and "olmo" in supported_model_types()
        with pytest.raises(ValueError, match="already registered"):
            register_attention_replacement("olmo")
        patch_model(model, DistrConfig.exact(exact_below=1))
        assert found and model.config._attn_implementation == "distr"
        torch.testing.assert_close(logits(model, x), ref, atol=5e-5, rtol=5e-5)
        unpatch_model(model)
        assert torch.equal(logits(model, x), ref)
    finally:
        registry._REGISTRY["olmo"] = builtin


def test_register_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model_type"):
        register_attention_replacement("")
    with pytest.raises(TypeError, match="find_attention"):
        register_attention_replacement("x-test", find_attention=3)


def test_patch_time_errors_name_the_problem():
    model = build("llama")
    with pytest.raises(ValueError, match="out of range"):
        patch_model(model, DistrConfig(exact_layers=[5]))
    with pytest.raises(ValueError, match="out of range"):
        patch_model(model, layers=[2])
    with pytest.raises(ValueError, match="layers entry -3 is out of range"):
        patch_model(model, layers=[-3])
    for bad in (0.9, True, "1"):  # not truncated or read as 1
        with pytest.raises(TypeError, match="layers must hold int layer indices"):
            patch_model(model, layers=[bad])
    for bad in (1, 1.0):  # one index, not a list of them
        with pytest.raises(TypeError, match="patch_model: layers must be a list of layer indices"):
            patch_model(model, layers=bad)
    with pytest.raises(TypeError, match="config must be"):
        patch_model(model, "paper")
    with pytest.raises(ValueError, match="did you mean"):
        patch_model(model, {"groupsize": 2})
    assert model.config._attn_implementation == "sdpa"  # nothing was applied
    with pytest.raises(ValueError, match="not patched"):
        unpatch_model(model)


def test_layers_may_be_any_iterable_read_once():
    for layers in ((i for i in [1]), map(int, "1"), range(1, 2)):
        model = patch_model(build("llama"), layers=layers)
        assert [m._distr_settings.exact for m in attention_modules(model)] == [True, False]


def test_group_size_must_divide_the_head_dim():
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)  # head dim 12
    model = tf.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"layer 1: group_size=8 must divide the head dim d=12"):
        patch_model(model, DistrConfig(group_size=4, layer_overrides={1: {"group_size": 8}}))
    patch_model(model, DistrConfig(group_size=4, exact_layers=[1], layer_overrides={1: {"group_size": 8}}))


def test_a_head_dim_the_kernel_lacks_is_refused_at_patch_time_on_cuda(monkeypatch):
    """On CUDA every grouped call would raise the kernel's head-dim error: patch_model says so at once; on the CPU
    (the reference takes any head dim) and with every layer exact the model patches."""
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)  # head dim 12
    model = tf.AutoModelForCausalLM.from_config(config)
    assert registry._on_cuda(model) is False
    patch_model(model, DistrConfig(group_size=4))
    unpatch_model(model)
    monkeypatch.setattr(registry, "_on_cuda", lambda m: True)
    with pytest.raises(registry.UnsupportedModelError, match=r"^patch_model: layer 1: head dim 12 on CUDA: the Triton "
                                                         r"kernel takes head dims 32, 64, 80, 96, 128, 256; keep "
                                                         r"this model on attn_implementation='sdpa'"):
        patch_model(model, DistrConfig(group_size=4, exact_layers=[0]))
    assert not registry.is_patched(model) and model.config._attn_implementation != "distr"
    with pytest.warns(UserWarning, match="keeps all 2 layers exact"):
        patch_model(model, DistrConfig(group_size=4, exact_layers=[0, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
def test_a_head_dim_the_kernel_lacks_is_refused_on_a_cuda_model():
    model = build("llama").to("cuda")  # head dim 16
    assert registry._on_cuda(model)
    with pytest.raises(registry.UnsupportedModelError, match=r"layer 0: head dim 16 on CUDA"):
        patch_model(model)


def test_repatching_replaces_settings_and_unpatch_restores_the_original():
    model = build("qwen2")
    x = inputs("qwen2", seq=160)
    ref = logits(model, x)
    patch_model(model, DistrConfig.paper())
    paper = logits(model, x)
    patch_model(model, DistrConfig.exact(exact_below=1))
    torch.testing.assert_close(logits(model, x), ref, atol=5e-5, rtol=5e-5)
    patch_model(model, DistrConfig.paper())
    assert torch.equal(logits(model, x), paper)
    unpatch_model(model)
    assert torch.equal(logits(model, x), ref) and model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_patched_model_repatches_and_unpatches_exactly(how):
    """The copy of a model patched from no distr_config keeps the marker for "none before": unpatching it removes the
    dict again (save_pretrained can write the config), and patch_model(copy) finds the defaults."""
    import copy
    import pickle

    model = build("llama")
    x = inputs("llama", seq=160)
    ref = logits(model, x)
    assert "distr_config" not in model.config.__dict__
    patch_model(model, DistrConfig.paper())
    out = logits(model, x)
    clone = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert torch.equal(logits(clone, x), out)
    patch_model(clone)  # config None: the settings from before any patch (none: the defaults)
    assert clone.config.distr_config == DistrConfig().to_dict()
    unpatch_model(clone)
    assert "distr_config" not in clone.config.__dict__ and torch.equal(logits(clone, x), ref)
    clone.config.to_json_string()  # no marker object left in the config


def test_a_finder_may_return_any_iterable():
    model = build("llama")
    x = inputs("llama", seq=160)
    ref = logits(model, x)
    builtin = registry._REGISTRY["llama"]
    register_attention_replacement("llama", lambda m: (mod for mod in attention_modules(m)), overwrite=True)
    try:
        patch_model(model, DistrConfig.exact(exact_below=1))
        assert all(hasattr(m, "_distr_settings") for m in attention_modules(model))
        torch.testing.assert_close(logits(model, x), ref, atol=5e-5, rtol=5e-5)
    finally:
        registry._REGISTRY["llama"] = builtin
    unpatch_model(model)


def test_a_failed_switch_leaves_the_model_untouched(monkeypatch):
    """If transformers refuses the switch (e.g. a class whose source it cannot read), nothing stays patched."""
    model = build("llama")
    x = inputs("llama")
    ref = logits(model, x)

    def refuse(name):
        raise ValueError("cannot set attention implementation dynamically")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with pytest.raises(RuntimeError, match="transformers did not switch|refused attn_implementation"):
        patch_model(model, DistrConfig(group_size=4))
    assert not any("_distr_settings" in m.__dict__ for m in model.modules())
    assert "distr_config" not in model.config.__dict__
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.undo()
    assert torch.equal(logits(model, x), ref)
    patch_model(model)  # and it patches once transformers accepts
    unpatch_model(model)
    assert torch.equal(logits(model, x), ref)


def test_a_model_sharing_the_config_object_warns_when_it_runs_patched():
    """transformers keeps attn_implementation on the config: a second model built from the same config object
    switches with the patched one, which is said, not silent; unpatching restores both."""
    config = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)
    torch.manual_seed(0)
    a, b = tf.LlamaForCausalLM(config).eval(), tf.LlamaForCausalLM(config).eval()
    assert a.config is b.config
    x = torch.randint(0, 64, (1, 40))
    ref_b = b(x).logits
    patch_model(a, DistrConfig(group_size=4, block_m=32, exact_window=0))
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a(x)
    assert not [w for w in seen if "shares its config object" in str(w.message)]  # the patched model: silent
    with pytest.warns(UserWarning, match="shares its config object with a patched LlamaForCausalLM"):
        b(x)
    unpatch_model(a)
    assert torch.equal(b(x).logits, ref_b)


def test_exact_first_or_last_past_the_layers_is_refused_and_all_exact_warns():
    """exact_first/exact_last larger than the model's layer count is a mistake, not "all exact"; a config that
    keeps every layer exact patches, with a warning that nothing is approximated."""
    model = build("llama")
    n = model.config.num_hidden_layers
    for field in ("exact_first", "exact_last"):
        with pytest.raises(ValueError, match=f"{field}={n + 1} is more than the model's {n} layers"):
            patch_model(model, DistrConfig(**{field: n + 1}))
    with pytest.warns(UserWarning, match=f"keeps all {n} layers exact"):
        patch_model(model, DistrConfig(exact_first=1, exact_last=n - 1))
    unpatch_model(model)
