"""``--lm-eval-tasks`` end to end, offline: a tiny model and a local lm-eval task from ``--lm-eval-include``."""
import json

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install -e '.[lm-eval]')")

from tiny_models import write_lm_eval_task  # noqa: E402

from distr_patch.cli.main import main  # noqa: E402
from distr_patch.integrations import hf  # noqa: E402
from distr_patch.eval.config import ConfigError, RunConfig  # noqa: E402
from distr_patch.eval.lm import run_lm  # noqa: E402
from distr_patch.eval.schema import validate  # noqa: E402

ROWS = 6


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_lm_eval_task(tmp_path_factory.mktemp("lm_eval_tasks"), ROWS)


def test_cli_records_task_accuracy_per_variant(tiny_lm_dir, task_dir, tmp_path, monkeypatch):
    operator_group_sizes = []
    real = hf.distr_attention

    def counted(*args, **kwargs):
        operator_group_sizes.append(kwargs["group_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "distr_attention", counted)
    code = main(["eval", "lm", "--model", str(tiny_lm_dir), "--lm-eval-tasks", "mytask",
                 "--lm-eval-include", str(task_dir), "--group-sizes", "1,2", "--settings", "paper",
                 "--distr", "block_m=32", "--no-perplexity", "--no-plots", "--batch-size", "4", "--device", "cpu",
                 "--output-dir", str(tmp_path), "--run-name", "r"])
    assert code == 0
    data = json.loads((tmp_path / "r" / "result.json").read_text())
    validate(data)
    by_name = {v["name"]: v["metrics"] for v in data["variants"]}
    assert list(by_name) == ["exact", "G1", "G2"]
    for metrics in by_name.values():
        assert set(metrics) == {"lm-eval/mytask/acc"}  # no stderr, alias or sample_len entries
        acc = metrics["lm-eval/mytask/acc"]
        assert 0.0 <= acc["value"] <= 1.0 and acc["value"] * ROWS == pytest.approx(round(acc["value"] * ROWS))
        assert acc["baseline"] == by_name["exact"]["lm-eval/mytask/acc"]["value"] and acc["higher_is_better"]
    assert by_name["G1"]["lm-eval/mytask/acc"]["diff"] == 0.0
    assert set(operator_group_sizes) == {1, 2}  # lm-eval's forwards ran on the patched model, not around it
    assert data["datasets"]["lm-eval"]["num_examples"] == ROWS
    assert data["datasets"]["lm-eval"]["rows_per_task"] == {"mytask": ROWS}
    assert data["config"]["lm_eval_include"] == str(task_dir)


def test_unknown_task_fails_before_model_load(task_dir, tmp_path):
    cfg = RunConfig.merge(flags=dict(model=str(tmp_path / "no-model"), lm_eval_tasks=["mytsk"], perplexity=False,
                                     lm_eval_include=str(task_dir), output_dir=str(tmp_path), device="cpu"))
    with pytest.raises(ConfigError, match=r"'mytsk' is not an lm-eval task.*did you mean mytask"):
        run_lm(cfg, progress=False)


def test_include_must_be_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="--lm-eval-include"):
        RunConfig.merge(flags=dict(model="m", lm_eval_include=str(tmp_path / "missing")))


@pytest.mark.parametrize("metric,higher", [
    ("lm-eval/wmt16/ter", False), ("lm-eval/t/brier_score", False), ("lm-eval/t/word_perplexity", False),
    ("lm-eval/t/bits_per_byte", False), ("lm-eval/arc_easy/acc", True), ("lm-eval/arc_easy/acc_norm", True),
    ("lm-eval/t/exact_match,none", True), ("perplexity", False), ("accuracy", True),
])
def test_direction_of_lm_eval_metrics(metric, higher):
    """A lower-is-better lm-eval metric (TER, Brier score) read as higher-is-better flipped its loss's sign."""
    from distr_patch.eval.results import higher_is_better

    assert higher_is_better(metric) is higher
