"""Calibration of ViT-family models with embedding fidelity (1 − cosine to exact) as the loss, on tiny ViTs."""
from __future__ import annotations

import json

import pytest
import torch
from tiny_models import save_tiny_vit, write_image_folder

from distr_patch import DistrConfig, patched
from distr_patch.calibrate import (BudgetError, Candidate, Fidelity, calibrate, calibrate_full, parse_budget,
                                   relative_work)
from distr_patch.calibrate.api import split_images
from distr_patch.calibrate.proxy import capture, layer_loss
from distr_patch.eval.vision import fidelity, pooled

CANDS = ["G2-rank1-b32-w0-c0", "G2-mean-b32-w0-c0", "G4-mean-b32-w0-c0", "G4-rank1-b32-w16-c0.5"]
SIZES = dict(calib_images=4, heldout_images=8, batch_size=4)


@pytest.fixture(scope="module")
def vit():
    """A 3-layer ViT backbone (65 tokens, 4 heads of 16) with sharpened q/k so grouping changes the embedding."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    image_size=32, patch_size=4)
    model = ViTModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full(vit, pixels):
    return calibrate_full(vit, pixels, [0, 0.01], CANDS, **SIZES)


def test_zero_budget_is_all_exact(vit, pixels, full):
    _, (zero, _) = full
    cfg = zero.config
    assert sorted(cfg.exact_layers) == [0, 1, 2] and not cfg.layer_overrides and zero.heldout == 0.0
    assert calibrate(vit, pixels, budget=0, candidates=CANDS, **SIZES).to_dict() == cfg.to_dict()
    with torch.no_grad():
        ref = pooled(vit(pixel_values=pixels[:4]))
        with patched(vit, cfg):
            out = pooled(vit(pixel_values=pixels[:4]))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_heldout_fidelity_within_budget(vit, pixels, full):
    sens, (_, choice) = full
    assert sens.task == "vit" and choice.metric == "fidelity loss" and sens.seq_len == 65
    assert choice.grouped > 0 and choice.saving > 0
    # recompute the held-out fidelity of the returned config independently, with eval.vision's metric
    held = torch.cat(split_images(pixels, calib_images=4, heldout_images=8, batch_size=4).heldout)
    with torch.no_grad():
        exact = pooled(vit(pixel_values=held))
        with patched(vit, choice.config):
            ours = pooled(vit(pixel_values=held))
    loss = 1 - fidelity(ours, exact)
    assert 0 < loss <= 0.01
    assert loss == pytest.approx(choice.heldout, rel=1e-4) and choice.heldout_relative == choice.heldout


def test_truncated_forward_matches_full(vit, pixels):
    obj, x = Fidelity(), pixels[:4]
    cap = capture(vit, [x], obj)
    cand = Candidate.parse(CANDS[2])
    with torch.no_grad(), patched(vit, DistrConfig(**cand.settings()), layers=[2]):
        full_loss = obj.loss(cap.exact[0], obj.output(vit, x))
    assert layer_loss(vit, cap, 2, cand, DistrConfig(), obj) == pytest.approx(full_loss, rel=1e-4, abs=1e-9)
    assert full_loss > 0


def test_bidirectional_work():
    c = Candidate(2, "rank1", 32)
    assert relative_work(c, 65, causal=False) == pytest.approx((0.5 + 1 + 1 / 32) / 2)
    # 4 tokens, |i - j| < 2: 10 of the 16 pairs in the band -> (6/2 + 10 * 1.5 + 16 + 16/32) / 32
    assert relative_work(Candidate(2, "rank1", 32, 2, 0.5), 4, causal=False) == pytest.approx(34.5 / 32)


def test_bad_budgets_and_task(vit, pixels):
    assert parse_budget("1%", "vit") == pytest.approx(0.01)
    with pytest.raises(BudgetError, match=r"fidelity loss .*cosine >= 0.99"):
        calibrate(vit, pixels, budget=-0.01, candidates=CANDS, **SIZES)
    with pytest.raises(BudgetError, match="below 1"):
        calibrate(vit, pixels, budget=1.5, candidates=CANDS, **SIZES)
    with pytest.raises(BudgetError, match="not a number"):
        calibrate(vit, pixels, budget="close", candidates=CANDS, **SIZES)
    with pytest.raises(ValueError, match="task='lm' needs a causal LM"):
        calibrate(vit, pixels, budget=0.01, task="lm")
    with pytest.raises(ValueError, match="task must be one of"):
        calibrate(vit, pixels, budget=0.01, task="vision")
    with pytest.raises(ValueError, match="has 12 images.*need 13"):
        calibrate(vit, pixels, budget=0.01, candidates=CANDS, calib_images=4, heldout_images=9)
    with pytest.raises(ValueError, match="processor="):
        calibrate(vit, [object()], budget=0.01, candidates=CANDS)


def test_cli_vit(tmp_path, capsys):
    from distr_patch.cli.main import main

    model_dir = save_tiny_vit(tmp_path / "vit")
    images = write_image_folder(tmp_path / "images", classes=3, per_class=4)
    rc = main(["calibrate", "--task", "vit", "--model", str(model_dir), "--data", str(images), "--budget", "0,0.01",
               "--candidates", ",".join(CANDS), "--calib-images", "4", "--heldout-images", "8", "--batch-size", "4",
               "--output-dir", str(tmp_path), "--run-name", "run"])
    assert rc == 0
    run = tmp_path / "run"
    result = json.loads((run / "calibration.json").read_text())
    assert result["task"] == "vit" and [c["budget"] for c in result["choices"]] == [0.0, 0.01]
    assert all(c["heldout"]["relative"] <= c["budget"] for c in result["choices"])
    assert DistrConfig.load(run / "distr_config-0.json").exact_layers == (0, 1)
    assert "held-out 1 - cos" in (run / "report.md").read_text()
    # the "every layer at G" reference rows: the fidelity loss is the relative value itself
    assert [a["group_size"] for a in result["all_grouped"]] == sorted({int(c[1]) for c in CANDS})
    for a in result["all_grouped"]:
        assert a["heldout"]["relative"] == pytest.approx(a["heldout"]["chosen"]) and a["heldout"]["chosen"] > 0

    assert main(["calibrate", "--task", "vit", "--model", str(model_dir), "--data", str(images),
                 "--budget", "2"]) == 2
    assert "below 1" in capsys.readouterr().err
    assert main(["calibrate", "--task", "vit", "--model", str(model_dir)]) == 2
    assert "--data: required with --task vit" in capsys.readouterr().err
