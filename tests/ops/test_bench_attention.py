"""scripts/bench_attention.py's variants that flip module switches (how backend="sdpa" forms Q_eff) run with their
switch, under the interpreter, and leave it restored."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
interpreter_only = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="CPU tensors through Triton need TRITON_INTERPRET=1")


@pytest.fixture
def bench():
    """scripts/bench_attention.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "scripts" / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert [r["variant"] for r in data["rows"]][-1] == "distr G=1"
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("|")


def test_bench_op_usage_names_the_command(capsys):
    from distr_patch.cli.main import main

    with pytest.raises(SystemExit):
        main(["bench", "op", "--causal", "7"])
    assert "usage: distr-patch bench op" in capsys.readouterr().err
