"""RunConfig: defaults < YAML < flags, and validation naming the flag."""
import pytest

from distr_patch.eval.config import ConfigError, RunConfig


def test_defaults_yaml_flags_order(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: from-yaml\nwindow: 256\nstride: 64\nmax-windows: 2\ngroup_sizes: [2, 4]\n")
    cfg = RunConfig.merge(str(path), {"window": 128})
    assert (cfg.model, cfg.window, cfg.stride, cfg.max_windows, cfg.group_sizes) == ("from-yaml", 128, 64, 2, [2, 4])
    assert cfg.seed == RunConfig().seed  # untouched default


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
