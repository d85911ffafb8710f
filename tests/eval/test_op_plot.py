"""distr_patch/eval/op_plot.py and scripts/plot_bench_op.py: the operator bench's JSON drawn as speed vs SDPA-flash."""
import json

import pytest

from distr_patch.eval.config import ConfigError
from distr_patch.eval.op_plot import load_rows, plot_op, speed_series

pytest.importorskip("matplotlib")


def _rows():
    """Forward rows at 2 head dims x causal x 2 lengths: flash, cuDNN and two DistrAttention variants, with times
    that differ per shape (so a ratio taken at the wrong shape shows)."""
    rows = []
    for d in (64, 128):
        for causal in (False, True):
            for n in (1024, 4096):
                flash = n / 1000 * (2 if d == 128 else 1) * (0.5 if causal else 1)
                for name, speed, err in (("sdpa-flash", 1.0, 2e-3), ("sdpa-cudnn", 1.5, 2e-3),
                                         ("distr G=2 mean", 1.2 + n / 1e5, 0.6), ("distr G=2 mean sdpa", 1.4, 0.6)):
                    rows.append(dict(d=d, N=n, B=1, H=1, causal=causal, variant=name, ms=flash / speed, rel_err=err))
    return rows


HEADER = {"kind": "bench-op", "gpu": "Test GPU", "timing": {"rounds": 3, "settle_ms": 200.0, "rep_ms": 10}}


def test_speed_series_is_flash_time_over_the_variants_time_per_length():
    rows = _rows()
    got = speed_series(rows, 128, True, "distr G=2 mean")
    assert [n for n, _ in got] == [1024, 4096]
    assert got[0][1] == pytest.approx(1.2 + 1024 / 1e5) and got[1][1] == pytest.approx(1.2 + 4096 / 1e5)
    rows = [r for r in rows if not (r["N"] == 4096 and r["variant"] == "sdpa-flash" and r["d"] == 64)]
    assert [n for n, _ in speed_series(rows, 64, False, "distr G=2 mean")] == [1024]  # no baseline at 4096


def test_plot_op_writes_a_png(tmp_path):
    out = plot_op(HEADER, _rows(), tmp_path / "sub" / "op.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_op_backward_rows_and_all_variants(tmp_path):
    rows = [{**{k: v for k, v in r.items() if k != "rel_err"}, "err_vs_exact": r["rel_err"]} for r in _rows()]
    out = plot_op({"kind": "bench-op-backward", "timing": None}, rows, tmp_path / "bwd.png", variants=["all"])
    assert out.stat().st_size > 10_000


def test_plot_op_names_unknown_variants_and_a_missing_baseline(tmp_path):
    with pytest.raises(ConfigError, match="'distr G=9' not in the file"):
        plot_op(HEADER, _rows(), tmp_path / "x.png", variants=["distr G=9"])
    with pytest.raises(ConfigError, match="no 'sdpa-flash' rows"):
        plot_op(HEADER, [r for r in _rows() if r["variant"] != "sdpa-flash"], tmp_path / "x.png")
    with pytest.raises(ConfigError, match="only sdpa-flash rows"):
        plot_op(HEADER, [r for r in _rows() if r["variant"] == "sdpa-flash"], tmp_path / "x.png", variants=["all"])
    assert not (tmp_path / "x.png").exists()


def test_bad_figure_paths_and_rows_are_named_errors(tmp_path, load_script, capsys):
    with pytest.raises(ConfigError, match=r"figure path .*op.xyz: matplotlib cannot write .xyz; use one of .*\.png"):
        plot_op(HEADER, _rows(), tmp_path / "op.xyz")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**HEADER, "rows": [{"d": 64, "N": 1024, "variant": "sdpa-flash"}]}))
    with pytest.raises(ConfigError, match=r"row 0 lacks causal, ms"):
        load_rows(broken)
    bench = load_script("bench_attention")  # refused before any timing, not after the run
    with pytest.raises(SystemExit) as exc:
        bench.main(["--plot", str(tmp_path / "op.xyz")])
    assert exc.value.code == 2 and "--plot: figure path" in capsys.readouterr().err


def test_load_rows_refuses_other_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        load_rows(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "bench-model", "variants": []}))
    with pytest.raises(ConfigError, match="not a `scripts/bench_attention.py --json` file"):
        load_rows(other)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_rows(tmp_path / "missing.json")


def test_plot_bench_op_script(load_script, tmp_path, capsys):
    module = load_script("plot_bench_op")
    src = tmp_path / "sweep.json"
    src.write_text(json.dumps({**HEADER, "rows": _rows()}))
    assert module.main([str(src), str(tmp_path / "op.png"), "--variants", "distr G=2 mean sdpa"]) == 0
    assert (tmp_path / "op.png").stat().st_size > 10_000 and "wrote" in capsys.readouterr().out
    assert module.main([str(src), str(tmp_path / "op2.png"), "--variants", "nope"]) == 2
    assert "'nope' not in the file" in capsys.readouterr().err


def test_bench_refuses_plot_with_tune(load_script, capsys):
    bench = load_script("bench_attention")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tune", "--plot", "x.png"])
    assert exc.value.code == 2 and "--plot" in capsys.readouterr().err
