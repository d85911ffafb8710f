"""Every built-in decoder type against its unpatched self, with padding, windows and generate(); and the attention
variants patch_model refuses by name (softcapping, sinks, MLA's value head dim)."""
import pytest
import torch
import transformers as tf

from distr_patch import DistrConfig, patch_model, register_attention_replacement, unpatch_model
from distr_patch.patching import registry
from tiny_patch_models import DECODER_TYPES, FAMILY_OVERRIDES, HYBRID_TYPES, VOCAB, build, logits

G1 = DistrConfig.exact(exact_below=1)  # every call through the operator, decode steps included
NARROW = 16  # windows and chunks narrower than the 40-token sequences: their masks really cut


def _narrowed(model_type: str) -> dict:
    fields = FAMILY_OVERRIDES.get(model_type, {})
    return {k: NARROW for k in ("sliding_window", "attention_chunk_size") if k in fields}


def _padded(side: str, seq: int = 40, short: int = 29) -> dict:
    """Two sequences, the second padded to ``seq`` on ``side``, with the position ids a tokenizer's padding gives."""
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, seq, dtype=torch.long)
    if side == "right":
        mask[1, short:] = 0
    else:
        mask[1, :seq - short] = 0
    ids = torch.randint(3, VOCAB, (2, seq), generator=g).masked_fill(mask == 0, 0)
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))


@pytest.mark.parametrize("model_type", DECODER_TYPES)
def test_padded_batches_and_generate_match_the_unpatched_model_at_g1(model_type):
    model = build(model_type, config_overrides=_narrowed(model_type) or None)
    batches = {side: _padded(side) for side in ("right", "left")}
    ref = {side: logits(model, x) for side, x in batches.items()}
    x = batches["left"]
    gen = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"], max_new_tokens=5, min_new_tokens=5,
               do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref_tokens = model.generate(**gen)

    patch_model(model, G1)
    for side, x in batches.items():
        real = x["attention_mask"].bool()
        torch.testing.assert_close(logits(model, x)[real], ref[side][real], atol=5e-5, rtol=5e-5)
    with torch.no_grad():
        assert torch.equal(model.generate(**gen), ref_tokens)
    unpatch_model(model)
    assert torch.equal(logits(model, batches["right"]), ref["right"])


@pytest.mark.parametrize("model_type, fields, expected", [
    ("gemma2", dict(sliding_window=16), r"Gemma2Attention \(layer 0\) uses logit softcapping"),
    ("gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=16),
     r"GptOssAttention \(layer 0\) uses attention sinks"),
    ("deepseek_v3", dict(n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=32, first_k_dense_replace=1,
                         n_group=1, topk_group=1, num_experts_per_tok=2, kv_lora_rank=32, q_lora_rank=32,
                         qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16),
     r"DeepseekV3Attention \(layer 0\) uses a value head dim \(16\) other than the query/key head dim \(24\)"),
])
def test_attention_distr_cannot_compute_is_refused_at_patch_time(model_type, fields, expected):
    """Registered by a user or not, these are refused by name before anything changes, at every layer selection
    (a layer kept exact would run SDPA, which drops a softcap or sinks without a word)."""
    torch.manual_seed(0)
    fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, **fields)
    config = tf.AutoConfig.for_model(model_type, **fields)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    before = model.config._attn_implementation
    with pytest.raises(registry.UnsupportedModelError, match=f"'{model_type}' is not supported by distr_patch: its "
                       f"attention uses {registry.KNOWN_UNSUPPORTED[model_type][:12]}"):
        patch_model(model)  # unregistered: the registry names the reason
    try:
        register_attention_replacement(model_type, family="decoder")
        for cfg in (DistrConfig(), DistrConfig(exact_layers=[0])):
            with pytest.raises(registry.UnsupportedModelError, match=expected):
                patch_model(model, cfg)
            with pytest.raises(registry.UnsupportedModelError, match=expected):
                registry.check_patchable(model, cfg)
        assert model.config._attn_implementation == before and not hasattr(model.config, "distr_config")
        assert not any(hasattr(m, "_distr_settings") for m in model.modules())
    finally:
        registry._REGISTRY.pop(model_type, None)


def test_a_multimodal_model_is_patched_through_its_text_model():
    """Mistral 3 (Pixtral encoder + Mistral decoder): its own type is not registered (the finder would count the
    vision encoder's attention as layers), but its text model is a registered Mistral and patches alone."""
    torch.manual_seed(0)
    text = tf.MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, initializer_range=0.2)
    vision = tf.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=32, patch_size=4, head_dim=16)
    config = tf.Mistral3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), spatial_merge_size=2)
    model = tf.Mistral3ForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    x = {k: v for k, v in _padded("right").items() if k != "position_ids"}
    real = x["attention_mask"].bool()
    ref = logits(model, x)
    with pytest.raises(registry.UnsupportedModelError, match="'mistral3'"):
        patch_model(model)
    text_model = model.model.language_model
    patch_model(text_model, G1)
    torch.testing.assert_close(logits(model, x)[real], ref[real], atol=5e-5, rtol=5e-5)
    patch_model(text_model, DistrConfig(group_size=2, block_m=32, exact_window=8, exact_below=1))
    assert (logits(model, x) - ref)[real].abs().max() > 1e-2
    unpatch_model(text_model)
    assert torch.equal(logits(model, x), ref)


@pytest.mark.parametrize("model_type", HYBRID_TYPES)
def test_hybrid_models_count_their_attention_layers(model_type):
    """LFM2 / Qwen3-Next have attention in layers 1 and 3 only: per-layer settings number those two modules 0 and 1
    (as calibration writes them). Loaded with attn_implementation="distr", a uniform config runs; a per-layer one asks
    for patch_model, since the modules' layer indices (1, 3) are not that numbering."""
    model = build(model_type)
    x = _padded("right")
    real = x["attention_mask"].bool()
    ref = logits(model, x)
    patch_model(model, DistrConfig(exact_first=1, exact_below=1))
    first, second = registry.patched_modules(model)
    assert (first.layer_idx, second.layer_idx) == (1, 3)
    assert first._distr_settings.exact and not second._distr_settings.exact
    with pytest.raises(ValueError, match="out of range"):
        patch_model(model, DistrConfig(exact_layers=[2]))  # two attention layers: 0 and 1
    unpatch_model(model)

    loaded = build(model_type, attn_implementation="distr")
    loaded.config.distr_config = G1.to_dict()
    torch.testing.assert_close(logits(loaded, x)[real], ref[real], atol=5e-5, rtol=5e-5)
    loaded.config.distr_config = DistrConfig(exact_first=1).to_dict()
    with pytest.raises(ValueError, match=rf"per-layer settings of a {model_type} model .*patch_model\(model\) after"):
        logits(loaded, x)
    patch_model(loaded)  # reads config.distr_config and numbers the layers as above
    assert [m._distr_settings.exact for m in registry.patched_modules(loaded)] == [True, False]
