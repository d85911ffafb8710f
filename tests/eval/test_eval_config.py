"""RunConfig: defaults < YAML < flags, and validation naming the flag."""
import pytest

from distr_patch.eval.config import ConfigError, RunConfig


def test_defaults_yaml_flags_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: from-yaml\nwindow: 256\nstride: 64\nmax-windows: 2\ngroup_sizes: [2, 4]\n")
    cfg = RunConfig.merge(str(path), {"window": 128})
    assert (cfg.model, cfg.window, cfg.stride, cfg.max_windows, cfg.group_sizes) == ("from-yaml", 128, 64, 2, [2, 4])
    assert cfg.seed == RunConfig().seed  # untouched default


def test_the_default_stride_is_half_the_window():
    """As calibrate and finetune: --window 64 alone no longer fails on a fixed stride of 512."""
    assert RunConfig().stride == 512 and RunConfig().window == 1024
    assert RunConfig.merge(flags={"window": 64}).stride == 32
    assert RunConfig.merge(flags={"window": 2}).stride == 1
    assert RunConfig.merge(flags={"window": 64, "stride": 64}).stride == 64


@pytest.mark.parametrize("flags,match", [
    ({"group_sizes": [1, 3]}, r"--group-sizes: 3 is not a valid G"),
    ({"group_sizes": []}, r"--group-sizes: give at least one"),
    ({"settings": ["papr"]}, r"--settings: 'papr' is not a setting"),
    ({"window": 64, "stride": 128}, r"--stride: 128 is larger than --window 64"),
    ({"max_windows": 0}, r"--max-windows: expected a positive integer"),
    ({"windw": 3}, r"unknown setting 'windw' \(did you mean 'window'\?\)"),
])
def test_errors_name_the_flag(flags, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.merge(flags=flags)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="--config .*: no such file"):
        RunConfig.merge(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("strid: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'strid' \\(did you mean 'stride'\\?\\)"):
        RunConfig.merge(str(bad))


def test_shipped_configs_are_valid():
    from pathlib import Path

    from distr_patch.cli.calibrate import _read_yaml as read_calibrate_settings
    from distr_patch.finetune.config import FinetuneConfig

    configs = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:  # each file is read by the command it belongs to
        if path.name.startswith("calibrate-"):
            assert read_calibrate_settings(str(path))
        elif path.name.startswith("finetune-"):
            FinetuneConfig.merge(str(path))
        else:
            RunConfig.merge(str(path))


def test_yaml_values_are_read_as_their_flags_read_them(tmp_path):
    """A YAML value is read as the flag reads its text: "128" is 128, a string for a list-valued flag is its
    comma-separated form, a number for a text flag is that text."""
    path = tmp_path / "run.yaml"
    path.write_text('model: 123\nwindow: "128"\nstride: 64\ngroup_sizes: "2,4"\nsettings: paper\n'
                    'tasks: lee-next-sentence\nmax_windows: null\n')
    cfg = RunConfig.merge(str(path))
    assert (cfg.model, cfg.window, cfg.group_sizes, cfg.settings, cfg.tasks, cfg.max_windows) == (
        "123", 128, [2, 4], ["paper"], ["lee-next-sentence"], None)


@pytest.mark.parametrize("text,match", [
    ("seed: abc", r"--config .*: seed: expected an integer, got 'abc'"),
    ("window: [64]", r"--config .*: window: expected an integer, got \[64\]"),
    ('perplexity: "no"', r"--config .*: perplexity: expected true or false, got 'no'"),
    ('plots: "no"', r"--config .*: plots: expected true or false, got 'no'"),
    ('group_sizes: "2,x"', r"--config .*: group_sizes: '2,x' is not a comma-separated list of integers"),
    ("settings: {paper: 1}", r"--config .*: settings: expected a list or a comma-separated string"),
    ("split:", r"--config .*: split: needs a value"),
    ("no-plots: 1", r"--config .*: no-plots: expected true or false, got 1"),
    ("plots: true\nno_plots: true", r"--config .*: 'plots' and 'no_plots' are the same setting"),
    ("no-window: true", r"unknown setting 'no-window'"),
])
def test_yaml_values_of_the_wrong_type_name_the_key(tmp_path, text, match):
    path = tmp_path / "run.yaml"
    path.write_text(f"model: m\n{text}\n")
    with pytest.raises(ConfigError, match=match):
        RunConfig.merge(str(path))


def test_no_flags_are_yaml_keys(tmp_path):
    """``--no-plots`` is ``no-plots: true`` (or no_plots), as for every flag; finetune's ``--no-save`` too."""
    from distr_patch.finetune.config import FinetuneConfig

    path = tmp_path / "run.yaml"
    path.write_text("model: m\nno-plots: true\nno_perplexity: true\n")
    cfg = RunConfig.merge(str(path))
    assert (cfg.plots, cfg.perplexity) == (False, False)
    path.write_text("model: m\nno_save: true\nno-plots: false\nlearning_rate: 1e-4\n")
    ft = FinetuneConfig.merge(str(path))
    assert (ft.save, ft.plots, ft.learning_rate) == (False, True, 1e-4)  # YAML reads 1e-4 as a string


def test_binary_config_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"--config .*x.png: not a text file"):
        RunConfig.merge(str(path))


@pytest.mark.parametrize("flags,match", [
    ({"settings": []}, r"--settings: the list of settings is empty; use paper, recommended"),
    ({"seed": "abc"}, r"--seed: expected an integer, got 'abc'"),
    ({"model": 123}, r"--model: expected an alias, a path or a hub id, got 123"),
    ({"tasks": "lee-next-sentence"}, r"--tasks: expected a list of names"),
    ({"plots": "no"}, r"--plots: expected true or false"),
])
def test_library_values_of_the_wrong_type(flags, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig.merge(flags=flags)


def test_output_dir_that_is_a_file(tmp_path):
    """Checked with the settings, before any work (not when the first variant's file is written)."""
    from distr_patch.eval.config import check_output_dir

    f = tmp_path / "f.txt"
    f.write_text("x")
    for out in (f, f / "sub"):
        with pytest.raises(ConfigError, match=f"--output-dir {out}: {f} is a file, not a directory"):
            RunConfig.merge(flags={"output_dir": str(out)})
    with pytest.raises(ConfigError, match="--output-dir/--run-name .*f.txt is a file"):
        RunConfig.merge(flags={"output_dir": str(tmp_path), "run_name": "f.txt"})
    assert check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"  # made later


def test_a_one_token_window_is_refused():
    from distr_patch.eval.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="--window: a window of 1 token scores nothing"):
        RunConfig.merge(flags=dict(window=1, stride=1))
