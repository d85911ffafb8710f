"""LoRA adapters (PEFT) on patched models: patch the PEFT model or wrap a patched one; train, merge, unpatch."""
import pytest
import torch

from distr_patch import DistrConfig, patch_model, unpatch_model
from distr_patch.integrations import hf
from tiny_patch_models import build, inputs, logits

peft = pytest.importorskip("peft", reason="PEFT not installed (it is in the test extra on Python >= 3.11)")

G1 = DistrConfig.exact(exact_below=1)
G2 = DistrConfig(block_m=32, exact_window=0, exact_below=1)  # every call groups


def _lora(model):
    return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      lora_dropout=0.0))


@pytest.fixture
def calls(monkeypatch):
    """Query lengths of the calls that reach the DistrAttention operator."""
    seen = []
    real = hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", lambda q, *a, **kw: seen.append(q.shape[2]) or real(q, *a, **kw))
    return seen


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_patching_a_peft_model_runs_distr_trains_the_adapters_and_unpatches_exactly(model_type, calls):
    batch = inputs(model_type, seq=48)
    exact = logits(build(model_type), batch)
    model = _lora(build(model_type))  # LoRA's B starts at zero: the same function as the base model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    patch_model(model, G1)
    assert model.config._attn_implementation == "distr"
    torch.testing.assert_close(logits(model, batch), exact, atol=5e-5, rtol=5e-5)
    layers = model.config.num_hidden_layers
    assert calls == [48] * layers  # every layer ran the operator, through the LoRA-wrapped projections

    patch_model(model, G2)
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)  # gradients reach the adapters, and only them
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    assert (logits(model, batch) - exact).abs().max() > 1e-3 * exact.abs().max()  # G=2 really grouped

    unpatch_model(model)
    assert model.config._attn_implementation == "sdpa"
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_patched_base_model_keeps_its_patch_through_lora_and_merge(calls):
    batch = inputs("llama", seq=48)
    base = build("llama")
    patch_model(base, G2)
    grouped = logits(base, batch)
    model = _lora(base)
    torch.testing.assert_close(logits(model, batch), grouped)  # zero-initialised adapters: the same function
    merged = model.merge_and_unload()
    assert merged.config._attn_implementation == "distr"
    torch.testing.assert_close(logits(merged, batch), grouped)
    assert len(calls) == 3 * merged.config.num_hidden_layers
    unpatch_model(merged)
    assert merged.config._attn_implementation == "sdpa"
    torch.testing.assert_close(logits(merged, batch), logits(build("llama"), batch), atol=5e-5, rtol=5e-5)
