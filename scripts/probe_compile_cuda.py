"""Where a compiled patched model on CUDA departs from eager: each stage apart, max |diff| printed.

    python scripts/probe_compile_cuda.py

1. the operator alone under ``torch.cuda.graph`` (capture once, replay on new data) against eager calls;
2. the patched tiny Llama of tests/patching/test_triton_models.py (bf16, 2 x 300 tokens): eager with an explicit
   all-ones mask, then torch.compile with backend "aot_eager", mode "default" and mode "reduce-overhead", each on
   three fresh inputs against eager;
3. what the custom operator received while compiled (shapes, strides, mask), with its output against the eager
   operator on contiguous copies of the same inputs (calls outside CUDA-graph capture only);
4. the query each layer hands the operator, eager against compiled ("aot_eager" and Inductor): how many elements
   differ, how many grouping blocks that changes, and the eager operator's output on each query.
"""
from __future__ import annotations

import argparse

import torch
import transformers as tf

from distr_patch import DistrConfig, patch_model
from distr_patch.ops import distr_attn
from distr_patch.ops.distr_attn import distr_attention


def _llama(head_dim: int = 64, layers: int = 2):
    torch.manual_seed(0)
    config = tf.LlamaConfig(hidden_size=4 * head_dim, intermediate_size=128, num_hidden_layers=layers,
                            num_attention_heads=4, num_key_value_heads=2, vocab_size=128, initializer_range=0.2)
    return tf.AutoModelForCausalLM.from_config(config).eval()


def _rel(a, b) -> str:
    return f"{(a.float() - b.float()).abs().max().item():.3g} (|ref| max {b.float().abs().max().item():.3g})"


def op_graph(kw: dict, masked: bool) -> None:
    g = torch.Generator("cuda").manual_seed(1)
    shape_q, shape_kv = (2, 4, 300, 64), (2, 2, 300, 64)
    q, k, v = (torch.randn(s, device="cuda", dtype=torch.bfloat16, generator=g) for s in (shape_q, shape_kv, shape_kv))
    mask = torch.ones(300, 300, device="cuda", dtype=torch.bool).tril()[None, None].expand(2, 1, 300, 300) \
        if masked else None
    call = dict(kw, causal=not masked, attention_mask=mask)
    for _ in range(2):
        distr_attention(q, k, v, **call)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = distr_attention(q, k, v, **call)
    for seed in (2, 3):
        g.manual_seed(seed)
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, device="cuda", dtype=t.dtype, generator=g))
        graph.replay()
        ref = distr_attention(q, k, v, **call)
        print(f"  op graph {kw} masked={masked} seed {seed}: {_rel(out, ref)}")


def model_stages(cfg: DistrConfig, name: str) -> None:
    model = _llama().to("cuda", torch.bfloat16)
    patch_model(model, cfg)
    seen = []
    real = distr_attn.distr_attention

    def recording(q, k, v, **kw):
        out = real(q, k, v, **kw)
        mask = kw.get("attention_mask")
        info = [tuple(q.shape), q.stride(), k.stride(), v.stride(),
                None if mask is None else (mask.dtype, tuple(mask.shape), mask.stride()),
                None if kw.get("query_valid") is None else tuple(kw["query_valid"].shape), kw.get("causal")]
        if not torch.cuda.is_current_stream_capturing():
            ref = real(q.contiguous(), k.contiguous(), v.contiguous(), **kw)
            info.append(_rel(out, ref))
        seen.append(info)
        return out

    with torch.no_grad():
        for seed in (3, 4):
            ids = torch.randint(1, 128, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(seed))
            eager = model(ids, use_cache=False).logits
            ones = model(ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
            print(f"  {name} eager, all-ones mask vs none, seed {seed}: {_rel(ones, eager)}")
        for label, kw in (("aot_eager", dict(backend="aot_eager")), ("default", {}),
                          ("reduce-overhead", dict(mode="reduce-overhead"))):
            torch._dynamo.reset()
            compiled = torch.compile(model, **kw)
            distr_attn.distr_attention = recording
            seen.clear()
            try:
                for seed in (3, 4, 5):
                    ids = torch.randint(1, 128, (2, 300), device="cuda",
                                        generator=torch.Generator("cuda").manual_seed(seed))
                    eager = model(ids, use_cache=False).logits
                    out = compiled(ids, use_cache=False).logits.clone()
                    print(f"  {name} {label} seed {seed}: {_rel(out, eager)}")
            finally:
                distr_attn.distr_attention = real
            for info in seen[:4]:
                print(f"    op call: {info}")


def query_drift(cfg: DistrConfig, name: str) -> None:
    from distr_patch.integrations import hf
    from distr_patch.ops.grouping import compute_groups

    model = _llama().to("cuda", torch.bfloat16)
    patch_model(model, cfg)
    calls: list = []
    real_hf, real = hf.distr_attention, distr_attn.distr_attention

    def keep(q, k, v, **kw):
        calls.append((q.clone(), k.clone(), v.clone(), kw))
        return real(q, k, v, **kw)

    ids = torch.randint(1, 128, (2, 300), device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    with torch.no_grad():
        hf.distr_attention = keep
        try:
            model(ids, use_cache=False)
        finally:
            hf.distr_attention = real_hf
        eager_calls = list(calls)
        for label, kw in (("aot_eager", dict(backend="aot_eager")), ("inductor", {})):
            calls.clear()
            torch._dynamo.reset()
            distr_attn.distr_attention = keep
            try:
                torch.compile(model, **kw)(ids, use_cache=False)
            finally:
                distr_attn.distr_attention = real
            for layer, ((qe, ke, ve, kwe), (qc, kc, vc, kwc)) in enumerate(zip(eager_calls, calls)):
                g = dict(group_size=kwe["group_size"], block_m=kwe["block_m"], num_hash_bits=kwe["num_hash_bits"],
                         seed=kwe["seed"])
                blocks = (compute_groups(qe, **g) != compute_groups(qc, **g)).any(-1)
                oe, oc = real(qe, ke, ve, **kwe), real(qc, kc, vc, **kwe)
                print(f"  {name} {label} layer {layer}: q elements differing {(qe != qc).sum().item()}/{qe.numel()} "
                      f"(max {(qe.float() - qc.float()).abs().max().item():.3g}), k {(ke != kc).sum().item()}, "
                      f"grouping blocks changed {blocks.sum().item()}/{blocks.numel()}, "
                      f"eager operator on each q: {_rel(oc, oe)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="also stages 1-3 (else stage 4 alone)")
    args = ap.parse_args()
    print(torch.__version__, tf.__version__)
    for kw in (dict(group_size=2), dict(group_size=2, fusion="rank1", exact_window=128, window_correction=0.5),
               dict(group_size=1)):
        if not args.all:
            break
        for masked in (False, True):
            op_graph(kw, masked)
    for name, cfg in (("paper", DistrConfig.paper(exact_below=1)), ("recommended", DistrConfig(exact_below=1))):
        query_drift(cfg, name)
    if args.all:
        for name, cfg in (("paper", DistrConfig.paper(exact_below=1)), ("recommended", DistrConfig(exact_below=1))):
            model_stages(cfg, name)


if __name__ == "__main__":
    main()
