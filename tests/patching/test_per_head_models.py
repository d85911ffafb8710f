"""Per-head settings (DistrConfig.head_overrides) in patched tiny models: each head runs its own setting."""
import pytest
import torch
import transformers as tf
from transformers import AttentionInterface

from distr_patch import DistrConfig, patch_model, patched
from distr_patch.integrations import hf
from tiny_patch_models import build, inputs, logits

BASE = DistrConfig(exact_window=0, window_correction=0.0, block_m=32, exact_below=1)
HEADS = {0: {0: {"group_size": 4}, 1: {"group_size": 4}, 2: {"group_size": 1}},  # KV group 0 at G=4, an exact head
         1: {3: {"fusion": "mean", "exact_window": 8, "window_correction": 0.5}}}


@pytest.mark.parametrize("model_type, padded", [("llama", False), ("llama", True), ("vit", False)])
def test_each_head_is_the_operator_with_that_heads_setting(model_type, padded, monkeypatch):
    """Every attention call of the patched model, head by head, equals the operator run directly (reference
    backend) on that call's q/k/v with the head's resolved setting."""
    model = build(model_type)
    x = inputs(model_type, seq=64)
    if padded:  # right padding: the mask (broadcast over heads) reaches every partition
        x["attention_mask"] = torch.ones_like(x["input_ids"])
        x["attention_mask"][1, 50:] = 0
    cfg = BASE.replace(head_overrides=HEADS)
    patch_model(model, cfg)
    calls = []

    def record(module, query, key, value, attention_mask, **kw):
        out = hf.distr_attention_forward(module, query, key, value, attention_mask, **kw)
        calls.append((module, query, key, value, attention_mask, kw, out[0]))
        return out

    monkeypatch.setitem(AttentionInterface._global_mapping, hf.ATTN_IMPLEMENTATION, record)
    logits(model, x)
    assert len(calls) == 2 and (calls[0][4] is not None) == padded
    for layer, (module, q, k, v, mask, kw, out) in enumerate(calls):
        causal = mask is None and kw.get("is_causal", module.is_causal)
        valid = None if mask is None else hf.query_rows_valid(mask, q.shape[0], q.shape[2], k.shape[2])
        for h in range(q.shape[1]):
            s = cfg.for_head(layer, h, 2)
            alone = hf.distr_attention(q, k, v, causal=causal, attention_mask=mask, scale=kw["scaling"],
                                       query_valid=valid, backend="reference", **s.operator_kwargs())
            torch.testing.assert_close(out[:, :, h], alone[:, h], atol=1e-6, rtol=1e-6)
    # and the heads' settings matter: head 0 at G=4 is not what the layer's G=2 gives
    alone = hf.distr_attention(calls[0][1], calls[0][2], calls[0][3], causal=True, scale=calls[0][5]["scaling"],
                               **cfg.for_layer(0, 2).operator_kwargs())
    if model_type == "llama" and not padded:
        assert (calls[0][6][:, :, 0] - alone[:, 0]).abs().max() > 1e-3


def test_all_heads_overridden_alike_equals_the_per_layer_config():
    model = build("llama")
    x = inputs("llama", seq=64)
    per_layer = BASE.replace(layer_overrides={1: {"group_size": 4, "fusion": "mean"}})
    per_head = BASE.replace(head_overrides={1: {h: {"group_size": 4, "fusion": "mean"} for h in range(4)}})
    with patched(model, per_layer):
        ref = logits(model, x)
    with patched(model, per_head):
        assert torch.equal(logits(model, x), ref)
    with patched(model, BASE):
        assert not torch.equal(logits(model, x), ref)


def test_per_head_config_survives_save_pretrained(tmp_path):
    model = build("llama")
    x = inputs("llama", seq=64)
    cfg = BASE.replace(head_overrides=HEADS)
    expected = logits(patch_model(model, cfg), x)
    model.save_pretrained(tmp_path)
    reloaded = tf.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="distr").eval()
    assert DistrConfig.from_dict(reloaded.config.distr_config) == cfg  # head keys came back as strings
    assert torch.equal(logits(reloaded, x), expected)
    with patched(model, BASE):
        assert not torch.equal(logits(model, x), expected)


def test_patch_model_checks_head_indices_and_group_sizes():
    model = build("llama")  # 4 query heads
    with pytest.raises(ValueError, match=r"head_overrides\[1\]: query head 4 is out of range"):
        patch_model(model, BASE.replace(head_overrides={1: {4: {"group_size": 1}}}))
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=64)  # head dim 12
    odd = tf.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"layer 0 head 1: group_size=8 must divide the head dim d=12"):
        patch_model(odd, DistrConfig(group_size=4, head_overrides={0: {1: {"group_size": 8}}}))
    assert odd.config._attn_implementation != "distr"
    patch_model(odd, DistrConfig(group_size=4, exact_layers=[0], head_overrides={0: {1: {"group_size": 8}}}))
