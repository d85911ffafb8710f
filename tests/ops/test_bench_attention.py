"""scripts/bench_attention.py's variants that flip module switches (how backend="sdpa" forms Q_eff) run with their
switch, under the interpreter, and leave it restored; the SageAttention peer works on its own copy of the keys; bad
arguments are named errors; the timing helpers rotate the order and settle each variant; `bench op` runs on the CPU."""
import os
import sys
import types

import pytest
import torch

interpreter_only = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="CPU tensors through Triton need TRITON_INTERPRET=1")


@pytest.fixture
def bench(load_script):
    """scripts/bench_attention.py as a module."""
    return load_script("bench_attention")


@interpreter_only
def test_bench_switch_variants_run_with_their_switches(bench, monkeypatch):
    from distr_patch.ops import grouping_triton, sdpa_engine
    from distr_patch.ops.reference import reference_distr_attention

    seen = []
    real_fused, real_grouping = grouping_triton.triton_query_effective, grouping_triton.triton_grouping

    def fused(*args, **kwargs):  # which way and source each fused Q_eff launch ran with
        seen.append((grouping_triton.QEFF_REGROUP, grouping_triton.QEFF_FUSION_FROM))
        return real_fused(*args, **kwargs)

    def grouping(*args, **kwargs):
        seen.append(sdpa_engine.QEFF_LAUNCH)
        return real_grouping(*args, **kwargs)

    monkeypatch.setattr(grouping_triton, "triton_query_effective", fused)
    monkeypatch.setattr(grouping_triton, "triton_grouping", grouping)
    before = (grouping_triton.QEFF_REGROUP, grouping_triton.QEFF_FUSION_FROM)
    variants = bench._variants(None)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 140, 32, generator=g) for _ in range(3))
    ref = reference_distr_attention(q, k, v, group_size=2, block_m=128, fusion="rank1")
    for name, expect in (("distr G=2 rank1 sdpa dot16 registers", ("dot16", "registers")),
                         ("distr G=2 rank1 sdpa dot memory", ("dot", "memory")),
                         ("distr G=2 rank1 sdpa 2launch", "separate")):
        seen.clear()
        out = bench._make_fn(variants[name], q, k, v, False)()
        assert seen == [expect], name
        assert torch.allclose(out, ref, atol=1e-4), name  # fp32 q: the dot16 way takes the fp32 dot
    assert (grouping_triton.QEFF_REGROUP, grouping_triton.QEFF_FUSION_FROM) == before  # restored
    assert sdpa_engine.QEFF_LAUNCH == "fused"


@interpreter_only
def test_bench_torch_flip_variant_reverses_by_torch(bench, monkeypatch):
    """The "torch flip" window variants reverse the right piece's inputs by torch.flip, the others by reverse_rows;
    the same output either way, and the switch restored."""
    from distr_patch.ops import sdpa_engine

    seen = []
    real_kernel, real_flip = sdpa_engine.reverse_rows, sdpa_engine._flip_rows
    monkeypatch.setattr(sdpa_engine, "reverse_rows", lambda x: seen.append("triton") or real_kernel(x))
    monkeypatch.setattr(sdpa_engine, "_flip_rows", lambda x: seen.append("torch") or real_flip(x))
    variants = bench._variants(None)
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 150, 32, generator=g) for _ in range(3))
    outs = []
    for name, expect in (("distr G=2 rank1 W128 c.5 bm128 sdpa", "triton"),
                         ("distr G=2 rank1 W128 c.5 bm128 sdpa torch flip", "torch")):
        seen.clear()
        with torch.no_grad():
            outs.append(bench._make_fn(variants[name], q, k, v, False)())
        assert seen == [expect] * 3, name  # Q_eff, K and V of the right piece
    assert torch.equal(outs[0], outs[1])
    assert sdpa_engine.REVERSE_ROWS == "triton"


@pytest.mark.parametrize("backward", [False, True])
def test_bench_unknown_variant_is_a_named_error(bench, capsys, backward):
    """A misspelt --variants name stops the run and lists the names (it used to be dropped without a word, and the
    run timed the baselines alone)."""
    argv = ["--variants", "distr G=2 rank1 W128 c.5 bm128x"] + (["--backward"] if backward else [])
    with pytest.raises(SystemExit):
        bench.main(argv)
    err = capsys.readouterr().err
    assert "no variant named 'distr G=2 rank1 W128 c.5 bm128x'" in err and "distr G=2 mean" in err


@interpreter_only
def test_bench_op_cli_on_cpu_exits_0_and_writes_its_json(tmp_path, capsys):
    """`distr-patch bench op --device cpu --backward ... --json F`: status 0 (the script's rows are not an exit
    status), the JSON written, the table printed last."""
    import json

    from distr_patch.cli.main import main

    out = tmp_path / "op.json"
    status = main(["bench", "op", "--device", "cpu", "--backward", "--d", "32", "--n", "64", "--causal", "1",
                   "--tokens", "64", "--model-dim", "64", "--variants", "distr G=1", "--rep-ms", "1",
                   "--json", str(out)])
    assert status == 0
    data = json.loads(out.read_text())
    assert data["kind"] == "bench-op-backward" and data["device"] == "cpu" and data["gpu"] is None
    assert data["timing"] == {"rounds": 3, "settle_ms": 0.0, "rep_ms": 1}  # no settling on the CPU by default
    assert [r["variant"] for r in data["rows"]][-1] == "distr G=1"
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("|")


def test_bench_op_usage_names_the_command(capsys):
    from distr_patch.cli.main import main

    with pytest.raises(SystemExit):
        main(["bench", "op", "--causal", "7"])
    assert "usage: distr-patch bench op" in capsys.readouterr().err


def test_timed_rounds_rotates_the_order_so_a_slow_first_slot_does_not_bias_a_variant(bench):
    """Each pass starts further down the list, so no variant is timed first twice; a timer that reads the first
    call of every pass 2x slow (the order effect seen on the H200) leaves every median at the true time, where
    one pass in a fixed order charges it to the first variant."""
    names = ["flash", "cudnn", "G1", "G2 mean", "G2 rank1", "G4 mean"]
    calls = []

    def time_one(name):
        calls.append(name)
        return 2.0 if len(calls) % len(names) == 1 else 1.0  # calls 1, 7, 13: each pass's first

    passes = bench.timed_rounds(names, 3, time_one)
    assert calls == names + names[2:] + names[:2] + names[4:] + names[:4]
    assert list(passes) == names and all(len(p) == 3 for p in passes.values())
    medians = {n: bench.median_spread(p)[0] for n, p in passes.items()}
    assert medians == dict.fromkeys(names, 1.0)
    assert bench.median_spread(passes["flash"]) == (1.0, 100.0)  # timed first once: shown as spread, not bias
    calls.clear()
    one = bench.timed_rounds(names, 1, time_one)
    assert one["flash"] == [2.0] and one["cudnn"] == [1.0]


def test_median_spread(bench):
    mid, spread = bench.median_spread([1.2, 1.0, 1.1])
    assert mid == 1.1 and spread == pytest.approx(100.0 * 0.2 / 1.1)
    assert bench.median_spread([0.5]) == (0.5, 0.0)


def test_bench_rounds_below_one_is_a_named_error(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2 and "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_settled_runs_the_variant_itself_before_each_timing(bench):
    """--settle-ms: a timer that reads slow right after another variant ran (the clocks it left) reads true once
    the variant itself ran first; 0 is the plain timer."""
    events = []

    def run_one(name):
        events.append(("run", name))

    def time_one(name):
        last = next((e for e in reversed(events) if e[0] == "run"), None)
        events.append(("time", name))
        return 1.0 if last == ("run", name) else 1.5  # slow unless its own calls came just before

    assert bench.settled(time_one, run_one, 0) is time_one
    passes = bench.timed_rounds(["a", "b"], 2, bench.settled(time_one, run_one, 1.0))
    assert passes == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    first = events.index(("time", "a"))
    assert first >= 4 and first % 4 == 0 and events[:first] == [("run", "a")] * first  # calls four at a time
    events.clear()
    assert bench.timed_rounds(["a", "b"], 1, time_one) == {"a": [1.5], "b": [1.5]}


def test_bench_negative_settle_is_a_named_error(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--settle-ms", "-1"])
    assert exc.value.code == 2 and "--settle-ms must be >= 0, got -1.0" in capsys.readouterr().err


def test_bench_sage_variant_leaves_the_shared_keys_alone(bench, monkeypatch):
    """SageAttention 1.0.6's sageattn subtracts K's mean over the sequence in place; the bench's sage1 variant must
    hand it a copy, or every variant timed after it runs on centred keys (and reads a larger rounding error)."""
    calls = []

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, smooth_k=True):  # the real one's in-place smoothing
        calls.append(k)
        if smooth_k:
            k -= k.mean(dim=2 if tensor_layout == "HND" else 1, keepdim=True)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) + 1.0 for _ in range(3))  # keys with a non-zero mean
    k_before = k.clone()
    fn = bench._make_fn(bench._variants(None)["sage1"], q, k, v, True)
    out = fn()
    fn()
    assert len(calls) == 2 and calls[0] is not k  # the stand-in ran, on a copy
    assert torch.equal(k, k_before)
    exact = torch.nn.functional.scaled_dot_product_attention(q, k_before, v, is_causal=True)
    assert torch.allclose(out, exact, atol=1e-5)  # softmax is blind to the shift: the copy gives sage's true output


def test_bench_names_a_variant_that_writes_into_the_shared_inputs(bench):
    """run_sweep's guard: unchanged inputs pass; a changed one raises, naming the variant and the tensor."""
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    before = dict(q=q.clone(), k=k.clone(), v=v.clone())
    bench.check_inputs_untouched(before, dict(q=q, k=k, v=v), "sage1")
    k[0, 0, 3, 5] += 1.0
    with pytest.raises(RuntimeError, match="sage1 wrote into the shared inputs k;"):
        bench.check_inputs_untouched(before, dict(q=q, k=k, v=v), "sage1")
