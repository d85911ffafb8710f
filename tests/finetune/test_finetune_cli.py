"""``distr-patch finetune``: help, and errors that name the option to fix (exit status 2, no traceback)."""
import pytest

from distr_patch.cli.main import main


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--learning-rate", "--max-steps", "--epochs", "--batch-size", "--grad-accum", "--bf16",
                 "--gradient-checkpointing", "--layers", "--settings", "--task", "--heldout-tokens", "--config"):
        assert word in out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv,message", [
    (["--learning-rate", "-1"], "--learning-rate: expected a number > 0, got -1.0"),
    (["--group-sizes", "3"], "--group-sizes: 3 is not a valid G; use values from 1, 2, 4, 8"),
    (["--settings", "papr"], "--settings: 'papr' is not a setting"),
    (["--distr-configs", "nope.json"], "--distr-configs: nope.json is not a file"),
    (["--group-sizes", "none"], "--group-sizes: give at least one group size, e.g. 2 (or none with --distr-configs)"),
    (["--eval-window", "64", "--eval-stride", "128"], "--eval-stride: 128 is larger than the window 64"),
    (["--group-sizes", "2,2"], "--group-sizes: 2,2 repeats a value"),  # trained twice into one checkpoint
    (["--settings", "paper,paper"], "--settings: paper,paper repeats a value"),
])
def test_bad_option(argv, message, capsys):
    err = _error(["finetune", "--model", "x", *argv], capsys)
    assert err.startswith("distr-patch: error: ") and message in err


def test_unknown_yaml_key(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("model: x\nlearning_rat: 0.1\n")
    err = _error(["finetune", "--config", str(tmp_path / "c.yaml")], capsys)
    assert "unknown setting 'learning_rat' (did you mean 'learning_rate'?)" in err


def test_model_required(tmp_path, capsys):
    assert "--model: required" in _error(["finetune", "--output-dir", str(tmp_path)], capsys)


def test_argparse_choice(capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--model", "x", "--lr-scheduler", "cosnie"])
    assert e.value.code == 2 and "invalid choice: 'cosnie'" in capsys.readouterr().err


@pytest.mark.parametrize("flags,match", [
    (dict(settings=[]), "--settings: the list of settings is empty"),
    (dict(seq_len=1), "--seq-len: a window of 1 token scores nothing"),
    (dict(eval_window=1), "--eval-window: a window of 1 token scores nothing"),
])
def test_finetune_config_refuses_before_any_work(flags, match):
    from distr_patch.eval.config import ConfigError
    from distr_patch.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.merge(flags=dict(model="m", **flags))


def test_finetune_output_dir_that_is_a_file(tmp_path):
    from distr_patch.eval.config import ConfigError
    from distr_patch.finetune import FinetuneConfig

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        FinetuneConfig.merge(flags=dict(model="m", output_dir=str(tmp_path / "f" / "out")))


def test_the_exact_baseline_drops_an_inherited_distr_config():
    """--model a DistrAttention checkpoint: its exact variant trained with SDPA but saved the checkpoint's
    distr_config, so load_checkpoint reloaded it as DistrAttention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from distr_patch import DistrConfig
    from distr_patch.eval.variants import Variant
    from distr_patch.finetune.run import _patch

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model.config.distr_config = DistrConfig().to_dict()  # as loaded from a fine-tuned DistrAttention checkpoint
    assert _patch(model, Variant("exact"), None) is model
    assert "distr_config" not in model.config.to_dict()


def test_load_checkpoint_names_the_kinds(tmp_path):
    from distr_patch.finetune import load_checkpoint

    with pytest.raises(ValueError, match="kind must be 'lm' or 'vit', got 'LM'"):
        load_checkpoint(tmp_path, kind="LM")


def test_a_config_built_directly_is_checked_too():
    """run_finetune(FinetuneConfig(...)) as the package docstring shows: the same checks as merge (a misspelt
    setting trained the recommended one under its name)."""
    from distr_patch.eval.config import ConfigError, RunConfig
    from distr_patch.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match="'papr' is not a setting"):
        FinetuneConfig(model="m", settings=["papr"])
    with pytest.raises(ConfigError, match="--learning-rate: expected a number > 0"):
        FinetuneConfig(model="m", learning_rate=-1.0)
    with pytest.raises(ConfigError, match="--window: expected a positive integer"):
        RunConfig(window=0)


@pytest.mark.parametrize("name", ["finetune-smollm2-135m", "finetune-smollm2-135m-1024", "finetune-smollm2-135m-lora"])
def test_shipped_configs_merge(name):
    """Each shipped finetune YAML is read whole (an unknown key would be a ConfigError) and sets what it says."""
    from pathlib import Path

    import yaml

    from distr_patch.finetune import FinetuneConfig

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cfg = FinetuneConfig.merge(str(path), {})
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(cfg, key) == value, key
