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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
def test_lora_trains_through_the_triton_backward_on_cuda():
    """fp32 on CUDA: a LoRA model with the paper's G=2 in every layer gives the CPU reference's loss and adapter
    gradients through the Triton forward and backward (right padding, 200 tokens: several query blocks)."""
    model = build("llama", config_overrides=dict(hidden_size=256, head_dim=64))
    patch_model(model, DistrConfig.paper(exact_below=1))
    model = _lora(model)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero, so that lora_A gets a gradient too
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ids = torch.randint(1, 128, (2, 200), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 150:] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def loss_and_grads(device):
        model.to(device).zero_grad()
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        # copies: the next model.to(device) moves each held .grad tensor in place (Module._apply sets its .data)
        return loss.item(), {n: p.grad.to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    cpu_loss, cpu_grads = loss_and_grads("cpu")
    gpu_loss, gpu_grads = loss_and_grads("cuda")
    assert abs(gpu_loss - cpu_loss) <= 1e-3 * abs(cpu_loss)
    assert cpu_grads.keys() == gpu_grads.keys() and any("lora_A" in n for n in cpu_grads)
    for name, want in cpu_grads.items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(gpu_grads[name], want, atol=2e-3 * want.abs().max().item(), rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
