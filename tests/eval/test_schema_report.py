"""The result schema rejects malformed files; the report merges files into one table and valid PNGs."""
import copy
import json

import pytest

from distr_patch.eval.report import PLOT_NAMES, loss, markdown, write_plots
from distr_patch.eval.results import ResultFile, load_results
from distr_patch.eval.schema import SchemaError, validate
from distr_patch.eval.variants import Variant


def _eval_result(tmp_path, name, values, kind="eval-lm"):
    rf = ResultFile(tmp_path / f"{name}.json", kind=kind, model={"name": name, "model_type": "llama"}, config={},
                    provenance={"torch": "x", "transformers": "x", "triton": "x", "device": "cpu", "gpu": None,
                                "git_commit": None, "seed": 0})
    rf.add_dataset("perplexity", "text", 100)
    for (vname, g, setting), (ppl, ms) in zip([("exact", None, None), ("G2", 2, "paper"), ("G4", 4, "paper")], values):
        rf.add_variant(Variant(vname, g, setting, {} if g is None else {"group_size": g, "exact_layers": [0]}),
                       {"perplexity": (ppl, "perplexity")}, {"perplexity": {"p20_ms": ms, "p50_ms": ms, "p80_ms": ms}})
    rf.save("complete")
    return rf


def test_diff_baseline_speedup(tmp_path):
    data = _eval_result(tmp_path, "m", [(10.0, 100.0), (12.5, 50.0), (20.0, 25.0)]).data
    g2 = data["variants"][1]
    assert g2["metrics"]["perplexity"] == {"value": 12.5, "baseline": 10.0, "diff": 2.5, "higher_is_better": False,
                                           "dataset": "perplexity"}
    assert g2["speedup"] == pytest.approx(2.0) and g2["layers"] == {"exact_layers": [0]}
    assert loss(g2["metrics"]["perplexity"]) == 2.5
    assert loss({"diff": -0.1, "higher_is_better": True}) == 0.1


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("provenance"), r"\$: missing 'provenance'"),
    (lambda d: d["variants"][1]["metrics"]["perplexity"].update(value="high"), r"\$.variants\[1\].metrics.perplexity.value"),
    (lambda d: d.update(kind="eval-xyz"), r"\$.kind: 'eval-xyz' is not one of"),
    (lambda d: d.update(schema_version=99), r"\$.schema_version"),
    # a bench point without its unit passed, then `report` died on a KeyError
    (lambda d: d["variants"][0]["latency"].update(prefill=[{"measure": "prefill", "batch": 1, "p20_ms": 1.0,
                                                            "p50_ms": 1.0, "p80_ms": 1.0, "throughput": 1.0}]),
     r"\$.variants\[0\].latency.prefill\[0\]: missing 'throughput_unit'"),
])
def test_schema_rejects(tmp_path, mutate, match):
    data = copy.deepcopy(_eval_result(tmp_path, "m", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)]).data)
    validate(data)
    mutate(data)
    with pytest.raises(SchemaError, match=match):
        validate(data)


def test_report_merges_files(tmp_path):
    a = _eval_result(tmp_path, "model-a", [(10.0, 100.0), (12.5, 50.0), (20.0, 25.0)])
    b = _eval_result(tmp_path, "model-b", [(5.0, 10.0), (5.5, 8.0), (6.0, 6.0)])
    results = load_results([a.path, b.path])
    table = markdown(results)
    assert "| model-a | G2 | 2 | paper | 12.5 (+2.5) |" in table
    assert "| model-b | G4 | 4 | paper | 6 (+1) |" in table
    written = write_plots(results, tmp_path / "plots")
    assert [p.name for p in written] == [PLOT_NAMES[0], PLOT_NAMES[2]]  # no bench file: no latency-vs-length plot
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_load_results_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "eval-lm"}))
    with pytest.raises(SchemaError, match="bad.json is not a distr_patch result"):
        load_results([bad])
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_results([tmp_path / "none.json"])


@pytest.mark.parametrize("name,content,match", [
    ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), r"x.png is not JSON \(not a text file\)"),
    ("calibration.json", b'{"schema_version": 1, "kind": "calibrate"}',
     r"calibration.json is a `calibrate` output; report takes the result.json of `eval lm`"),
    ("finetune.json", b'{"schema_version": 1, "kind": "finetune"}', r"finetune.json is a `finetune` output"),
    ("op.json", b'{"rows": []}', r"op.json is a `bench op --json` file \(give it as --speed-from\)"),
])
def test_load_results_names_what_a_file_is(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SchemaError, match=match):
        load_results([tmp_path / name])


def test_load_results_of_a_calibrate_run_directory(tmp_path):
    (tmp_path / "calibration.json").write_text("{}")
    with pytest.raises(SchemaError, match="is a `calibrate` run directory; report takes the result.json"):
        load_results([tmp_path / "result.json"])


def test_runs_of_one_model_are_told_apart(tmp_path):
    """Two runs of the same model: rows and plot labels carry the run directory's name."""
    from distr_patch.eval.results import label_runs

    paths = []
    for run in ("run-a", "run-b"):
        (tmp_path / run).mkdir()
        paths.append(_eval_result(tmp_path / run, "tiny", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)]).path)
    other = _eval_result(tmp_path, "other", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)]).path
    results = label_runs([*paths, other], load_results([*paths, other]))
    assert [r["model"]["name"] for r in results] == ["tiny (run-a)", "tiny (run-b)", "other"]
    table = markdown(results)
    assert "| tiny (run-a) | G2 |" in table and "| tiny (run-b) | G2 |" in table
    assert load_results([paths[0]])[0]["model"]["name"] == "tiny"  # the files are left as they are
    same = label_runs([paths[0], paths[0]], load_results([paths[0], paths[0]]))
    assert [r["model"]["name"] for r in same] == ["tiny (#1)", "tiny (#2)"]


def _bench_result(tmp_path, variants=("exact", "G2"), status="complete"):
    rf = ResultFile(tmp_path / "bench.json", kind="bench-model", model={"name": "b", "model_type": "llama"},
                    config={}, provenance={"torch": "x", "transformers": "x", "triton": "x", "device": "cpu",
                                           "gpu": None, "git_commit": None, "seed": 0})
    for name, ms in zip(variants, (10.0, 5.0)):
        point = {"measure": "prefill", "batch": 1, "seq_len": 32, "p20_ms": ms, "p50_ms": ms, "p80_ms": ms,
                 "throughput": 32 / ms * 1e3, "throughput_unit": "tokens/s", "peak_mem_mib": None}
        rf.add_variant(Variant(name, None if name == "exact" else 2, None if name == "exact" else "paper",
                               {} if name == "exact" else {"group_size": 2}), {}, {"prefill": [point]})
    rf.save(status)
    return rf


def test_report_of_a_run_stopped_in_its_first_variant(tmp_path):
    """Ctrl-C while exact attention runs leaves a file with no variant: the run's own report.md (and `report`) said
    IndexError; the table is now empty and the note says what happened."""
    rf = _bench_result(tmp_path, variants=(), status="interrupted")
    table = markdown(load_results([rf.path]))
    assert "- b (bench-model): status interrupted, 0 variant(s) recorded (stopped early" in table
    assert "### Latency" not in table  # no finished point: no header-only table
    assert write_plots(load_results([rf.path]), tmp_path / "plots") == []


def test_report_says_which_runs_are_unfinished(tmp_path):
    """A run still writing (or one that died) read `running` and looked complete in the table."""
    (tmp_path / "a").mkdir()
    done = _bench_result(tmp_path / "a")
    running = _eval_result(tmp_path, "m", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)])
    running.save("running")
    table = markdown(load_results([done.path, running.path]))
    assert "| b | cpu | prefill | 1 | 32 | G2 | 5 | 6400 tokens/s |  | 2.00x |" in table
    assert "peak GPU mem [MiB]" in table  # blank on the CPU: not measured there
    assert "- m (eval-lm): status running, 3 variant(s) recorded (still running, or stopped by an error)" in table
    assert "b (bench-model): status" not in table


def test_notes_of_several_runs_say_which_run_they_belong_to(tmp_path):
    a = _eval_result(tmp_path, "eager", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)])
    b = _eval_result(tmp_path, "compiled", [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0)])
    b.data["notes"] = ["--compile reduce-overhead: windows scored through torch.compile"]
    b.save("complete")
    assert "- --compile reduce-overhead" in markdown(load_results([b.path]))  # one run: as it is
    both = markdown(load_results([a.path, b.path]))
    assert "- compiled (eval-lm): --compile reduce-overhead" in both and "- --compile" not in both
