"""``torch.compile`` over DistrAttention: while Dynamo traces, kernel-path calls that need no gradient become one
custom operator (``ops/compile_op.py``); the compiled function gives the eager output bit for bit."""
import os
import zlib

import pytest
import torch

from distr_patch.ops import compile_op, compute_groups, distr_attention

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
OP = torch.ops.distr_patch.distr_attention.default


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


def test_calls_that_need_a_gradient_or_run_the_reference_stay_traced(monkeypatch):
    """runs_as_custom_op: only while compiling, only without a gradient, only on the kernels' paths."""
    q, k, v = _qkv("grad")
    assert not compile_op.runs_as_custom_op(q, k, v, "triton")  # not compiling
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert compile_op.runs_as_custom_op(q, k, v, "triton") and compile_op.runs_as_custom_op(q, k, v, "sdpa")
    assert not compile_op.runs_as_custom_op(q, k, v, "reference")
    assert not compile_op.runs_as_custom_op(q, k, v, "auto")  # CPU tensors: the reference
    q.requires_grad_(True)
    assert not compile_op.runs_as_custom_op(q, k, v, "triton")
    with torch.no_grad():
        assert compile_op.runs_as_custom_op(q, k, v, "triton")


def test_fake_output_and_schema():
    """The fake implementation gives q's shape and dtype; the schema takes the optional tensors as None."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        q = mode.from_tensor(torch.randn(2, 4, 50, 64, dtype=torch.bfloat16))
        k = v = mode.from_tensor(torch.randn(2, 2, 60, 64, dtype=torch.bfloat16))
        out = OP(q, k, v, None, None, None, 2, 128, "rank1", 128, 0.5, True, None, 16, 0, "triton")
    assert out.shape == (2, 4, 50, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()
