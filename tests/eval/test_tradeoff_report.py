"""``report --speed-from``: accuracy loss from an eval result, speedup from a bench model / bench op file."""
import json

import pytest

from distr_patch.cli.main import main
from distr_patch.eval.config import ConfigError
from distr_patch.eval.results import ResultFile
from distr_patch.eval.speed import load_speeds, op_settings
from distr_patch.eval.tradeoff import combine, draw
from distr_patch.eval.variants import Variant, distr_config_dict

PROV = {"torch": "x", "transformers": "x", "triton": "x", "device": "cuda", "gpu": "NVIDIA H100", "git_commit": None,
        "seed": 0}
# name, G, setting; the eval file has all four, the bench files no G2-rec
VARIANTS = [("exact", None, None), ("G2", 2, "paper"), ("G4", 4, "paper"), ("G2-rec", 2, "recommended")]


def _variant(name, g, setting):
    return Variant(name, g, setting, {} if g is None else distr_config_dict(setting, g, {}))


def _eval_file(tmp_path):
    rf = ResultFile(tmp_path / "eval-run" / "result.json", kind="eval-lm", model={"name": "m", "model_type": "llama"},
                    config={}, provenance={**PROV, "device": "cpu", "gpu": None})
    rf.add_dataset("perplexity", "text", 100)
    for (name, g, setting), ppl in zip(VARIANTS, [10.0, 12.5, 20.0, 10.5]):
        # CPU timings that say DistrAttention is slower: --speed-from must not use them
        rf.add_variant(_variant(name, g, setting), {"perplexity": (ppl, "perplexity")},
                       {"perplexity": {"p20_ms": 1.0, "p50_ms": 1.0 if g is None else 3.0, "p80_ms": 1.0}})
    rf.save("complete")
    return rf.path


def _point(measure, seq_len, ms):
    return {"measure": measure, "batch": 1, "seq_len": seq_len, "p20_ms": ms, "p50_ms": ms, "p80_ms": ms,
            "throughput": 1.0, "throughput_unit": "tokens/s", "peak_mem_mib": None}


def _bench_model_file(tmp_path):
    rf = ResultFile(tmp_path / "bench-run" / "result.json", kind="bench-model",
                    model={"name": "preset:llama-3.2-1b", "model_type": "llama"}, config={}, provenance=PROV)
    rf.add_dataset("inputs", "random", 0)
    prefill = {"exact": (10.0, 40.0), "G2": (5.0, 20.0), "G4": (4.0, 10.0)}  # G2: 2x at both, G4: 2.5x and 4x
    for name, g, setting in VARIANTS[:3]:
        rf.add_variant(_variant(name, g, setting), {}, {
            "prefill": [_point("prefill", 512, prefill[name][0]), _point("prefill", 1024, prefill[name][1])],
            "generate": [_point("generate", 512, 100.0 if g is None else 1000.0)]})  # left out by default
    rf.save("complete")
    return rf.path.parent


def _op_rows(with_settings=True):
    rows = []
    for n, flash in ((4096, 1.0), (16384, 4.0)):
        for variant, ms, kw in (("sdpa-flash", flash, None), ("sdpa-cudnn", flash / 2, None),
                                ("distr G=2 mean", 2.0, dict(group_size=2, fusion="mean", block_m=128)),
                                ("distr G=4 mean", 1.0, dict(group_size=4, fusion="mean", block_m=128)),
                                ("distr G=2 rank1 W128 c.5 bm32", 8.0, dict(group_size=2, fusion="rank1",
                                 exact_window=128, window_correction=0.5, block_m=32))):
            row = dict(d=64, N=n, B=32768 // n, H=32, causal=True, variant=variant, ms=ms)
            if kw is not None and with_settings:
                row["settings"] = op_settings(kw)
            rows.append(row)
    return rows


@pytest.mark.parametrize("with_settings", [True, False], ids=["settings", "legacy-names"])
def test_bench_op_speeds(tmp_path, with_settings):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"kind": "bench-op", "gpu": "NVIDIA H100", "rows": _op_rows(with_settings)}))
    speeds = load_speeds(path)
    by_name = {e.name: e for e in speeds.entries}
    assert "sdpa-cudnn" not in by_name  # a peer, not a DistrAttention setting
    assert by_name["sdpa-flash"].speedup == 1.0 and by_name["sdpa-flash"].settings is None
    assert by_name["distr G=2 mean"].speedup == pytest.approx(1.0)  # 0.5x and 2x
    assert by_name["distr G=4 mean"].speedup == pytest.approx(2.0) and by_name["distr G=4 mean"].points == 2
    assert speeds.find(distr_config_dict("paper", 4, {})).name == "distr G=4 mean"
    assert speeds.find(distr_config_dict("recommended", 2, {})) is None  # W128 c.5 but block_m 128, not 32
    assert speeds.find(distr_config_dict("recommended", 2, {"block_m": 32})).name == "distr G=2 rank1 W128 c.5 bm32"
    at = load_speeds(path, {"N": "16384", "causal": "1"})
    assert {e.name: e.speedup for e in at.entries}["distr G=2 mean"] == pytest.approx(2.0)
    assert "1 shapes (N=16384, causal=1)" in at.describe()


def test_report_speed_from_bench_model(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(_eval_file(tmp_path)), "--speed-from", str(_bench_model_file(tmp_path)),
                 "--output-dir", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "### Speed / accuracy trade-off" in md
    assert f"accuracy loss (y) from `{tmp_path / 'eval-run' / 'result.json'}`" in md
    assert (f"speedup (x) from `{tmp_path / 'bench-run' / 'result.json'}` (bench model, preset:llama-3.2-1b on "
            "NVIDIA H100; speedup vs exact attention, geometric mean over 2 points (measure=prefill))") in md
    assert "| m | G2 | 2 | paper | perplexity +2.5 | 2.00x | G2 |" in md
    assert "| m | G4 | 4 | paper | perplexity +10 | 3.16x | G4 |" in md  # sqrt(2.5 * 4)
    assert "- m G2-rec: closest G2: fusion rank1 vs mean, exact_window 128 vs 0, window_correction 0.5 vs 0.0" in md
    assert (out / "speed_accuracy_tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert "table:" in capsys.readouterr().out


def test_speed_at_and_plot_labels(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_path = _eval_file(tmp_path)
    data = json.loads(eval_path.read_text())
    t = combine([(eval_path, data)], load_speeds(_bench_model_file(tmp_path), {"seq_len": "1024"}))
    assert {p.variant: p.speedup for p in t.points} == pytest.approx({"G2": 2.0, "G4": 4.0})
    assert [u.split(":")[0] for u in t.unmatched] == ["m G2-rec"]
    fig, ax = plt.subplots()
    assert draw(ax, t)
    assert "from bench-run/result.json (bench model, NVIDIA H100)" in ax.get_xlabel()
    assert "from eval-run/result.json" in ax.get_ylabel() and "perplexity" in ax.get_ylabel()
    assert any("no speed for: m G2-rec" in x.get_text() for x in ax.texts)
    plt.close(fig)
    t.unmatched.append("lm cfg:mycfg: no bench variant with its settings")  # names hold ':' too
    fig, ax = plt.subplots()
    assert draw(ax, t)
    assert any("no speed for: m G2-rec, lm cfg:mycfg" in x.get_text() for x in ax.texts)
    plt.close(fig)


def test_speed_from_errors(tmp_path):
    eval_path = _eval_file(tmp_path)
    with pytest.raises(ConfigError, match=r"--speed-at batches: not a field .*fields: batch, measure"):
        load_speeds(_bench_model_file(tmp_path), {"batches": "1"})
    with pytest.raises(ConfigError, match="is a `eval-lm` result; give a `bench model`"):
        load_speeds(eval_path)
    with pytest.raises(ConfigError, match="needs --speed-from"):
        from argparse import Namespace

        from distr_patch.cli.report import run

        run(Namespace(results=[str(eval_path)], speed_from=None, speed_at={"N": "1"}, output_dir=str(tmp_path),
                      plots=False))


def _op_file(tmp_path, rows, kind="bench-op"):
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps({"kind": kind, "gpu": "NVIDIA H100", "rows": rows}))
    return path


def test_op_rows_of_the_sdpa_engine_pair_with_engine_sdpa_only(tmp_path):
    """`distr G=2 mean sdpa` (backend="sdpa") has the same operator settings as the fused kernel's row: an eval run
    with --distr engine=sdpa took the fused kernel's speedup, and one on the default engine took the SDPA engine's
    where the sweep had only that row."""
    rows = []
    for variant, ms, kw in (("sdpa-flash", 4.0, None), ("distr G=2 mean", 2.0, dict(group_size=2, fusion="mean")),
                            ("distr G=2 mean sdpa", 1.0, dict(group_size=2, fusion="mean", backend="sdpa"))):
        row = dict(d=64, N=4096, B=8, H=32, causal=True, variant=variant, ms=ms)
        if kw is not None:
            row["settings"] = op_settings(kw)
        rows.append(row)
    legacy = [{k: v for k, v in r.items() if k != "settings"} for r in rows]
    older = [dict(r, settings={k: v for k, v in r["settings"].items() if k != "engine"}) if "settings" in r else r
             for r in rows]
    for r in (rows, legacy, older):
        speeds = load_speeds(_op_file(tmp_path, r))
        assert speeds.find(distr_config_dict("paper", 2, {})).speedup == pytest.approx(2.0)
        assert speeds.find(distr_config_dict("paper", 2, {"engine": "sdpa"})).speedup == pytest.approx(4.0)
    only_sdpa = load_speeds(_op_file(tmp_path, [rows[0], rows[2]]))
    assert only_sdpa.find(distr_config_dict("paper", 2, {})) is None


def test_per_layer_settings_do_not_pair_with_one_op_row(tmp_path):
    """A calibrated config (G2 rank1 W128 base, most layers block_m 32 / window 64) took the base setting's operator
    speedup; it now pairs only with a bench variant of the same per-layer settings (bench model)."""
    speeds = load_speeds(_op_file(tmp_path, _op_rows()))
    base = distr_config_dict("recommended", 2, {"layer_overrides": {0: {"block_m": 32, "exact_window": 64}}})
    assert speeds.find(base) is None
    same = distr_config_dict("recommended", 2, {"layer_overrides": {0: {"block_m": 32}}, "block_m": 32})
    assert speeds.find(same).name == "distr G=2 rank1 W128 c.5 bm32"  # overrides equal to the row: still a match
    heads = distr_config_dict("recommended", 2, {"block_m": 32, "head_overrides": {1: {0: {"group_size": 1}}}})
    assert speeds.find(heads) is None
    eval_path = _eval_file(tmp_path)
    data = json.loads(eval_path.read_text())
    data["variants"][3]["distr_config"] = base
    t = combine([(eval_path, data)], speeds)
    assert [p.variant for p in t.points] == ["G2", "G4"]
    assert ("m G2-rec: closest distr G=2 rank1 W128 c.5 bm32: block_m 128 vs 32, layer_overrides set "
            "exact_window per layer (the bench variant runs one setting in all layers; time the config with "
            "`bench model --distr-configs`)") in t.unmatched


def test_speed_from_backward_rows_says_forward_backward(tmp_path):
    speeds = load_speeds(_op_file(tmp_path, _op_rows(with_settings=False), kind="bench-op-backward"))
    assert "(bench op --backward (forward+backward), operator on NVIDIA H100" in speeds.describe()


def test_speed_from_a_bench_run_without_variants(tmp_path):
    rf = ResultFile(tmp_path / "b" / "result.json", kind="bench-model", model={"name": "x", "model_type": "llama"},
                    config={}, provenance=PROV)
    rf.save("interrupted")
    with pytest.raises(ConfigError, match="--speed-from .*result.json: the run recorded no variant "
                                          r"\(status interrupted\)"):
        load_speeds(rf.path)
