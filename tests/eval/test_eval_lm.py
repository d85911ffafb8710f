"""``run_lm`` end to end on a tiny model: differences to exact, the JSON, the plots, Ctrl-C."""
import json

import pytest

from distr_patch.eval import lm as lm_module
from distr_patch.eval.config import RunConfig
from distr_patch.eval.lm import run_lm
from distr_patch.eval.schema import validate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _config(tiny_lm_dir, text_file, tmp_path, **changes):
    base = dict(model=str(tiny_lm_dir), data=str(text_file), window=64, stride=32, max_windows=3,
                group_sizes=[1, 2], settings=["paper"], distr={"block_m": 32}, output_dir=str(tmp_path),
                run_name="run", device="cpu")
    return RunConfig.merge(flags={**base, **changes})


@pytest.fixture(scope="module")
def finished(tiny_lm_dir, text_file, tmp_path_factory):
    out = run_lm(_config(tiny_lm_dir, text_file, tmp_path_factory.mktemp("out")), progress=False)
    return out, json.loads(out.result.path.read_text())


def test_g1_matches_exact_and_g2_differs(finished):
    _, data = finished
    by_name = {v["name"]: v for v in data["variants"]}
    assert list(by_name) == ["exact", "G1", "G2"]
    g1, g2 = by_name["G1"]["metrics"]["perplexity"], by_name["G2"]["metrics"]["perplexity"]
    assert g1["baseline"] == by_name["exact"]["metrics"]["perplexity"]["value"]
    assert abs(g1["diff"]) < 1e-4 * g1["baseline"]
    assert abs(g2["diff"]) > 1e-3 * g2["baseline"]
    assert by_name["G2"]["distr_config"]["group_size"] == 2 and by_name["G2"]["distr_config"]["fusion"] == "mean"


def test_json_follows_schema_with_provenance(finished):
    _, data = finished
    validate(data)
    assert data["status"] == "complete"
    assert data["datasets"]["perplexity"]["num_examples"] > 0
    for key in ("torch", "transformers", "triton", "ptxas_sm90", "git_commit", "seed", "command", "data_packages"):
        assert key in data["provenance"]
    assert isinstance(data["provenance"]["command"], list) and "gensim" in data["provenance"]["data_packages"]
    assert data["model"]["model_type"] == "llama" and data["model"]["num_layers"] == 2


def test_plots_and_table_written(finished):
    out, _ = finished
    for name in ("accuracy_loss_vs_g.png", "speed_accuracy_tradeoff.png"):
        assert (out.directory / name).read_bytes()[:8] == PNG_MAGIC
    table = (out.directory / "report.md").read_text()
    assert "| G2 | 2 | paper |" in table and "perplexity (Δ vs exact)" in table


def test_ctrl_c_keeps_finished_variants(tiny_lm_dir, text_file, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = lm_module.perplexity

    def interrupted_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_module, "perplexity", interrupted_on_third)
    out = run_lm(_config(tiny_lm_dir, text_file, tmp_path), progress=False)
    data = json.loads(out.result.path.read_text())
    assert out.interrupted and data["status"] == "interrupted"
    assert [v["name"] for v in data["variants"]] == ["exact", "G1"]
    validate(data)
    assert (out.directory / "report.md").is_file()


def test_multiple_choice_task_recorded(tiny_lm_dir, text_file, tmp_path):
    rows = tmp_path / "mc.jsonl"
    rows.write_text("\n".join(json.dumps({"question": "the cat", "choices": ["sat on the hill", "red fish"],
                                          "answer": i % 2}) for i in range(4)))
    out = run_lm(_config(tiny_lm_dir, text_file, tmp_path, perplexity=False, tasks=[str(rows)], group_sizes=[2],
                         plots=False), progress=False)
    data = json.loads(out.result.path.read_text())
    metric = data["variants"][1]["metrics"][f"{rows}/accuracy"]
    assert metric["baseline"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert data["datasets"][str(rows)]["num_examples"] == 4
    assert data["datasets"][str(rows)]["split"] == "train"  # a file is one split


def test_tasks_take_their_own_split(tiny_lm_dir, text_file, tmp_path):
    """--task-split: the tasks' split apart from --split (the perplexity data's): HellaSwag's test split has no
    labels, so the Llama config scores WikiText's test split and the tasks' validation split."""
    folder = tmp_path / "mc"
    folder.mkdir()
    for split, n in (("train", 2), ("validation", 3)):
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(
            {"question": "the cat", "choices": ["sat on the hill", "red fish"], "answer": i % 2}) for i in range(n)))
    for task_split, n in ((None, 2), ("validation", 3)):
        out = run_lm(_config(tiny_lm_dir, text_file, tmp_path, perplexity=False, tasks=[str(folder)], group_sizes=[1],
                             plots=False, task_split=task_split), progress=False)
        data = json.loads(out.result.path.read_text())
        assert data["datasets"][str(folder)]["num_examples"] == n
        assert data["datasets"][str(folder)]["split"] == (task_split or "train")
    from pathlib import Path

    yaml = Path(__file__).resolve().parents[2] / "configs" / "llama-3.2-1b.yaml"
    assert RunConfig.merge(str(yaml)).task_split == "validation"


def test_device_map_auto_loads_and_runs_patched(finished, tiny_lm_dir, text_file, tmp_path):
    """``--device-map auto`` (accelerate places the model; here everything lands on the CPU)."""
    _, plain = finished
    out = run_lm(_config(tiny_lm_dir, text_file, tmp_path, device_map="auto", group_sizes=[2]), progress=False)
    data = json.loads(out.result.path.read_text())
    by_name = {v["name"]: v for v in data["variants"]}
    ref = {v["name"]: v for v in plain["variants"]}
    for name in ("exact", "G2"):
        got = by_name[name]["metrics"]["perplexity"]["value"]
        assert got == pytest.approx(ref[name]["metrics"]["perplexity"]["value"], rel=1e-5)


def test_distr_config_files_are_variants(tiny_lm_dir, text_file, tmp_path):
    """--distr-configs: a calibrated per-layer config (JSON file) runs as a variant of its own, as it is."""
    from distr_patch import DistrConfig, patched
    from distr_patch.eval.perplexity import perplexity
    from distr_patch.models import load_model

    per_layer = DistrConfig(exact_layers=(0,), layer_overrides={1: dict(group_size=4, fusion="mean", block_m=32,
                                                                          exact_window=0)})
    per_layer.save(tmp_path / "calibrated.json")
    cfg = _config(tiny_lm_dir, text_file, tmp_path, group_sizes=[], distr={},
                  distr_configs=[str(tmp_path / "calibrated.json")])
    data = json.loads(run_lm(cfg, progress=False).result.path.read_text())
    assert [v["name"] for v in data["variants"]] == ["exact", "cfg:calibrated"]
    v = data["variants"][1]
    assert v["group_size"] == 4 and v["setting"] == "file:calibrated"
    assert DistrConfig.from_dict(v["distr_config"]) == per_layer
    # the same perplexity as the harness computes with that config patched in by hand
    loaded = load_model(str(tiny_lm_dir), "lm")
    ids = loaded.processor(text_file.read_text(), return_tensors="pt").input_ids[0]
    with patched(loaded.model, per_layer):
        want = perplexity(loaded.model, ids, window=64, stride=32, max_windows=3, progress=False)["metrics"]
    assert v["metrics"]["perplexity"]["value"] == pytest.approx(want["perplexity"], rel=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(distr_configs=["missing.json"]), "--distr-configs: missing.json is not a file"),
    (dict(group_sizes=[]), "--group-sizes: give at least one group size"),
    (dict(distr_configs=3), "--distr-configs: expected a list of DistrConfig JSON files"),
])
def test_distr_config_files_bad_input(tiny_lm_dir, text_file, tmp_path, changes, message):
    from distr_patch.eval.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _config(tiny_lm_dir, text_file, tmp_path, **changes)


def test_distr_configs_from_yaml_as_one_string(tiny_lm_dir, text_file, tmp_path):
    path = DistrConfig_json(tmp_path / "one.json")
    (tmp_path / "run.yaml").write_text(f"distr_configs: {path}\n")
    cfg = RunConfig.merge(str(tmp_path / "run.yaml"), flags=dict(model=str(tiny_lm_dir), data=str(text_file)))
    assert cfg.distr_configs == [str(path)]


def test_distr_config_file_not_a_config(tmp_path):
    from distr_patch.eval.config import ConfigError
    from distr_patch.eval.variants import build_variants

    bad = tmp_path / "bad.json"
    bad.write_text('{"group_size": 3}')
    with pytest.raises(ConfigError, match="--distr-configs: .*bad.json is not a DistrConfig JSON file"):
        build_variants([2], ["recommended"], {}, [str(bad)])
    bad.write_text("not json")
    with pytest.raises(ConfigError, match="is not a DistrConfig JSON file"):
        build_variants([2], ["recommended"], {}, [str(bad)])
    (tmp_path / "a").mkdir()
    good = DistrConfig_json(tmp_path / "a" / "c.json"), DistrConfig_json(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="two files named 'c'"):
        build_variants([2], ["recommended"], {}, [str(p) for p in good])


def DistrConfig_json(path):
    from distr_patch import DistrConfig

    DistrConfig().save(path)
    return path


def test_file_variant_group_size_counts_the_base(tmp_path):
    """A file whose base is G=4 with one layer overridden to G=2 still runs G=4 layers: the variant says 4."""
    from distr_patch import DistrConfig
    from distr_patch.eval.variants import file_variant

    DistrConfig(group_size=4, layer_overrides={1: dict(group_size=2)}).save(tmp_path / "mixed.json")
    v = file_variant(str(tmp_path / "mixed.json"))
    assert (v.name, v.group_size, v.setting) == ("cfg:mixed", 4, "file:mixed")


def test_timing_notes_say_what_time_p50_measured():
    """The report's notes follow the device and --compile: CPU runs name the reference path, compiled runs the
    compile, and GPU eager runs warn that a window's time is not the attention's speed."""
    from distr_patch.eval.lm import timing_notes
    from distr_patch.eval.runner import CPU_NOTE

    assert timing_notes("cpu", None, perplexity=True) == [CPU_NOTE]
    cpu_compiled = timing_notes("cpu", "default", perplexity=True)
    assert cpu_compiled[0] == CPU_NOTE and cpu_compiled[1].startswith("--compile default")
    [gpu_eager] = timing_notes("cuda", None, perplexity=True)
    assert gpu_eager.startswith("time p50") and "bench model" in gpu_eager
    [gpu_compiled] = timing_notes("cuda", "reduce-overhead", perplexity=True)
    assert gpu_compiled.startswith("--compile reduce-overhead")
    assert timing_notes("cuda", None, perplexity=False) == []
    assert timing_notes("cpu", "default", perplexity=False) == [CPU_NOTE]
