"""``torch.compile`` over DistrAttention: while Dynamo traces, kernel-path calls become custom operators
(``ops/compile_op.py``): one forward operator without a gradient, a differentiable forward / backward pair with one.
Compiled functions give the eager outputs (bit for bit) and gradients."""
import os
import zlib

import pytest
import torch

from distr_patch.ops import compile_op, compute_groups, distr_attention

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
OP = torch.ops.distr_patch.distr_attention.default
TRAIN_OP = torch.ops.distr_patch.distr_attention_train.default


def _recording_backend(targets: list):
    """A torch.compile backend that runs the traced graph as it is and records its call targets."""
    def backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward
    return backend


def _qkv(case, B=2, Hq=4, Hkv=2, N=70, d=32):
    g = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    return [torch.randn(B, h, N, d, generator=g) for h in (Hq, Hkv, Hkv)]


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("backend,G,fusion,W,causal", [("triton", 2, "rank1", 16, True), ("triton", 1, "mean", 0, False),
                                                      ("sdpa", 2, "mean", 0, True), ("sdpa", 4, "rank1", 24, True)])
def test_compiled_call_is_one_custom_op(backend, G, fusion, W, causal):
    q, k, v = _qkv((backend, G, fusion, W, causal))
    valid = torch.ones(2, 70, dtype=torch.bool)
    valid[1, 55:] = False
    # the windowed SDPA engine takes no tensor mask (its right-padded rows then read all keys, as the reference's)
    mask = None if backend == "sdpa" and W else valid[:, None, None, :]
    groups = compute_groups(q, group_size=G, block_m=32, num_hash_bits=16, seed=3, query_valid=valid) \
        if backend == "sdpa" and G > 1 and not W else None

    def fn(q, k, v):
        return distr_attention(q, k, v, group_size=G, block_m=32, fusion=fusion, exact_window=W,
                               window_correction=0.5 if W else 0.0, causal=causal, attention_mask=mask, seed=3,
                               query_valid=valid, groups=groups, backend=backend) * 2 + 1

    targets = []
    torch._dynamo.reset()
    out = torch.compile(fn, backend=_recording_backend(targets), fullgraph=True)(q, k, v)
    assert targets.count(OP) == 1, targets
    assert torch.equal(out, fn(q, k, v))


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("G,fusion,W,causal,given", [(2, "rank1", 16, True, False), (1, "mean", 0, False, False),
                                                     (4, "mean", 0, True, True), (2, "rank1", 0, False, True)])
def test_compiled_training_call_is_the_differentiable_pair(G, fusion, W, causal, given):
    """With a gradient the compiled call is ``distr_attention_train`` (its backward ``distr_attention_grad``): the
    eager output bit for bit and the eager gradients to fp32 rounding (the backward forms Q_eff again)."""
    q, k, v = _qkv((G, fusion, W, causal, given))
    valid = torch.ones(2, 70, dtype=torch.bool)
    valid[0, 60:] = False
    mask = valid[:, None, None, :]
    groups = compute_groups(q, group_size=G, block_m=32, num_hash_bits=16, seed=1, query_valid=valid) \
        if given and G > 1 else None

    def fn(q, k, v):
        return distr_attention(q, k, v, group_size=G, block_m=32, fusion=fusion, exact_window=W,
                               window_correction=0.5 if W else 0.0, causal=causal, attention_mask=mask, seed=1,
                               query_valid=valid, groups=groups, backend="triton")

    results = []
    for compiled in (False, True):
        targets = []
        torch._dynamo.reset()
        f = torch.compile(fn, backend=_recording_backend(targets), fullgraph=True) if compiled else fn
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = f(*leaves)
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), *(t.grad for t in leaves)))
        assert targets.count(TRAIN_OP) == (1 if compiled else 0), targets
    assert torch.equal(results[0][0], results[1][0])
    for eager, comp in zip(results[0][1:], results[1][1:]):
        assert ((comp - eager).norm() / eager.norm()).item() < 1e-5


def _eager_and_compiled(fn, inputs, loss):
    """(out, dq, dk, dv) of ``fn`` eager and under torch.compile(fullgraph=True); each compiled one within 1e-2
    relative of the eager one."""
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        f = torch.compile(fn, fullgraph=True) if compiled else fn
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = f(*leaves)
        loss(out).backward()
        results.append((out.detach(), *(t.grad for t in leaves)))
    for eager, comp in zip(*results):
        assert ((comp.float() - eager.float()).norm() / eager.float().norm()).item() < 1e-2
    return results


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("backend,G,fusion,W", [("triton", 2, "mean", 0), ("triton", 2, "rank1", 128),
                                                ("triton", 4, "rank1", 0), ("sdpa", 2, "mean", 0),
                                                ("sdpa", 2, "rank1", 0)])
def test_compiled_training_on_cuda(backend, G, fusion, W):
    """The differentiable pair (the SDPA engine: its Q_eff operator and Dynamo's SDPA) under Inductor on CUDA (bf16,
    causal, GQA, a right-padded row block): the eager output bit for bit (the SDPA engine: to bf16 rounding, SDPA
    being Inductor's), the eager gradients to bf16 rounding of the backward's own Q_eff (it groups q again)."""
    g = torch.Generator("cuda").manual_seed(G * 10 + W)
    q = torch.randn(2, 4, 300, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(2, 2, 300, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    valid = torch.ones(2, 300, device="cuda", dtype=torch.bool)
    valid[1, 250:] = False
    mask = valid[:, None, None, :] & torch.ones(300, 300, device="cuda", dtype=torch.bool).tril()
    weight = torch.linspace(-1, 1, 64, device="cuda")

    def fn(q, k, v):
        return distr_attention(q, k, v, group_size=G, fusion=fusion, exact_window=W,
                               window_correction=0.5 if W else 0.0, attention_mask=mask, query_valid=valid,
                               backend=backend)

    eager, comp = _eager_and_compiled(fn, (q, k, v), lambda out: (out.float() * weight).sum())
    if backend == "triton":
        assert torch.equal(eager[0], comp[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("W,masked,expect", [(128, False, "train"), (0, True, "train"), (0, False, None)])
def test_compiled_training_with_auto_sdpa_on_cuda(monkeypatch, W, masked, expect):
    """DISTR_AUTO_SDPA=1, backend "auto", a gradient: calls that auto gives the fused kernel (an exact window, a mask)
    go to the differentiable pair (they were traced through the Triton host code, which Dynamo cannot follow); plain
    calls, which auto gives the SDPA engine, stay traced. fullgraph=True, gradients as eager's."""
    from distr_patch.ops import configs

    monkeypatch.setattr(configs, "DEFAULT_AUTO_SDPA", True)
    g = torch.Generator("cuda").manual_seed(W + masked)
    q, k, v = (torch.randn(1, 2, 256, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    mask = torch.ones(256, 256, device="cuda", dtype=torch.bool).tril() if masked else None

    def fn(q, k, v):
        return distr_attention(q, k, v, group_size=2, fusion="rank1", exact_window=W, window_correction=0.5 if W else 0.0,
                               attention_mask=mask, causal=not masked)

    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    with monkeypatch.context() as m:
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        assert compile_op.runs_as_custom_op(*leaves, "auto", mask, group_size=2, exact_window=W,
                                            causal=not masked) == expect
    _eager_and_compiled(fn, (q, k, v), lambda out: out.float().square().sum())


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("G,fusion,given,causal", [(2, "mean", False, True), (2, "rank1", False, False),
                                                   (4, "rank1", True, True)])
def test_compiled_sdpa_engine_with_a_gradient_is_one_graph(G, fusion, given, causal):
    """The SDPA engine with a gradient traces whole (fullgraph=True), on a cold hash-direction cache: Q_eff is the
    ``query_effective`` operator (its backward ``query_effective_grad`` groups q again), SDPA is Dynamo's. The
    eager output bit for bit, the eager gradients to rounding."""
    from distr_patch.ops import grouping_triton

    q, k, v = _qkv(("sdpa grad", G, fusion, given, causal))
    valid = torch.ones(2, 70, dtype=torch.bool)
    valid[1, 60:] = False
    groups = compute_groups(q, group_size=G, block_m=32, num_hash_bits=16, seed=2, query_valid=valid) \
        if given else None

    def fn(q, k, v):
        return distr_attention(q, k, v, group_size=G, block_m=32, fusion=fusion, causal=causal, seed=2,
                               query_valid=valid, groups=groups, backend="sdpa")

    grouping_triton._padded_projections.cache_clear()
    targets = []
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=_recording_backend(targets), fullgraph=True)
    runs = []
    for f in (compiled, fn):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = f(*leaves)
        runs.append((out, *torch.autograd.grad((out * torch.linspace(-1, 1, 32)).sum(), leaves)))
    assert torch.ops.distr_patch.query_effective.default in targets and OP not in targets, targets
    assert torch.equal(runs[0][0], runs[1][0])
    for got, want in zip(runs[0][1:], runs[1][1:]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert runs[0][1].abs().sum() > 0


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schemas, fake implementations against the real ones, autograd registration, AOT
    dispatch, for the forward operator, the differentiable pair and the backward alone."""
    q, k, v = _qkv("opcheck", B=1, Hq=2, Hkv=1, N=40)
    opts = (None, None, None, 2, 32, "rank1", 8, 0.5, True, None, 16, 0)
    torch.library.opcheck(OP, (q, k, v, *opts, "triton"))
    torch.library.opcheck(TRAIN_OP, tuple(t.clone().requires_grad_(True) for t in (q, k, v)) + opts)
    out, lse = TRAIN_OP(q, k, v, *opts)
    torch.library.opcheck(torch.ops.distr_patch.distr_attention_grad.default,
                          (torch.randn_like(out), q, k, v, out, lse, *opts))
    qe_opts = (None, None, 2, 32, "rank1", 16, 0)
    torch.library.opcheck(torch.ops.distr_patch.query_effective.default, (q.clone().requires_grad_(True), *qe_opts))
    torch.library.opcheck(torch.ops.distr_patch.query_effective_grad.default, (torch.randn_like(q), q, *qe_opts))


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
def test_compiled_training_call_checks_group_values():
    """Precomputed groups' values are checked when the compiled call runs (a trace cannot read them)."""
    q, k, v = _qkv("bad groups", B=1, Hq=2, Hkv=1, N=40)
    groups = compute_groups(q, group_size=2, block_m=32, num_hash_bits=16, seed=0)
    groups[0, 0, 0, 0] = 99
    for backend in ("triton", "sdpa"):  # the fused kernel's pair; the SDPA engine's Q_eff operator
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        torch._dynamo.reset()
        f = torch.compile(lambda q, k, v: distr_attention(q, k, v, group_size=2, block_m=32, groups=groups,
                                                          backend=backend), backend="aot_eager", fullgraph=True)
        with pytest.raises(ValueError, match=r"groups must hold column indices in \[0, 32\)"):
            f(*leaves)


def test_compiled_reference_checks_group_values_when_it_runs():
    """The PyTorch reference traces whole with precomputed groups (fullgraph=True; it used to fail reading their
    values): they are checked by an assertion in the graph, with the eager call's message; good groups give the
    eager output."""
    q, k, v = _qkv("reference groups", B=1, Hq=2, Hkv=1, N=40)
    groups = compute_groups(q, group_size=2, block_m=32, num_hash_bits=16, seed=0)
    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v, g: distr_attention(q, k, v, group_size=2, block_m=32, groups=g),
                      fullgraph=True)
    torch.testing.assert_close(f(q, k, v, groups), distr_attention(q, k, v, group_size=2, block_m=32, groups=groups),
                               atol=1e-5, rtol=1e-5)  # Inductor's fp32 arithmetic
    bad = groups.clone()
    bad[0, 1, 1, 3] = 32
    # ours, or (torch 2.8's Inductor orders the gather first) its own bounds check: an error either way, not an answer
    with pytest.raises(RuntimeError, match=r"groups must hold column indices in \[0, 32\)|index out of bounds"):
        f(q, k, v, bad)


def test_which_calls_go_to_which_op(monkeypatch):
    """runs_as_custom_op: only while compiling; "forward" without a gradient on the kernels' paths, "train" with one
    on the fused kernel (not the SDPA engine, not a mask that requires grad), else traced."""
    q, k, v = _qkv("grad")
    assert compile_op.runs_as_custom_op(q, k, v, "triton") is None  # not compiling
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert compile_op.runs_as_custom_op(q, k, v, "triton") == compile_op.runs_as_custom_op(q, k, v, "sdpa") \
        == "forward"
    assert compile_op.runs_as_custom_op(q, k, v, "reference") is None
    assert compile_op.runs_as_custom_op(q, k, v, "auto") is None  # CPU tensors: the reference
    q.requires_grad_(True)
    assert compile_op.runs_as_custom_op(q, k, v, "triton") == "train"
    assert compile_op.runs_as_custom_op(q, k, v, "sdpa") is None
    assert compile_op.runs_as_custom_op(q, k, v, "triton", torch.zeros(1, requires_grad=True)) is None
    with torch.no_grad():
        assert compile_op.runs_as_custom_op(q, k, v, "triton") == "forward"
    q.requires_grad_(False)  # only the mask needs a gradient (a learned bias over a frozen model): traced too
    assert compile_op.runs_as_custom_op(q, k, v, "triton", torch.zeros(1, requires_grad=True)) is None
    assert compile_op.runs_as_custom_op(q, k, v, "triton", torch.zeros(1)) == "forward"


def test_fake_output_and_schema():
    """The fake implementation gives q's shape and dtype; the schema takes the optional tensors as None."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        q = mode.from_tensor(torch.randn(2, 4, 50, 64, dtype=torch.bfloat16))
        k = v = mode.from_tensor(torch.randn(2, 2, 60, 64, dtype=torch.bfloat16))
        out = OP(q, k, v, None, None, None, 2, 128, "rank1", 128, 0.5, True, None, 16, 0, "triton")
    assert out.shape == (2, 4, 50, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()


@pytest.mark.parametrize("G,fusion,W", [(2, "mean", 0), (2, "rank1", 8), (4, "rank1", 0)])
def test_reference_path_compiles_as_one_graph(G, fusion, W):
    """The PyTorch reference (CPU tensors, backend "auto") traces whole with fullgraph=True: its hash directions are
    a constant made while tracing (a ``torch.Generator`` in the trace used to break the graph), and another seed
    traces again with its own directions. Outputs bit for bit, gradients to rounding."""
    from distr_patch.ops import grouping

    q, k, v = _qkv(("reference", G, fusion, W))
    q.requires_grad_(True)
    grouping._projections_cpu.cache_clear()  # cold: the constant is made inside the trace
    for seed in (0, 5):
        torch._dynamo.reset()

        def fn(q, k, v):
            return distr_attention(q, k, v, group_size=G, block_m=32, fusion=fusion, exact_window=W,
                                   window_correction=0.5 if W else 0.0, causal=True, seed=seed)

        targets = []
        out = torch.compile(fn, backend=_recording_backend(targets), fullgraph=True)(q, k, v)
        eager = fn(q, k, v)
        assert torch.equal(out, eager), seed
        assert OP not in targets and TRAIN_OP not in targets  # traced as torch ops, no custom operator
        g_out, = torch.autograd.grad(out.square().sum(), q)
        g_eager, = torch.autograd.grad(eager.square().sum(), q)
        torch.testing.assert_close(g_out, g_eager, atol=1e-5, rtol=1e-5)
    assert not torch.equal(fn(q, k, v), distr_attention(q, k, v, group_size=G, block_m=32, fusion=fusion,
                                                        exact_window=W, window_correction=0.5 if W else 0.0,
                                                        causal=True, seed=0))  # the seeds' directions differ


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors through Triton need TRITON_INTERPRET=1")
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_a_mask_that_alone_needs_a_gradient_gets_the_references(backend):
    """q, k, v frozen, an additive mask that requires grad (a learned bias): eager and compiled calls give the
    reference's mask gradient (the fused kernel's eager call once gave an output without a gradient, and its compiled
    call went to the forward operator, which has no backward: an error)."""
    q, k, v = _qkv(("mask-grad", backend))
    bias = (0.1 * torch.randn(2, 1, 70, 70, generator=torch.Generator().manual_seed(1))).requires_grad_()

    def fn(q, k, v, m):
        return distr_attention(q, k, v, attention_mask=m, group_size=2, block_m=32, causal=True, backend=backend)

    ref = distr_attention(q, k, v, attention_mask=bias, group_size=2, block_m=32, causal=True, backend="reference")
    want, = torch.autograd.grad(ref.square().sum(), bias)
    torch._dynamo.reset()
    for f in (fn, torch.compile(fn, backend="aot_eager", fullgraph=True)):
        out = f(q, k, v, bias)
        got, = torch.autograd.grad(out.square().sum(), bias)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_reference_path_compiles_once_for_many_lengths_and_any_seed():
    """The PyTorch reference under torch.compile(dynamic=True, fullgraph=True): its row-chunk loop pinned N, one graph
    per length until the recompile limit (a hard error with fullgraph); a seed given as an argument that changes
    (made dynamic by the second call) could not reach the hash directions' constant (fullgraph raised)."""
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    f = torch.compile(lambda q, k, v: distr_attention(q, k, v, group_size=2, block_m=32, causal=True),
                      backend=count, dynamic=True, fullgraph=True)
    for n in range(40, 120, 8):
        q, k, v = _qkv(("lengths", n), N=n)
        assert torch.equal(f(q, k, v), distr_attention(q, k, v, group_size=2, block_m=32, causal=True)), n
    assert len(graphs) <= 2, len(graphs)
    torch._dynamo.reset()
    g = torch.compile(lambda q, k, v, seed: distr_attention(q, k, v, group_size=2, block_m=32, seed=seed),
                      backend="aot_eager", fullgraph=True)
    q, k, v = _qkv("seeds")
    outs = [g(q, k, v, seed) for seed in (0, 1, 2)]
    for seed, out in zip((0, 1, 2), outs):
        assert torch.equal(out, distr_attention(q, k, v, group_size=2, block_m=32, seed=seed)), seed
    assert not torch.equal(outs[0], outs[1])
