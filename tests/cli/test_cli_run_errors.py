"""Mistakes that used to surface mid-run or as a traceback: the device, a variant the model cannot take, a model
of the wrong kind or a file that is no model, a missing plotting extra. Each is one line naming the flag (exit
status 2), before any variant runs."""
import pytest
import torch

from test_cli import _error  # one line naming the flag, exit status 2, no traceback


def _eval_lm(tiny_lm_dir, text_file, tmp_path, *extra):
    return ["eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--window", "64", "--stride", "32",
            "--max-windows", "1", "--output-dir", str(tmp_path), "--run-name", "r", *extra]


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
@pytest.mark.parametrize("command", ["eval lm", "bench model"])
def test_cuda_device_without_cuda(command, capsys, tiny_lm_dir, text_file, tmp_path):
    argv = (_eval_lm(tiny_lm_dir, text_file, tmp_path, "--device", "cuda") if command == "eval lm" else
            ["bench", "model", "--model", str(tiny_lm_dir), "--device", "cuda:1", "--output-dir", str(tmp_path)])
    err = _error(argv, capsys)
    assert "--device cuda" in err and "use --device cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
@pytest.mark.parametrize("model", ["local", "preset:smollm2-135m"])
def test_cuda_device_map_without_cuda(model, capsys, tiny_lm_dir, text_file, tmp_path):
    """--device-map cuda:0 was an AssertionError traceback (a local model) or ignored (a preset: timed on the CPU)."""
    model = str(tiny_lm_dir) if model == "local" else model
    err = _error(["bench", "model", "--model", model, "--device-map", "cuda:0", "--output-dir", str(tmp_path)], capsys)
    assert "--device-map cuda:0" in err and "use --device-map cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU placement")
def test_a_preset_takes_its_device_map():
    from distr_patch.models.loading import load_model

    for device_map in ("cpu", "auto", "sequential"):
        model = load_model("preset:smollm2-135m", "lm", device_map=device_map, processor=False).model
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        assert device_map == "cpu" or model.hf_device_map == {"": "cpu"}  # placed by accelerate, as from_pretrained


def test_unknown_device_name(capsys, tiny_lm_dir, text_file, tmp_path):
    err = _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, "--device", "gpu0"), capsys)
    assert "--device 'gpu0': not a device name" in err


def test_meta_device_and_unknown_device_map(capsys, tiny_lm_dir, text_file, tmp_path):
    err = _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, "--device", "meta"), capsys)
    assert "--device meta: meta tensors hold no data" in err
    err = _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, "--device-map", "foo"), capsys)
    assert "--device-map: 'foo' is not one of auto, balanced, balanced_low_0, sequential or a device" in err


@pytest.mark.parametrize("extra,expect", [
    (["--group-sizes", "2", "--distr", "exact_layers=[99]"], "variant G2 does not fit this model: exact_layers entry 99"),
    (["--group-sizes", "2", "--distr", "head_overrides={0: {9: {'group_size': 1}}}"], "query head 9 is out of range"),
    (["--group-sizes", "8"], "variant G8 does not fit this model: layer 0: group_size=8 must divide the head dim"),
])
def test_a_variant_the_model_cannot_take_stops_the_run_before_it_starts(extra, expect, capsys, tiny_lm_dir, text_file,
                                                                         tmp_path, monkeypatch):
    if extra[:2] == ["--group-sizes", "8"]:  # the tiny model's head dim is 16, which G=8 divides: take d=12
        from transformers import LlamaConfig, LlamaForCausalLM

        from tiny_models import word_tokenizer

        tok = word_tokenizer()
        config = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=12, bos_token_id=2,
                             eos_token_id=3, pad_token_id=1)
        tiny_lm_dir = tmp_path / "hd12"
        LlamaForCausalLM(config).save_pretrained(tiny_lm_dir)
        tok.save_pretrained(tiny_lm_dir)
    assert expect in _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, *extra), capsys)
    assert not (tmp_path / "r" / "result.json").exists()  # nothing ran, not even exact attention


def test_group_size_in_distr_is_not_dropped(capsys, tiny_lm_dir, text_file, tmp_path):
    err = _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, "--distr", "group_size=3"), capsys)
    assert "--distr group_size=3: the variants take G from --group-sizes" in err


def test_unknown_preset(capsys, text_file, tmp_path):
    err = _error(["eval", "lm", "--model", "preset:smollm-135m", "--data", str(text_file), "--output-dir",
                  str(tmp_path)], capsys)
    assert "--model preset:smollm-135m: unknown preset (did you mean 'smollm2-135m'?)" in err


def test_a_language_model_given_to_eval_vit(capsys, tiny_lm_dir, tmp_path):
    from tiny_models import write_image_folder

    images = write_image_folder(tmp_path / "imgs")
    err = _error(["eval", "vit", "--model", str(tiny_lm_dir), "--data", str(images), "--output-dir", str(tmp_path)],
                 capsys)
    assert f"--model {tiny_lm_dir}: transformers cannot load it as an image classifier (eval vit)" in err


def test_a_file_that_is_no_gguf(capsys, text_file, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model\n")
    err = _error(["eval", "lm", "--model", str(fake), "--data", str(text_file), "--output-dir", str(tmp_path)], capsys)
    assert f"--model {fake}: transformers cannot load it as a causal language model" in err


def test_missing_matplotlib_stops_the_run_before_it_starts(capsys, tiny_lm_dir, text_file, tmp_path, monkeypatch):
    from distr_patch.eval import report

    def no_matplotlib():
        raise ImportError("plots need matplotlib: pip install 'distr_patch[plots]' (or pass --no-plots)")

    monkeypatch.setattr(report, "pyplot", no_matplotlib)
    err = _error(_eval_lm(tiny_lm_dir, text_file, tmp_path, "--group-sizes", "2"), capsys)
    assert "plots need matplotlib" in err and "--no-plots" in err
    assert not (tmp_path / "r" / "result.json").exists()
