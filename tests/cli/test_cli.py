"""The command line: help texts, and errors that name the argument to fix (exit status 2, no traceback)."""
import json
import subprocess
import sys

import pytest
import torch

from distr_patch.cli.main import main


@pytest.mark.parametrize("argv,expect", [
    ([], ["eval", "bench", "report"]),
    (["eval"], ["lm", "vit"]),
    (["eval", "lm"], ["--model", "--group-sizes", "--window", "--stride", "--tasks", "--lm-eval-tasks", "--config"]),
    (["eval", "vit"], ["--data", "--vit-metric", "--image-column", "--label-column"]),
    (["bench", "model"], ["--seq-lens", "--batch-sizes", "--gen-tokens", "preset:"]),
    (["report"], ["RESULTS", "--output-dir"]),
])
def test_help(argv, expect, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in expect:
        assert word in out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1]
    assert err.startswith("distr-patch: error: ")
    return err


def test_missing_model_path(capsys, tmp_path):
    err = _error(["eval", "lm", "--model", "./no/such/dir", "--output-dir", str(tmp_path)], capsys)
    assert "--model ./no/such/dir: no such file or directory" in err


def test_model_required(capsys, tmp_path):
    assert "--model: required" in _error(["eval", "lm", "--output-dir", str(tmp_path)], capsys)


def test_unknown_text_column(capsys, tiny_lm_dir, text_file, tmp_path):
    err = _error(["eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--text-column", "txt",
                  "--output-dir", str(tmp_path)], capsys)
    assert "--text-column: column 'txt' is not in the data set (did you mean 'text'?)" in err


def test_missing_data(capsys, tiny_lm_dir, tmp_path):
    err = _error(["eval", "lm", "--model", str(tiny_lm_dir), "--data", "./nope.txt", "--output-dir", str(tmp_path)],
                 capsys)
    assert "--data ./nope.txt: no such file or directory" in err


def test_bad_group_sizes(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "lm", "--model", "x", "--group-sizes", "1,two"])
    assert e.value.code == 2
    assert "--group-sizes: '1,two' is not a comma-separated list of integers" in capsys.readouterr().err
    assert "--group-sizes: 3 is not a valid G; use values from 1, 2, 4, 8" in _error(
        ["eval", "lm", "--model", "x", "--group-sizes", "1,3"], capsys)


def test_bad_distr_field(capsys, tiny_lm_dir, tmp_path):
    err = _error(["eval", "lm", "--model", str(tiny_lm_dir), "--distr", "exact_windw=3",
                  "--output-dir", str(tmp_path)], capsys)
    assert "--distr" in err and "did you mean 'exact_window'" in err


def test_report_of_a_non_result(capsys, tmp_path):
    (tmp_path / "x.json").write_text("{}")
    assert "is not a distr_patch result: $: missing 'schema_version'" in _error(["report", str(tmp_path / "x.json")],
                                                                                 capsys)


def test_end_to_end_and_report(tiny_lm_dir, text_file, tmp_path, capsys):
    argv = ["eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--window", "64", "--stride", "32",
            "--max-windows", "2", "--group-sizes", "2", "--settings", "paper", "--distr", "block_m=32",
            "--output-dir", str(tmp_path), "--run-name", "a"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| G2 | 2 | paper |" in out and "results: " in out
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "a" / "result.json"), "--output-dir",
                 str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "accuracy_loss_vs_g.png").is_file()
    assert json.loads((tmp_path / "a" / "result.json").read_text())["config"]["group_sizes"] == [2]


def test_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "distr_patch", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "distr-patch" in out.stdout


def test_bench_runs_without_datasets_and_evaluate(tiny_lm_dir, tmp_path):
    """The GPU image has neither: bench model must not import them."""
    code = ("import sys; sys.modules['datasets'] = None; sys.modules['evaluate'] = None\n"
            "from distr_patch.cli.main import main\n"
            f"sys.exit(main(['bench', 'model', '--model', {str(tiny_lm_dir)!r}, '--seq-lens', '32,64', "
            "'--batch-sizes', '1', '--gen-tokens', '2', '--gen-prompt-len', '16', '--warmup', '0', '--repeats', '1', "
            f"'--group-sizes', '2', '--distr', 'block_m=32', '--output-dir', {str(tmp_path)!r}, '--run-name', 'b']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "b" / "result.json").read_text())
    points = data["variants"][1]["latency"]["prefill"]
    assert [p["seq_len"] for p in points] == [32, 64] and data["variants"][1]["latency"]["generate"]
    assert (tmp_path / "b" / "latency_vs_seq_len.png").is_file()


def test_bench_op_passes_arguments_to_the_script(capsys, monkeypatch, tmp_path):
    from distr_patch.cli import bench_op

    script = tmp_path / "bench_attention.py"
    script.write_text("def main(argv):\n    print('got', argv)\n    return 0\n")
    monkeypatch.setattr(bench_op, "SCRIPT", script)
    assert main(["bench", "op", "--quick", "--n", "128"]) == 0
    assert "got ['--quick', '--n', '128']" in capsys.readouterr().out
    monkeypatch.setattr(bench_op, "SCRIPT", tmp_path / "missing.py")
    assert "which is not in this checkout" in _error(["bench", "op"], capsys)


def test_bench_model_cuda_graph_needs_a_cuda_device(tiny_lm_dir, tmp_path):
    from distr_patch.eval.bench import run_bench
    from distr_patch.eval.config import ConfigError, RunConfig
    from distr_patch.eval.timing import cuda_graphed

    cfg = RunConfig.merge(flags=dict(model=str(tiny_lm_dir), device="cpu", cuda_graph=True, output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="--cuda-graph: CUDA graphs need a CUDA device"):
        run_bench(cfg)
    with pytest.raises(ValueError, match="need a CUDA device"):
        cuda_graphed(lambda: None, "cpu")
    with pytest.raises(ConfigError, match="--cuda-graph: expected true or false"):
        RunConfig.merge(flags=dict(cuda_graph="yes"))


def test_bench_model_compile_times_the_compiled_model(tiny_lm_dir, tmp_path, monkeypatch):
    """--compile MODE: each variant's prefills run through a fresh torch.compile(model, mode=...) (exact and
    DistrAttention alike), at least three warm-up calls; the mode is in the result's config and notes."""
    compiled = []
    real = torch.compile

    def spy(model, **kw):
        compiled.append(kw)
        return real(model, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    assert main(["bench", "model", "--model", str(tiny_lm_dir), "--seq-lens", "32", "--batch-sizes", "1",
                 "--gen-tokens", "2", "--gen-prompt-len", "16", "--warmup", "0", "--repeats", "2",
                 "--group-sizes", "2", "--distr", "block_m=32", "--compile", "default", "--no-plots",
                 "--output-dir", str(tmp_path), "--run-name", "c"]) == 0
    assert compiled == [dict(mode=None, dynamic=False)] * 2  # the exact variant and G=2
    data = json.loads((tmp_path / "c" / "result.json").read_text())
    assert data["config"]["compile"] == "default"
    assert any(n.startswith("--compile default") for n in data["notes"])
    assert all(v["latency"]["prefill"][0]["p50_ms"] > 0 for v in data["variants"])


def test_eval_lm_compile_scores_perplexity_compiled(tiny_lm_dir, text_file, tmp_path, monkeypatch):
    """eval lm --compile MODE: each variant's perplexity windows go through a fresh torch.compile(model); exact
    attention compiled gives the eager perplexity to fp32 rounding."""
    compiled = []
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(kw) or real(model, **kw))
    flags = ["eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--window", "64", "--stride", "32",
             "--max-windows", "3", "--group-sizes", "2", "--settings", "recommended", "--distr", "block_m=32",
             "--no-plots", "--output-dir", str(tmp_path)]
    assert main([*flags, "--run-name", "eager"]) == 0
    assert compiled == []
    assert main([*flags, "--run-name", "compiled", "--compile", "default"]) == 0
    assert compiled == [dict(mode=None, dynamic=False)] * 2  # the exact variant and G=2
    eager, comp = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("eager", "compiled"))
    assert any(n.startswith("--compile default: perplexity windows") for n in comp["notes"])
    ppl = [{v["name"]: v["metrics"]["perplexity"]["value"] for v in r["variants"]} for r in (eager, comp)]
    assert ppl[1]["exact"] == pytest.approx(ppl[0]["exact"], rel=1e-4)
    assert ppl[1]["G2"] == pytest.approx(ppl[0]["G2"], rel=0.05)  # grouping may see other last bits


def test_compile_errors_name_the_flag(tmp_path, capsys):
    from distr_patch.eval.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="--compile: 'fast' is not a torch.compile mode; expected one of default"):
        RunConfig.merge(flags=dict(compile="fast"))
    with pytest.raises(ConfigError, match="--cuda-graph and --compile: pick one"):
        RunConfig.merge(flags=dict(compile="reduce-overhead", cuda_graph=True))
    err = _error(["eval", "lm", "--model", "x", "--no-perplexity", "--tasks", "t", "--compile", "default",
                  "--output-dir", str(tmp_path)], capsys)
    assert "--compile: it compiles the perplexity windows, and --no-perplexity turns them off" in err


def test_a_capture_replays_the_eager_mask_decisions(monkeypatch):
    """While a CUDA stream captures, transformers builds the causal mask as a tensor (it cannot read the position
    ids or a padding mask then), so a graphed prefill would time masked attention. ``EagerMaskDecisions`` replays
    the eager call's answers during the capture: the patched model's attention gets no mask and is causal, as
    eagerly. Simulated on the CPU by making transformers' capture probe say True."""
    from transformers import masking_utils
    from transformers.utils import import_utils

    from distr_patch import DistrConfig, patch_model
    from distr_patch.eval.timing import MASK_DECISIONS, EagerMaskDecisions
    from distr_patch.integrations import hf
    from tiny_models import tiny_llama

    seen = []

    def recording(*args, **kw):
        seen.append((kw.get("attention_mask") is None, kw.get("causal")))
        return hf_distr(*args, **kw)

    hf_distr = hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", recording)
    model = tiny_llama(vocab_size=64)
    patch_model(model, DistrConfig.paper(block_m=32, exact_below=1))
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(0))
    originals = [getattr(masking_utils, name) for name in MASK_DECISIONS]
    decisions = EagerMaskDecisions()
    with torch.no_grad():
        with decisions.recording():
            eager = model(ids, use_cache=False).logits
        assert seen and all(no_mask and causal for no_mask, causal in seen)
        assert decisions.answers == {"find_packed_sequence_indices": [None], "_ignore_causal_mask_sdpa": [True]}
        monkeypatch.setattr(import_utils, "is_cuda_stream_capturing", lambda: True)
        seen.clear()
        model(ids, use_cache=False)  # "captured" without the replay: a mask tensor, not the causal path
        assert seen and not any(no_mask for no_mask, _ in seen)
        seen.clear()
        with decisions.replaying():
            replayed = model(ids, use_cache=False).logits
        assert seen and all(no_mask and causal for no_mask, causal in seen)
    torch.testing.assert_close(replayed, eager)
    assert [getattr(masking_utils, name) for name in MASK_DECISIONS] == originals  # put back
    with pytest.raises(KeyError), decisions.replaying():
        raise KeyError("x")
    assert [getattr(masking_utils, name) for name in MASK_DECISIONS] == originals


def test_a_config_setting_the_command_does_not_read_is_named(tmp_path, capsys):
    """eval vit has no --compile: a YAML ``compile:`` would change nothing, so it is named, not silently dropped."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: ./no/such/dir\ncompile: default\nseq_lens: [64]\nbatch_size: 2\n")
    assert main(["eval", "vit", "--config", str(cfg), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "warning: --config" in err and "`eval vit` does not read 'compile', 'seq_lens'; ignored" in err
    assert "batch_size" not in err.split("ignored")[0]  # eval vit reads it
    assert main(["bench", "model", "--config", str(cfg), "--output-dir", str(tmp_path)]) == 2
    assert "`bench model` does not read 'batch_size'; ignored" in capsys.readouterr().err  # it reads the others


@pytest.mark.parametrize("command,files", [
    (["bench", "model"], ["bench-deit-b", "bench-llama-3.2-1b", "bench-qwen2-1.5b", "bench-vit-b16"]),
    (["eval", "lm"], ["llama-3.2-1b", "smollm2-135m", "smollm2-135m-tasks"]),
    (["eval", "vit"], ["dinov2-fidelity", "vit-b16-imagenet"]),
])
def test_shipped_configs_set_only_what_their_command_reads(command, files):
    from pathlib import Path

    from distr_patch.cli.main import build_parser
    from distr_patch.cli.options import unread_settings

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in files:
        path = str(root / f"{name}.yaml")
        args = build_parser().parse_args([*command, "--config", path])
        assert unread_settings(path, args.settings_read) == [], name
    # the check sees a setting of another command
    args = build_parser().parse_args(["eval", "vit", "--config", str(root / "smollm2-135m.yaml")])
    assert "window" in unread_settings(str(root / "smollm2-135m.yaml"), args.settings_read)


_LM = ["eval", "lm", "--model", "./no/such/dir", "--output-dir", "{t}/out"]


@pytest.mark.parametrize("argv,expect", [
    ([*_LM, "--data", "{t}/empty.txt"], "--data {t}/empty.txt: the file is empty"),
    ([*_LM, "--data", "{t}/bad.jsonl"], "--data {t}/bad.jsonl: cannot be read as json data: JSON parse error"),
    ([*_LM, "--data", "{t}/emptydir"], "--data {t}/emptydir: the folder holds no data files"),
    ([*_LM, "--data", "{text}", "--split", "test"], "--data {text}: a local file has one split ('train') and no "
                                                   "configuration; got --split 'test'"),
    ([*_LM, "--data", "{text}", "--no-perplexity", "--tasks", "nonexist.jsonl"],
     "--tasks nonexist.jsonl: no such file or directory"),
    ([*_LM, "--config", "{t}/x.png"], "--config {t}/x.png: not a text file"),
    ([*_LM, "--output-dir", "{text}/x"], "--output-dir {text}/x: {text} is a file, not a directory"),
    (["report", "{t}/x.png", "--output-dir", "{t}/rep"], "RESULTS: {t}/x.png is not JSON (not a text file)"),
    (["report", "{t}/x.png", "--output-dir", "{text}/x"], "--output-dir {text}/x: {text} is a file"),
])
def test_input_mistakes_are_one_line_naming_the_argument(argv, expect, capsys, text_file, tmp_path):
    """Empty, malformed or binary inputs, a file where a directory goes, a task file: the error names the flag,
    before the model loads (--model is a path that does not exist) and before any output is written."""
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "emptydir").mkdir()
    fill = dict(t=tmp_path, text=text_file)
    assert expect.format(**fill) in _error([a.format(**fill) for a in argv], capsys)


def test_report_speed_from_a_binary_file(capsys, tmp_path):
    from distr_patch.eval.results import ResultFile
    from distr_patch.eval.variants import Variant

    rf = ResultFile(tmp_path / "run" / "result.json", kind="eval-lm", model={"name": "m", "model_type": "llama"},
                    config={}, provenance={"torch": "x", "transformers": "x", "triton": "x", "device": "cpu",
                                           "gpu": None, "git_commit": None, "seed": 0})
    rf.add_variant(Variant("exact", None, None, {}), {"perplexity": (10.0, "perplexity")}, {})
    rf.save("complete")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    err = _error(["report", str(tmp_path / "run"), "--speed-from", str(tmp_path / "x.png"), "--output-dir",
                  str(tmp_path / "rep")], capsys)
    assert f"--speed-from: {tmp_path}/x.png is not JSON (not a text file)" in err
