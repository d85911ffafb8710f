"""``finetune --lora-r``: LoRA adapters (PEFT) train instead of every weight, for every variant, and are merged into
the weights before the after-scores and the checkpoints; options are checked before any work."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distr_patch import DistrConfig
from distr_patch.cli.main import main
from distr_patch.eval.config import ConfigError
from distr_patch.finetune import FinetuneConfig, load_checkpoint, run_finetune
from distr_patch.finetune import lora


def _cfg(tiny_lm_dir, text_file, tmp_path, **changes):
    flags = dict(model=str(tiny_lm_dir), data=str(text_file), device="cpu", seq_len=32, heldout_tokens=96,
                 max_steps=3, warmup_steps=0, learning_rate=3e-2, lr_scheduler="constant", settings=["paper"],
                 distr={"block_m": 32}, output_dir=str(tmp_path), run_name="r", plots=False, lora_r=4)
    return FinetuneConfig.merge(flags={**flags, **changes})


def test_lora_run_trains_only_the_adapted_projections_and_saves_merged_models(tiny_lm_dir, text_file, tmp_path):
    pytest.importorskip("peft")
    out = run_finetune(_cfg(tiny_lm_dir, text_file, tmp_path), progress=False)
    result = json.loads((out.directory / "finetune.json").read_text())
    assert result["status"] == "complete" and [v["name"] for v in result["variants"]] == ["exact", "G2"]
    assert any("LoRA fine-tuning" in n and "q_proj, v_proj" in n for n in result["notes"])
    assert "LoRA fine-tuning (every variant, exact too): rank 4, alpha 8" in (out.directory / "report.md").read_text()
    pretrained = load_file(tiny_lm_dir / "model.safetensors")
    for v in result["variants"]:
        info = v["lora"]
        assert info["r"] == 4 and info["alpha"] == 8 and info["targets"] == ["q_proj", "v_proj"]
        assert 0 < info["trainable_params"] < info["total_params"] / 10
        assert v["after"]["perplexity"] != v["before"]["perplexity"]  # the merged adapters changed the model
        saved = load_file(f"{v['checkpoint']}/model.safetensors")
        assert saved.keys() == pretrained.keys()  # a plain model: no adapter tensors left
        changed = {k for k in saved if not torch.equal(saved[k], pretrained[k])}
        assert changed and all(".q_proj." in k or ".v_proj." in k for k in changed), sorted(changed)
        assert not Path(v["checkpoint"], "adapter_config.json").exists()
    g2 = result["variants"][1]
    reloaded = load_checkpoint(g2["checkpoint"])
    assert reloaded.config._attn_implementation == "distr"
    assert DistrConfig.from_dict(reloaded.config.distr_config) == DistrConfig.from_dict(g2["distr_config"])
    exact = load_checkpoint(result["variants"][0]["checkpoint"])
    assert exact.config._attn_implementation != "distr" and getattr(exact.config, "distr_config", None) is None


def test_lora_targets_name_the_modules(tiny_lm_dir, text_file, tmp_path):
    pytest.importorskip("peft")
    out = run_finetune(_cfg(tiny_lm_dir, text_file, tmp_path, lora_targets=["o_proj", "k_proj"], lora_alpha=4.0,
                            exact_baseline=False, save=False), progress=False)
    (g2,) = out.result["variants"]
    assert g2["lora"]["targets"] == ["k_proj", "o_proj"] and g2["lora"]["alpha"] == 4.0 and g2["checkpoint"] is None


def test_a_target_the_model_lacks_stops_before_any_scoring(tiny_lm_dir, text_file, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from distr_patch.finetune import run as run_mod

    monkeypatch.setattr(run_mod, "score_lm", lambda *a, **kw: pytest.fail("scored before the LoRA targets were checked"))
    with pytest.raises(ConfigError, match=r"--lora-targets: qkv names no module of this model; its linear layers "
                                          r"are: .*q_proj"):
        run_finetune(_cfg(tiny_lm_dir, text_file, tmp_path, lora_targets=["q_proj", "qkv"]), progress=False)


def test_without_peft_the_error_says_how_to_install_it(tiny_lm_dir, text_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ConfigError, match=r"--lora-r: LoRA needs PEFT, which is not installed: pip install "
                                          r"'distr_patch\[lora\]'"):
        run_finetune(_cfg(tiny_lm_dir, text_file, tmp_path), progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,match", [
    (dict(lora_r=0), "--lora-r: expected a positive integer rank, got 0"),
    (dict(lora_alpha=8.0), "--lora-alpha: only with --lora-r"),
    (dict(lora_targets=["q_proj"]), "--lora-targets: only with --lora-r"),
    (dict(lora_r=4, lora_alpha=-1.0), "--lora-alpha: expected a positive number, got -1.0"),
    (dict(lora_r=4, lora_targets=[]), "--lora-targets: expected module names"),
    (dict(lora_r=4, task="vit", data="imgs"), "--lora-r: LoRA is supported for --task lm"),
])
def test_lora_options_are_checked(flags, match):
    with pytest.raises(ConfigError, match=match):
        FinetuneConfig.merge(flags=dict(model="m", **flags))


def test_cli_flags(capsys):
    from distr_patch.cli import finetune as cli

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--lora-r" in capsys.readouterr().out
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--model", "m", "--lora-r", "8", "--lora-alpha", "16",
                              "--lora-targets", "q_proj,k_proj"])
    cfg = cli.config_from(args)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_targets) == (8, 16.0, ["q_proj", "k_proj"])
    assert lora.INSTALL.startswith("pip install 'distr_patch[lora]'")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_lora_run_on_cuda(text_file, tmp_path, bf16):
    """The LoRA run on a GPU: the adapters train through the Triton kernels (fp32, and bf16 autocast), are merged,
    and the saved G=2 checkpoint reloads patched."""
    pytest.importorskip("peft")
    from tiny_models import save_tiny_lm

    model_dir = save_tiny_lm(tmp_path / "lm", head_dim=64)  # a head dim the Triton kernel takes
    out = run_finetune(_cfg(model_dir, text_file, tmp_path, device="cuda", bf16=bf16, seq_len=256,
                            heldout_tokens=512, distr={"block_m": 64}), progress=False)
    result = json.loads((out.directory / "finetune.json").read_text())
    assert result["status"] == "complete" and [v["name"] for v in result["variants"]] == ["exact", "G2"]
    for v in result["variants"]:
        assert v["lora"]["r"] == 4 and 0 < v["lora"]["trainable_params"]
        assert torch.isfinite(torch.tensor([v["before"]["perplexity"], v["after"]["perplexity"]])).all()
        assert v["after"]["perplexity"] != v["before"]["perplexity"]
    reloaded = load_checkpoint(result["variants"][1]["checkpoint"])
    assert reloaded.config._attn_implementation == "distr"
