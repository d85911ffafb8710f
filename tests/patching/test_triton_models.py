"""Patched models on the Triton path: under the interpreter on the CPU, and on CUDA (the GPU image, 5.17).

The adapter calls ``distr_attention`` with backend "auto" (CUDA -> Triton, CPU -> reference); here the
CPU runs force backend="triton" so the kernel sees the masks and valid rows the adapter builds.
"""
import os

import pytest
import torch
import transformers as tf

from distr_patch import DistrConfig, patch_model
from distr_patch.integrations import hf
from distr_patch.ops import distr_attention

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _llama(head_dim: int, layers: int = 2):
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=128, initializer_range=0.2)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def _on_triton(*args, **kw):
    """``distr_attention`` with backend="triton" whatever the adapter asks for (it passes ``backend`` itself, so a
    ``functools.partial`` default would be overridden and the CPU call would run the reference)."""
    kw["backend"] = "triton"
    _on_triton.calls += 1
    return distr_attention(*args, **kw)


_on_triton.calls = 0


def _right_padded(seq: int, short: int):
    ids = torch.randint(1, 128, (2, seq), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, short:] = 0
    return ids, mask


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
def test_triton_kernel_in_a_patched_model_matches_the_reference(monkeypatch):
    model = _llama(head_dim=32)
    ids, mask = _right_padded(seq=40, short=29)
    cfg = DistrConfig.paper(block_m=32, exact_below=1)
    with torch.no_grad():
        patch_model(model, cfg)
        ref = model(ids, attention_mask=mask).logits  # CPU: the PyTorch reference
        monkeypatch.setattr(hf, "distr_attention", _on_triton)
        _on_triton.calls = 0
        out = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, :29]).logits
    assert _on_triton.calls == 4  # two layers, two forwards: the kernel ran
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(out[1:, :29], alone, atol=2e-4, rtol=2e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patched_model_on_cuda(dtype):
    """Same user code on CUDA: G=1 matches SDPA, G=2 matches the CPU reference, padding, generate()."""
    print("transformers", tf.__version__)
    model = _llama(head_dim=64)
    ids, mask = _right_padded(seq=300, short=200)
    with torch.no_grad():
        patch_model(model, DistrConfig.paper(exact_below=1))
        cpu = model(ids, attention_mask=mask).logits
        model.to("cuda", dtype)
        ids_c, mask_c = ids.cuda(), mask.cuda()
        gpu = model(ids_c, attention_mask=mask_c).logits.float().cpu()
        tol = 2e-3 if dtype == torch.float32 else 1e-1
        real = mask.bool()
        assert torch.isfinite(gpu[real]).all()
        if dtype == torch.float32:
            # Only in fp32: the LSH grouping is a discontinuous function of q, so a bf16 model
            # (q rounded to bf16) may group some columns differently from the fp32 CPU model.
            torch.testing.assert_close(gpu[real], cpu[real], atol=tol * cpu.abs().max().item(), rtol=0)
        alone = model(ids_c[1:, :200]).logits.float().cpu()
        torch.testing.assert_close(gpu[1:, :200], alone, atol=tol * cpu.abs().max().item(), rtol=0)

        patch_model(model, DistrConfig.exact(exact_below=1))
        g1 = model(ids_c).logits.float()
        model.set_attn_implementation("sdpa")
        sdpa = model(ids_c).logits.float()
        torch.testing.assert_close(g1, sdpa, atol=tol * sdpa.abs().max().item(), rtol=0)
        model.set_attn_implementation("distr")

        patch_model(model)  # the defaults: prefill through the kernel, decode exact
        out = model.generate(ids_c[:1, :150], max_new_tokens=20, min_new_tokens=20, do_sample=False)
        assert out.shape == (1, 170)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("cfg", [DistrConfig.exact(exact_below=1), DistrConfig.paper(exact_below=1),
                                 DistrConfig(exact_below=1)], ids=["G1", "paper", "recommended"])
def test_patched_prefill_replays_from_a_cuda_graph(cfg, monkeypatch):
    """A patched model's prefill (no host sync on the Triton path) captures in a CUDA graph; replays on new inputs
    copied into the captured ones give the eager logits, and the captured calls took the eager call's causal path
    (no mask tensor: ``EagerMaskDecisions``), as ``bench model --cuda-graph`` needs."""
    from distr_patch.eval.timing import cuda_graphed

    masks = []

    def recording(*args, **kw):
        masks.append((torch.cuda.is_current_stream_capturing(), kw.get("attention_mask") is None, kw.get("causal")))
        return distr_attention(*args, **kw)

    monkeypatch.setattr(hf, "distr_attention", recording)
    model = _llama(head_dim=64).to("cuda", torch.bfloat16)
    patch_model(model, cfg)
    ids = torch.randint(1, 128, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    box = {}
    with torch.no_grad():
        replay = cuda_graphed(lambda: box.__setitem__("logits", model(ids, use_cache=False).logits), "cuda")
        captured = [m for m in masks if m[0]]
        assert captured and all(no_mask and causal for _, no_mask, causal in captured), captured
        for seed in (3, 4):
            gen = torch.Generator("cuda").manual_seed(seed)
            ids.copy_(torch.randint(1, 128, ids.shape, device="cuda", generator=gen))
            replay()
            eager = model(ids, use_cache=False).logits
            torch.testing.assert_close(box["logits"], eager, atol=2e-2 * eager.abs().max().item(), rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("cfg", [DistrConfig.paper(exact_below=1), DistrConfig(exact_below=1)],
                         ids=["paper", "recommended"])
def test_engine_sdpa_model_on_cuda(cfg):
    """DistrConfig(engine="sdpa") in a bf16 model on CUDA: the same logits as the fused kernel's (fp32 model: the
    LSH grouping of bf16 queries is discontinuous, so bf16 compares loosely), a padded batch runs (its masked calls
    on the fused kernel), and generate() works."""
    model = _llama(head_dim=64)
    ids, mask = _right_padded(seq=300, short=200)
    model.to("cuda", torch.float32)
    ids_c, mask_c = ids.cuda(), mask.cuda()
    with torch.no_grad():
        patch_model(model, cfg)
        fused = model(ids_c).logits
        patch_model(model, cfg.replace(engine="sdpa"))
        sdpa = model(ids_c).logits
        torch.testing.assert_close(sdpa, fused, atol=2e-3 * fused.abs().max().item(), rtol=0)
        padded = model(ids_c, attention_mask=mask_c).logits
        assert torch.isfinite(padded[mask_c.bool()]).all()
        out = model.generate(ids_c[:1, :150], max_new_tokens=10, min_new_tokens=10, do_sample=False)
        assert out.shape == (1, 160)


def _compiled_targets(model, ids, mask, **compile_kw):
    """(logits of ``torch.compile(model)``, the call targets of its graphs), Dynamo reset first."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=compile_kw.pop("backend", backend), **compile_kw)
    return compiled(ids, attention_mask=mask).logits, targets


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
def test_compiled_patched_model_calls_the_custom_op(monkeypatch):
    """torch.compile over a patched model (Triton path, padded batch): attention is the ``distr_patch::distr_attention``
    call in the graph (the two layers share one compiled frame), the kernel runs once per layer inside it, and the
    logits are the eager ones."""
    from distr_patch.ops import distr_attn

    model = _llama(head_dim=32)
    ids, mask = _right_padded(seq=40, short=29)
    monkeypatch.setattr(hf, "distr_attention", _on_triton)
    launches = []
    real = distr_attn._triton_forward
    monkeypatch.setattr(distr_attn, "_triton_forward", lambda *a, **kw: launches.append(1) or real(*a, **kw))
    with torch.no_grad():
        patch_model(model, DistrConfig(block_m=32, exact_window=8, exact_below=1))
        eager = model(ids, attention_mask=mask).logits
        launches.clear()
        compiled, targets = _compiled_targets(model, ids, mask)
    assert targets.count(torch.ops.distr_patch.distr_attention.default) >= 1, targets
    assert len(launches) == 2  # the op ran the kernel for each layer
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("cfg", [DistrConfig.paper(exact_below=1), DistrConfig(exact_below=1)],
                         ids=["paper", "recommended"])
def test_compiled_patched_model_on_cuda(cfg):
    """torch.compile(mode="reduce-overhead") over a bf16 patched model on CUDA (CUDA-graph replays with the custom
    op inside): the eager logits, run after run on new inputs."""
    model = _llama(head_dim=64).to("cuda", torch.bfloat16)
    ids = torch.randint(1, 128, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    with torch.no_grad():
        patch_model(model, cfg)
        torch._dynamo.reset()
        compiled = torch.compile(model, mode="reduce-overhead")
        for seed in (3, 4, 5):
            ids = torch.randint(1, 128, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            eager = model(ids, use_cache=False).logits
            out = compiled(ids, use_cache=False).logits.clone()
            torch.testing.assert_close(out, eager, atol=2e-2 * eager.abs().max().item(), rtol=0)
