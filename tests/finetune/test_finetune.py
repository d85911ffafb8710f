"""The recipe on tiny models built from configs: training lowers the loss with DistrAttention G=2, gradients
reach every parameter exact attention trains, a saved checkpoint reloads with the same outputs and settings,
and the whole run (before/after table, plot, checkpoints) for a causal LM and a ViT."""
import json
from pathlib import Path

import pytest
import torch

import distr_patch  # noqa: F401  registers "distr"
from distr_patch import DistrConfig, patch_model
from distr_patch.finetune import FinetuneConfig, finetune, load_checkpoint, run_finetune, save_checkpoint
from distr_patch.finetune.data import BlockDataset, split_token_ids
from patching.tiny_patch_models import build, inputs
from tiny_models import sample_text, tiny_llama, word_tokenizer

# The paper's setting (no exact window): at the tiny models' lengths a 128-token window would make every
# score exact, and the tests must exercise the grouped path.
G2 = DistrConfig.paper(block_m=32)


def _cfg(tmp_path, **changes) -> FinetuneConfig:
    base = dict(model="unused", device="cpu", learning_rate=3e-3, max_steps=6, batch_size=4, warmup_steps=0,
                lr_scheduler="constant", logging_steps=1, output_dir=str(tmp_path), seq_len=32)
    return FinetuneConfig.merge(flags={**base, **changes})


def _lm_blocks(seq_len=32, heldout=64):
    tok = word_tokenizer()
    ids = tok(sample_text(1500), return_tensors="pt").input_ids[0]
    return tok, split_token_ids(ids, seq_len=seq_len, heldout_tokens=heldout)


@torch.no_grad()
def _mean_loss(model, blocks):
    return float(model(input_ids=blocks, labels=blocks).loss)


def test_steps_lower_training_loss_with_distr_g2(tmp_path):
    tok, split = _lm_blocks()
    blocks = split.train[:8]
    model = tiny_llama(len(tok))
    exact_logits = model(input_ids=blocks[:2]).logits
    patch_model(model, G2)
    assert not torch.allclose(model(input_ids=blocks[:2]).logits, exact_logits, atol=1e-3)  # G=2 really runs
    before = _mean_loss(model, blocks)
    _, stats = finetune(model, BlockDataset(blocks), _cfg(tmp_path), output_dir=tmp_path / "t", units_per_sample=32)
    after = _mean_loss(model, blocks)
    assert stats.steps == 6 and stats.tokens == 6 * 4 * 32 and stats.throughput > 0
    assert after < before - 0.1, (before, after)
    assert model.config._attn_implementation == "distr"  # still patched after training


def test_training_on_the_sdpa_engine(tmp_path, monkeypatch):
    """DistrConfig(engine="sdpa"): training calls (no window, no mask) run SDPA on Q_eff with its backward, the same
    function and gradients as the default engine, and the loss falls; the checkpoint keeps the engine."""
    from distr_patch.integrations import hf

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # Q_eff by torch ops on the CPU (the launches take d >= 32)
    tok, split = _lm_blocks()
    blocks = split.train[:8]
    grads = {}
    for engine in ("auto", "sdpa"):
        model = patch_model(tiny_llama(len(tok)), G2.replace(engine=engine))
        model(input_ids=blocks[:2], labels=blocks[:2]).loss.backward()
        grads[engine] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    for a, b in zip(*grads.values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    seen, real = [], hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", lambda *a, **kw: seen.append(kw["backend"]) or real(*a, **kw))
    before = _mean_loss(model, blocks)
    finetune(model, BlockDataset(blocks), _cfg(tmp_path), output_dir=tmp_path / "t", units_per_sample=32)
    assert _mean_loss(model, blocks) < before - 0.1 and set(seen) == {"sdpa"}
    model.save_pretrained(tmp_path / "ckpt")  # what save_checkpoint does through the Trainer
    assert DistrConfig.from_dict(load_checkpoint(tmp_path / "ckpt").config.distr_config).engine == "sdpa"


def test_bf16_gradient_checkpointing_and_accumulation(tmp_path):
    tok, split = _lm_blocks()
    model = patch_model(tiny_llama(len(tok)), G2)
    _, stats = finetune(model, BlockDataset(split.train[:8]), _cfg(tmp_path, max_steps=2, grad_accum=2, bf16=True,
                                                                    gradient_checkpointing=True),
                        output_dir=tmp_path / "t", units_per_sample=32)
    assert stats.steps == 2 and stats.samples == 2 * 4 * 2
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in stats.losses)


def _grads(model, batch, kind):
    model.train()
    model.zero_grad()
    if kind == "lm":
        out = model(**batch, labels=batch["input_ids"])
    else:
        out = model(**batch, labels=torch.tensor([0, 1]))
    out.loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
            and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("model_type", ["llama", "vit"])
def test_gradients_reach_every_parameter_exact_attention_trains(model_type):
    kind = "vit" if model_type == "vit" else "lm"
    batch = inputs(model_type, batch=2, seq=40)
    exact = _grads(build(model_type), batch, kind)
    model = patch_model(build(model_type), G2)
    distr = _grads(model, batch, kind)
    trainable = {n for n, p in build(model_type).named_parameters() if p.requires_grad}
    assert set(exact) == trainable  # the tiny models use every parameter
    assert set(distr) == set(exact)
    q = next(n for n in exact if "q_proj" in n or "attention.query" in n)
    assert not torch.allclose(distr[q], exact[q], atol=1e-6)  # the grouped path's gradient, not exact's


def test_checkpoint_reloads_with_same_outputs_and_settings(tmp_path):
    from transformers import AutoModelForCausalLM

    tok, split = _lm_blocks()
    model = patch_model(tiny_llama(len(tok)), G2.replace(exact_last=1))
    trainer, _ = finetune(model, BlockDataset(split.train[:8]), _cfg(tmp_path, max_steps=2),
                          output_dir=tmp_path / "t", units_per_sample=32)
    path = save_checkpoint(trainer, tok, tmp_path / "ckpt")
    x = split.heldout[None, :48]
    with torch.no_grad():
        want = model(input_ids=x).logits
        reloaded = AutoModelForCausalLM.from_pretrained(path, attn_implementation="distr").eval()
        got = reloaded(input_ids=x).logits
        via_helper = load_checkpoint(path)(input_ids=x).logits
        exact = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()(input_ids=x).logits
    assert DistrConfig.from_dict(reloaded.config.distr_config) == G2.replace(exact_last=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(via_helper, want, rtol=0, atol=1e-5)
    assert not torch.allclose(exact, want, atol=1e-3)  # the reloaded model does run DistrAttention


def test_run_lm_end_to_end(tiny_lm_dir, text_file, tmp_path):
    cfg = FinetuneConfig.merge(flags=dict(
        model=str(tiny_lm_dir), data=str(text_file), device="cpu", seq_len=32, heldout_tokens=96, max_steps=3,
        warmup_steps=0, learning_rate=3e-3, settings=["paper"], distr={"block_m": 32}, layers=[1],
        output_dir=str(tmp_path), run_name="r"))
    out = run_finetune(cfg, progress=False)
    result = json.loads((out.directory / "finetune.json").read_text())
    assert result["status"] == "complete" and [v["name"] for v in result["variants"]] == ["exact", "G2"]
    ex, g2 = result["variants"]
    assert g2["distr_config"]["exact_layers"] == [0] and g2["distr_config"]["fusion"] == "mean"
    assert ex["distr_config"] is None and ex["attn_implementation"] != "distr"
    assert ex["attention_work_saved"] == 0.0 and 0 < g2["attention_work_saved"] < 0.5  # one of two layers grouped
    for v in (ex, g2):
        assert v["train"]["steps"] == 3 and v["train"]["tokens"] == 3 * 4 * 32
        assert v["before"]["num_tokens"] == v["after"]["num_tokens"] == 95
    assert ex["before"]["perplexity"] != g2["before"]["perplexity"]  # G=2 on layer 1 changes the model
    table = (out.directory / "report.md").read_text()
    assert "| G2 | 2 | paper |" in table and "after fine-tuning" in table
    assert (out.directory / "finetune_tradeoff.png").is_file()
    reloaded = load_checkpoint(g2["checkpoint"])
    assert reloaded.config._attn_implementation == "distr"
    assert reloaded.config.use_cache is True  # as loaded (transformers 5's Trainer sets it False while training)
    assert DistrConfig.from_dict(reloaded.config.distr_config) == DistrConfig.from_dict(g2["distr_config"])


def test_a_variant_that_does_not_fit_the_model_stops_before_any_scoring(tiny_lm_dir, text_file, tmp_path,
                                                                        monkeypatch):
    """--layers 99 on a 2-layer model: a ConfigError naming the option right after loading, not after the exact
    baseline's held-out perplexity (minutes on a real model)."""
    from distr_patch.eval.config import ConfigError
    from distr_patch.finetune import run as run_mod

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the variants were checked")

    monkeypatch.setattr(run_mod, "score_lm", no_scoring)
    cfg = FinetuneConfig.merge(flags=dict(
        model=str(tiny_lm_dir), data=str(text_file), device="cpu", seq_len=32, heldout_tokens=96, max_steps=1,
        settings=["paper"], layers=[99], output_dir=str(tmp_path), run_name="r", plots=False))
    with pytest.raises(ConfigError, match="--layers/--distr: layers entry 99 is out of range"):
        run_finetune(cfg, progress=False)


def test_an_unsupported_model_type_names_the_model_option(tmp_path, text_file):
    from transformers import GPT2Config, GPT2LMHeadModel

    from distr_patch.eval.config import ConfigError

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "gpt2")
    word_tokenizer().save_pretrained(tmp_path / "gpt2")
    cfg = FinetuneConfig.merge(flags=dict(model=str(tmp_path / "gpt2"), data=str(text_file), device="cpu",
                                          seq_len=32, output_dir=str(tmp_path), run_name="r", plots=False))
    with pytest.raises(ConfigError, match="--model: model_type 'gpt2' is not supported"):
        run_finetune(cfg, progress=False)


def test_run_lm_calibrated_config_file(tiny_lm_dir, text_file, tmp_path):
    """--distr-configs: a per-layer config file fine-tunes as a variant; its checkpoint reloads with it."""
    per_layer = DistrConfig(exact_layers=(0,), layer_overrides={1: dict(group_size=2, fusion="mean", block_m=32,
                                                                          exact_window=0)})
    per_layer.save(tmp_path / "cal.json")
    cfg = FinetuneConfig.merge(flags=dict(
        model=str(tiny_lm_dir), data=str(text_file), device="cpu", seq_len=32, heldout_tokens=96, max_steps=2,
        warmup_steps=0, group_sizes=[], distr_configs=[str(tmp_path / "cal.json")], exact_baseline=False,
        output_dir=str(tmp_path), run_name="r", plots=False))
    out = run_finetune(cfg, progress=False)
    result = json.loads((out.directory / "finetune.json").read_text())
    (v,) = result["variants"]
    assert v["name"] == "cfg:cal" and DistrConfig.from_dict(v["distr_config"]) == per_layer
    assert v["train"]["steps"] == 2
    reloaded = load_checkpoint(v["checkpoint"])
    assert DistrConfig.from_dict(reloaded.config.distr_config) == per_layer


def test_run_vit_end_to_end(vit_setup, tmp_path):
    model_dir, images = vit_setup
    cfg = FinetuneConfig.merge(flags=dict(
        task="vit", model=str(model_dir), data=str(images), device="cpu", max_steps=2, warmup_steps=0,
        settings=["paper"], distr={"block_m": 32}, batch_size=4, output_dir=str(tmp_path), run_name="v"))
    out = run_finetune(cfg, progress=False)
    result = json.loads((out.directory / "finetune.json").read_text())
    assert result["metric"] == "top1" and result["data"]["heldout_images"] == 3
    g2 = result["variants"][1]
    assert g2["train"]["images"] == 8 and g2["train"]["throughput_unit"] == "images/s"
    reloaded = load_checkpoint(g2["checkpoint"], kind="vit")
    assert reloaded.config._attn_implementation == "distr"
    assert reloaded.config.distr_config["fusion"] == "mean"
    assert "use_cache" not in json.loads((Path(g2["checkpoint"]) / "config.json").read_text())  # none added


def test_image_labels_are_the_models_classes_matched_by_name(tmp_path):
    """Fine-tuning labels follow the model's classes as eval vit matches them: folders named as the model's labels
    map by name (not by their sorted index), and a partial match is refused."""
    from types import SimpleNamespace

    from transformers import ViTImageProcessor

    from distr_patch.data.errors import DataError
    from distr_patch.finetune.data import image_split
    from tiny_models import write_image_folder

    folder = write_image_folder(tmp_path / "images", classes=2, per_class=3)
    (folder / "class0").rename(folder / "dog")
    (folder / "class1").rename(folder / "cat")  # sorted: cat = index 0, dog = index 1; the model: dog 0, cat 1
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    model = SimpleNamespace(config=SimpleNamespace(label2id={"dog": 0, "cat": 1}, num_labels=2))
    train, held = image_split(str(folder), processor, heldout_fraction=0.5, model=model)
    by_index, _ = image_split(str(folder), processor, heldout_fraction=0.5)
    assert torch.equal(torch.cat([train.labels, held.labels]), 1 - torch.cat([by_index.labels, _.labels]))
    model.config.label2id = {"dog": 0, "fox": 1}
    with pytest.raises(DataError, match="1 of the data's 2 class names are labels of the model"):
        image_split(str(folder), processor, heldout_fraction=0.5, model=model)
