"""Calibration on tiny models built from configs: candidates, cost, search, back-off, end to end, CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import sample_text, word_tokenizer

from distr_patch import DistrConfig, patch_model, patched, unpatch_model
from distr_patch.calibrate import (BudgetError, Candidate, CandidateError, CostModel, api, calibrate, calibrate_full,
                                   candidate_grid, parse_budget, parse_candidates, relative_work)
from distr_patch.calibrate.api import split_tokens
from distr_patch.calibrate.proxy import capture, decoder_layers, kl_to_exact, layer_kl
from distr_patch.calibrate.search import all_grouped_point, greedy_path, layer_chain, point_within
from distr_patch.eval.perplexity import perplexity
from distr_patch.patching import attention_modules, patched_modules

CANDS = ["G2-rank1-b32-w0-c0", "G2-mean-b32-w0-c0", "G4-mean-b32-w0-c0", "G4-rank1-b32-w16-c0.5"]
WINDOW = 128


def tiny_lm(num_layers: int = 4, seed: int = 0, head_dim: int = 16):
    """A 4-layer Llama (GQA 4/2 heads, d=16; the Triton kernel needs d >= 32) with sharpened q/k so grouping
    changes the outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(word_tokenizer()), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim,
                      max_position_embeddings=512, bos_token_id=2, eos_token_id=3, pad_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_lm()


@pytest.fixture(scope="module")
def ids():
    return word_tokenizer()(sample_text(3000), return_tensors="pt").input_ids[0]


# ----------------------------------------------------------------------------- candidates, budget, cost
def test_grids_and_names():
    full = candidate_grid()
    assert len(full) == 2 * 2 * 3 * (1 + 3 * 4)  # zero windows carry no correction
    assert len(parse_candidates("fast")) == 12
    assert [c.name for c in parse_candidates("fast,G2-mean-b128-w0-c0,G2-rank1-b32-w0-c0")][12:] == [
        "G2-mean-b128-w0-c0"]
    for c in full[:20]:
        assert Candidate.parse(c.name) == c
    assert [c.name for c in parse_candidates("G2-rank1-b32-w0-c0, G4-mean-b128-w64-c0.25")] == [
        "G2-rank1-b32-w0-c0", "G4-mean-b128-w64-c0.25"]
    assert parse_candidates([{"group_size": 2, "fusion": "mean", "block_m": 64}])[0].name == "G2-mean-b64-w0-c0"


@pytest.mark.parametrize("spec, match", [
    ("G3-rank1-b32-w0-c0", "group_size"),
    ("G2-rank2-b32-w0-c0", "fusion"),
    ("G2-rank1-b48-w0-c0", "block_m"),
    ("rank1", "unknown candidate 'rank1'"),
    ({"group_sizes": [2]}, "did you mean 'group_size'"),
    ([{"fusoin": "mean"}], "did you mean 'fusion'"),
    ("G1-rank1-b32-w0-c0", "G=1 is exact"),
])
def test_bad_candidates(spec, match):
    with pytest.raises(CandidateError, match=match):
        parse_candidates(spec)


def test_budgets():
    assert parse_budget("1%") == pytest.approx(0.01)
    assert parse_budget(0.03) == 0.03 and parse_budget("0.1") == 0.1 and parse_budget(0) == 0.0
    for bad in (-0.01, "-1%", float("nan"), float("inf"), "one percent", True, None):
        with pytest.raises(BudgetError):
            parse_budget(bad)


def test_bad_budget_and_candidates_fail_before_model_work(model, ids, monkeypatch):
    monkeypatch.setattr(api, "measure", lambda *a, **k: pytest.fail("measured despite a bad argument"))
    with pytest.raises(BudgetError, match="budget"):
        calibrate(model, ids, budget=-0.5)
    with pytest.raises(CandidateError, match="unknown candidate"):
        calibrate(model, ids, budget=0.01, candidates=["G2-fast"])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(budgets="10"), TypeError, "budgets must be a list of budgets"),  # was read as budgets 1 and 0
    (dict(budgets=0.01), TypeError, "budgets must be a list of budgets"),
    (dict(stride=0), ValueError, "stride must be None"),                    # was silently window // 2
    (dict(stride=-8), ValueError, "stride must be None"),                   # was a ZeroDivisionError
    (dict(stride=65), ValueError, r"stride must be None .* \[1, window=64\]"),
    (dict(test_windows=-1), ValueError, "test_windows must be an int >= 0"),
    (dict(window=1), ValueError, "window must be >= 2"),
    (dict(budgets=["1%", 0.01]), BudgetError, r"repeat a value"),
    # every call on fewer than exact_below (16) rows runs exact: rounding noise would be measured as the loss
    (dict(window=8), ValueError, "window=8 is below exact_below=16"),
    (dict(max_checks=0), ValueError, "max_checks must be an int >= 1"),   # was found only after measuring
    (dict(max_checks="4"), ValueError, "max_checks must be an int >= 1"),
    (dict(probe="G2-fast"), CandidateError, "unknown candidate"),
    (dict(probe=2), TypeError, "probe must be a candidate name"),
    (dict(engine="triton"), ValueError, r"engine must be None \(base's\) or one of"),
])
def test_calibrate_full_checks_its_arguments_first(model, ids, monkeypatch, kwargs, exc, match):
    monkeypatch.setattr(api, "measure", lambda *a, **k: pytest.fail("measured despite a bad argument"))
    kwargs = {"budgets": ["1%"], "window": 64, **kwargs}
    with pytest.raises(exc, match=match):
        api.calibrate_full(model, ids, candidates=["G2-mean-b32-w0-c0"], **kwargs)


def test_relative_work():
    n = 1024
    assert relative_work(Candidate(2, "rank1", 128), n) == pytest.approx((0.5 + 1 + 1 / 128) / 2)
    assert relative_work(Candidate(4, "rank1", 128), n) < relative_work(Candidate(2, "rank1", 128), n)
    assert relative_work(Candidate(2, "rank1", 32), n) > relative_work(Candidate(2, "rank1", 128), n)
    # a band covering the whole sequence computes both products: more than exact
    assert relative_work(Candidate(2, "rank1", 128, 1024, 0.5), n) > 1
    cm = CostModel(n, {"G2-rank1-b128-w0-c0": 0.6})
    assert cm.work(Candidate(2, "rank1", 128)) == 0.6 and cm.source == "measured"
    for bad in (-1.0, float("nan"), float("inf")):  # NaN passed "t <= 0" and dropped every candidate
        with pytest.raises(CandidateError, match="positive, finite time ratio"):
            CostModel(n, {"G2-rank1-b128-w0-c0": bad})


# ----------------------------------------------------------------------------- search
def test_greedy_path_follows_efficiency():
    work = [0.75, 0.6]                       # candidates a (G2-like) and b (G4-like)
    loss = [[0.01, 0.05], [0.001, 0.1], [0.2, 0.3]]
    assert [j for j, _, _ in layer_chain(work, loss[0])] == [0, 1]
    path = greedy_path(work, loss)
    # layer 1's cheap move first (0.25/0.001), then layer 0's, then layer 0's second (0.15/0.04) ...
    assert path[1].choice == (None, 0, None) and path[2].choice == (0, 0, None)
    assert path[3].choice == (1, 0, None)
    assert all(b.loss >= a.loss and b.saving >= a.saving for a, b in zip(path, path[1:]))
    assert path[-1].choice == (1, 1, 1) and path[-1].saving == pytest.approx(0.4)
    assert point_within(path, 0.0) == 0 and point_within(path, 0.011) == 2


def test_back_off_until_within_budget(model, ids, monkeypatch):
    """The held-out check is worse than predicted: the choice backs off to a point within the budget."""
    split = split_tokens(ids, window=WINDOW, stride=64, calib_windows=1, heldout_windows=2)
    sens = api.measure(model, split.calib, CANDS, progress=False)
    calls = []

    def fake_ppl(model, ids, *, window, stride, config):  # held-out loss = 3 x the predicted loss of the point
        if config is None:
            return 10.0
        choice = tuple(None if config.for_layer(i, 4).exact else
                       next(j for j, c in enumerate(sens.candidates)
                            if c.settings() == {k: config.layer_overrides[i][k] for k in c.settings()})
                       for i in range(4))
        point = next(p for p in sens.path if p.choice == choice)
        calls.append(point.loss)
        return 10.0 * math.exp(3 * point.loss)

    monkeypatch.setattr(api, "_ppl", fake_ppl)
    budget = math.expm1(sens.path[-1].loss) / 2  # the predicted loss alone would take (almost) everything
    c = api.choose(model, sens, budget, split.heldout, window=WINDOW, stride=64, max_checks=6, progress=False)
    assert c.heldout / c.heldout_exact - 1 <= budget + 1e-12
    assert len(c.checks) == len(calls) <= 6 and c.checks[0].relative > budget
    furthest = max(i for i, p in enumerate(sens.path) if math.expm1(3 * p.loss) <= budget)
    assert c.point == furthest and c.grouped > 0


def test_all_grouped_point_takes_each_units_lowest_loss_saving_candidate():
    work = [0.75, 0.6, 0.9, 1.02]            # the last one saves nothing (a band over everything)
    loss = [[0.01, 0.05, 0.02, 0.0], [0.3, 0.1, 0.2, 0.0], [0.2, 0.3, 0.2, 0.0]]
    g2 = [True, False, True, True]
    p = all_grouped_point(work, loss, g2)
    assert p.choice == (0, 2, 0)            # never candidate 3 (work >= 1); ties: the lower index
    assert p.loss == pytest.approx(0.01 + 0.2 + 0.2)
    assert p.saving == pytest.approx((0.25 + 0.1 + 0.25) / 3)
    weighted = all_grouped_point(work, loss, g2, weights=[2.0, 1.0, 1.0])
    assert weighted.saving == pytest.approx((2 * 0.25 + 0.1 + 0.25) / 4)
    assert all_grouped_point(work, loss, [False, False, False, True]) is None
    # a NaN loss predicts nothing: never chosen (it once won every min), and a unit with only NaN has no point
    nan = [[math.nan, 0.05, 0.02, 0.0], [0.3, 0.1, 0.2, 0.0], [0.2, 0.3, 0.2, 0.0]]
    assert all_grouped_point(work, nan, g2).choice == (2, 2, 0)
    nan[0][2] = math.nan
    assert all_grouped_point(work, nan, g2) is None


def test_a_probe_that_groups_nothing_is_refused(model, ids):
    """A probe whose exact window covers every score measures rounding noise (KL even below 0): its loss / error²
    gave layers negative or huge sensitivities; now a named error, after one forward, before any probe."""
    with pytest.raises(ValueError, match=r"probe G2-rank1-b32-w64-c0: its exact_window covers every score at 64"):
        calibrate_full(model, ids, ["1%"], CANDS, window=64, heldout_windows=1, probe="G2-rank1-b32-w64-c0")
    with pytest.raises(ValueError, match=r"probe G8-rank1-b32-w0-c0: group_size=8"):  # head dim 12 (tiny_lm below)
        calibrate_full(tiny_lm(2, head_dim=12), ids, ["1%"], ["G2-mean-b32-w0-c0"], window=64, heldout_windows=1,
                       probe="G8-rank1-b32-w0-c0")
    # no probe given and no default among the candidates: the first candidate that groups something
    sens, _ = calibrate_full(model, ids, ["1%"], ["G2-rank1-b32-w64-c0", "G2-mean-b32-w16-c0"], window=64,
                             heldout_windows=1, check_all_grouped=False)
    assert sens.probe.name == "G2-mean-b32-w16-c0" and all(a > 0 for a in sens.alpha)


def test_seed_is_the_results_hash_seed_without_a_base(model, ids):
    cfg = {s: calibrate(model, ids, budget=0.5, candidates=CANDS, window=WINDOW, heldout_windows=1, seed=s)
           for s in (0, 5)}
    assert cfg[0].seed == 0 and cfg[5].seed == 5  # seed=5 once changed nothing: the hash seed stayed 0
    assert calibrate(model, ids, budget=0.5, candidates=CANDS, window=WINDOW, heldout_windows=1, seed=5,
                     base=DistrConfig(seed=3)).seed == 3


# ----------------------------------------------------------------------------- proxy
def test_truncated_forward_matches_full(model, ids):
    """layer_kl skips the layers before the changed one; it must equal a full forward's KL."""
    cap = capture(model, [ids[:WINDOW].unsqueeze(0)])
    assert decoder_layers(model, attention_modules(model)) is not None
    cand = Candidate.parse(CANDS[2])
    for layer in (0, 2):
        with patched(model, DistrConfig(**cand.settings()), layers=[layer]):
            full = kl_to_exact(cap.exact_logprobs[0], model(ids[:WINDOW].unsqueeze(0)).logits[0].detach())
        assert layer_kl(model, cap, layer, cand, DistrConfig()) == pytest.approx(full, rel=1e-4, abs=1e-9)
        assert full > 0


# ----------------------------------------------------------------------------- end to end
def test_heldout_within_budget_and_deterministic(model, ids):
    budget = 0.002
    sens, (choice,) = calibrate_full(model, ids, [budget], CANDS, window=WINDOW, heldout_windows=3, progress=False)
    again = calibrate(model, ids, budget=budget, candidates=CANDS, window=WINDOW, heldout_windows=3)
    assert again.to_dict() == choice.config.to_dict()
    # recompute the held-out loss of the returned config independently, with the harness
    split = split_tokens(ids, window=WINDOW, stride=WINDOW // 2, calib_windows=1, heldout_windows=3)
    exact = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
    patch_model(model, again)
    try:
        ours = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
    finally:
        unpatch_model(model)
    assert ours["perplexity"] <= (1 + budget) * exact["perplexity"]
    assert ours["perplexity"] == pytest.approx(choice.heldout, rel=1e-6)
    assert choice.grouped == len(again.layer_overrides) > 0


def test_all_grouped_reference_is_checked(model, ids):
    """calibrate_full also checks every layer at each G on its lowest-predicted-loss candidate of that G."""
    sens, _ = calibrate_full(model, ids, [0.001], CANDS, window=WINDOW, heldout_windows=2, test_windows=1,
                             progress=False)
    assert [a.group_size for a in sens.all_grouped] == [2, 4]
    split = split_tokens(ids, window=WINDOW, stride=WINDOW // 2, calib_windows=1, heldout_windows=2, test_windows=1)
    for a in sens.all_grouped:
        mine = [j for j, c in enumerate(sens.candidates) if c.group_size == a.group_size and sens.work[j] < 1]
        best = [min(mine, key=lambda j: (sens.loss[i][j], j)) for i in range(4)]
        assert a.predicted == pytest.approx(sum(sens.loss[i][j] for i, j in enumerate(best)))
        assert not a.config.exact_layers and len(a.config.layer_overrides) == 4
        for i, j in enumerate(best):
            s = a.config.for_layer(i, 4)
            assert s.group_size == a.group_size
            assert {k: getattr(s, k) for k in sens.candidates[j].settings()} == sens.candidates[j].settings()
        with patched(model, a.config):
            held = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
            test = perplexity(model, split.test, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
        assert held["perplexity"] == pytest.approx(a.heldout, rel=1e-6)
        assert test["perplexity"] == pytest.approx(a.test, rel=1e-6)
        assert a.heldout != a.heldout_exact and 0 < a.saving < 1  # grouped: the perplexity moves
    exact = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
    assert sens.all_grouped[0].heldout_exact == pytest.approx(exact["perplexity"], rel=1e-6)
    assert calibrate_full(model, ids, [0.001], CANDS, window=WINDOW, heldout_windows=2,
                          check_all_grouped=False)[0].all_grouped == []


def test_speedup_timed_on_request(model, ids, monkeypatch):
    """speedup='on' times exact and every result (here on the CPU: the reference path); 'auto' skips the CPU."""
    times = iter([10.0, 8.0, 5.0, 4.0, 2.5])  # exact, budget 0, budget 0.5, all at G=2, all at G=4
    calls = []

    def fake_ms(model, objective, x, config, **kw):
        calls.append((tuple(x.shape), config))
        return next(times)

    monkeypatch.setattr(api, "forward_ms", fake_ms)
    sens, choices = calibrate_full(model, ids, [0, 0.5], CANDS, window=WINDOW, heldout_windows=2, speedup="on")
    assert calls[0] == ((1, WINDOW), None) and all(shape == (1, WINDOW) for shape, _ in calls)
    assert [c for _, c in calls[1:]] == [r.config for r in [*choices, *sens.all_grouped]]
    assert [r.speed.speedup for r in [*choices, *sens.all_grouped]] == [1.25, 2.0, 2.5, 4.0]
    assert all(r.speed.exact_ms == 10.0 and r.speed.device == "cpu" for r in choices)
    # engine=: the configs as returned are the ones timed (the CLI's were timed on the calibration's engine)
    times = iter([10.0, 8.0, 5.0])
    calls.clear()
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the SDPA engine's launches need d >= 32 under the interpreter
    _, sdpa = calibrate_full(model, ids, [0.5], CANDS, window=WINDOW, heldout_windows=2, speedup="on",
                             base=DistrConfig(engine="sdpa"), engine="auto", check_all_grouped=False)
    assert [c.engine for _, c in calls[1:]] == ["auto"] == [c.config.engine for c in sdpa]
    calls.clear()
    auto, _ = calibrate_full(model, ids, [0.5], CANDS, window=WINDOW, heldout_windows=2, check_all_grouped=False)
    assert not calls  # 'auto' on the CPU: nothing timed
    with pytest.raises(ValueError, match="speedup must be one of"):
        calibrate_full(model, ids, [0.5], CANDS, window=WINDOW, speedup="yes")


def test_forward_ms_times_the_patched_model(model, ids):
    from distr_patch.calibrate.objectives import Perplexity
    from distr_patch.calibrate.speed import forward_ms

    x = ids[:WINDOW].unsqueeze(0)
    cfg = DistrConfig(**Candidate.parse(CANDS[0]).settings())
    assert forward_ms(model, Perplexity(WINDOW, WINDOW), x, None, warmup=0, repeats=2) > 0
    assert forward_ms(model, Perplexity(WINDOW, WINDOW), x, cfg, warmup=0, repeats=2) > 0
    assert not any(hasattr(m, "_distr_settings") for m in model.modules())  # unpatched afterwards


def test_zero_budget_is_all_exact(model, ids):
    cfg = calibrate(model, ids, budget=0, candidates=CANDS, window=WINDOW, heldout_windows=2)
    assert sorted(cfg.exact_layers) == [0, 1, 2, 3] and not cfg.layer_overrides
    assert all(cfg.for_layer(i, 4).exact for i in range(4))
    x = ids[:WINDOW].unsqueeze(0)
    with torch.no_grad():
        ref = model(x).logits
        with patched(model, cfg):
            out = model(x).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_config_round_trips(model, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = calibrate(model, ids, budget=0.5, candidates=CANDS, window=WINDOW, heldout_windows=2)
    assert cfg.layer_overrides  # something is grouped, so the round trip carries per-layer settings
    assert DistrConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.save(tmp_path / "c.json")
    assert DistrConfig.load(tmp_path / "c.json") == cfg
    x = ids[:WINDOW].unsqueeze(0)
    with torch.no_grad(), patched(model, cfg):
        ref = model(x).logits
        model.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="distr").eval()
    assert DistrConfig.from_dict(loaded.config.distr_config) == cfg
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, ref)


# ----------------------------------------------------------------------------- CLI
def test_cli(tmp_path, tiny_lm_dir, capsys):
    from distr_patch.cli.main import main

    long_text = tmp_path / "long.txt"
    long_text.write_text(sample_text(2000))
    rc = main(["calibrate", "--model", str(tiny_lm_dir), "--data", str(long_text), "--budget", "0,5%",
               "--candidates", ",".join(CANDS), "--window", "64", "--heldout-windows", "2", "--test-windows", "1",
               "--seed", "7", "--output-dir", str(tmp_path), "--run-name", "run"])
    assert rc == 0
    run = tmp_path / "run"
    assert {DistrConfig.load(p).seed for p in run.glob("distr_config-*.json")} == {7}  # --seed is the hash seed
    result = json.loads((run / "calibration.json").read_text())
    assert [c["budget"] for c in result["choices"]] == [0.0, 0.05]
    assert len(result["errors"]) == 2 and len(result["errors"][0]) == len(CANDS)
    assert DistrConfig.load(run / "distr_config-0.json").exact_layers == (0, 1)
    assert DistrConfig.load(run / "distr_config-0.05.json") == DistrConfig.from_dict(result["choices"][1]["distr_config"])
    assert (run / "sensitivity_heatmap.png").is_file() and (run / "pareto.png").is_file()
    assert "layers grouped" in (run / "report.md").read_text()
    assert [a["group_size"] for a in result["all_grouped"]] == [2, 4]
    for a in result["all_grouped"]:
        cfg = DistrConfig.load(run / f"distr_config-all-G{a['group_size']}.json")
        assert cfg == DistrConfig.from_dict(a["distr_config"]) and len(cfg.layer_overrides) == 2
        assert a["test"]["relative"] == pytest.approx(a["test"]["chosen"] / a["test"]["exact"] - 1)
    assert "| G=2 |" in (run / "report.md").read_text()
    assert all(c["speed"] is None for c in result["choices"])  # CPU, --speedup auto: not timed

    assert main(["calibrate", "--model", str(tiny_lm_dir), "--budget", "lots"]) == 2
    assert "not a number or a percentage" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tiny_lm_dir), "--data", str(long_text), "--speeds", "measure",
                 "--device", "cpu"]) == 2
    assert "--speeds measure: needs a CUDA device" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tiny_lm_dir), "--candidates", "G2-quick"]) == 2
    assert "unknown candidate" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(tiny_lm_dir), "--budget", "1%,0.01"]) == 2  # one budget twice
    assert "--budget: 1%,0.01 repeats a budget" in capsys.readouterr().err


def test_cli_engine_sdpa_calibrates_the_same_and_writes_neutral_configs(tmp_path, tiny_lm_dir, monkeypatch):
    """--engine sdpa: DistrAttention runs on the SDPA engine while calibrating (the same function as the reference,
    so the same choices); the written configs keep engine auto."""
    from distr_patch.cli.main import main
    from distr_patch.integrations import hf

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the tiny model's head dim is below the Triton launches'
    seen, real = [], hf.distr_attention
    monkeypatch.setattr(hf, "distr_attention", lambda *a, **kw: seen.append(kw["backend"]) or real(*a, **kw))
    long_text = tmp_path / "long.txt"
    long_text.write_text(sample_text(2000))
    runs = {}
    for engine in ("auto", "sdpa"):
        seen.clear()
        assert main(["calibrate", "--model", str(tiny_lm_dir), "--data", str(long_text), "--budget", "5%",
                     "--candidates", ",".join(CANDS), "--window", "64", "--heldout-windows", "1", "--engine", engine,
                     "--no-all-grouped", "--no-plots", "--output-dir", str(tmp_path), "--run-name", engine]) == 0
        assert set(seen) == {"auto" if engine == "auto" else "sdpa"}
        runs[engine] = json.loads((tmp_path / engine / "calibration.json").read_text())
        assert DistrConfig.load(tmp_path / engine / "distr_config-0.05.json").engine == "auto"
    assert runs["sdpa"]["choices"][0]["distr_config"] == runs["auto"]["choices"][0]["distr_config"]
    torch.testing.assert_close(torch.tensor(runs["sdpa"]["errors"]), torch.tensor(runs["auto"]["errors"]),
                               rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------------------- per head
def test_per_head_calibration_within_budget_and_deterministic(model, ids):
    budget = 0.002
    sens, (choice,) = calibrate_full(model, ids, [budget], CANDS, window=WINDOW, heldout_windows=3, per_head=True,
                                     max_checks=6)
    again = calibrate(model, ids, budget=budget, candidates=CANDS, window=WINDOW, heldout_windows=3, per_head=True,
                      max_checks=6)
    cfg = choice.config
    assert again.to_dict() == cfg.to_dict()
    # the proxy: a layer's squared error is its heads' share-weighted sum, so the unit losses add up to the layer's
    assert sens.heads == [4] * 4 and sens.num_units == 16
    for i in range(4):
        for j in range(len(CANDS)):
            assert sum(s * e[j] ** 2 for s, e in zip(sens.head_share[i], sens.head_errors[i])) == pytest.approx(
                sens.errors[i][j] ** 2, rel=1e-6)
            assert sum(h[j] for h in sens.head_loss[i]) == pytest.approx(sens.loss[i][j], rel=1e-6)
    # the config runs each (layer, head) on the candidate of the chosen path point (exact: G=1 or an exact layer)
    point = sens.path[choice.point].choice
    for u, j in enumerate(point):
        s = cfg.for_head(u // 4, u % 4, 4)
        if j is None:
            assert cfg.for_layer(u // 4, 4).exact or s.group_size == 1
        else:
            cand = Candidate.parse(CANDS[j]).settings()
            assert {k: getattr(s, k) for k in cand} == cand
    assert cfg.head_overrides and choice.heads_grouped == sum(j is not None for j in point) > 0
    assert choice.grouped == len(cfg.layer_overrides) and choice.num_heads == 16
    # the held-out perplexity of the returned config, recomputed with the harness, is within budget
    split = split_tokens(ids, window=WINDOW, stride=WINDOW // 2, calib_windows=1, heldout_windows=3)
    exact = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
    with patched(model, cfg):
        ours = perplexity(model, split.heldout, window=WINDOW, stride=WINDOW // 2, progress=False)["metrics"]
    assert ours["perplexity"] <= (1 + budget) * exact["perplexity"]
    assert ours["perplexity"] == pytest.approx(choice.heldout, rel=1e-6)


def test_per_head_zero_budget_and_default_stay_per_layer(model, ids):
    zero = calibrate(model, ids, budget=0, candidates=CANDS, window=WINDOW, heldout_windows=2, per_head=True)
    assert sorted(zero.exact_layers) == [0, 1, 2, 3] and not zero.layer_overrides and not zero.head_overrides
    sens, (choice,) = calibrate_full(model, ids, [0.5], CANDS, window=WINDOW, heldout_windows=2)
    assert sens.heads is None and sens.num_units == 4 and not choice.config.head_overrides
    assert choice.heads_grouped is None
    with pytest.raises(TypeError, match="per_head"):
        calibrate(model, ids, budget=0.01, candidates=CANDS, per_head="yes")


def test_cli_per_head(tmp_path, tiny_lm_dir):
    from distr_patch.cli.main import main

    long_text = tmp_path / "long.txt"
    long_text.write_text(sample_text(2000))
    rc = main(["calibrate", "--model", str(tiny_lm_dir), "--data", str(long_text), "--budget", "5%",
               "--candidates", ",".join(CANDS), "--window", "64", "--heldout-windows", "2", "--per-head",
               "--speedup", "on", "--no-plots", "--output-dir", str(tmp_path), "--run-name", "run"])
    assert rc == 0
    result = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert result["per_head"] is True and result["num_heads"] == [4, 4]
    assert len(result["head_errors"][0]) == 4 and len(result["head_errors"][0][0]) == len(CANDS)
    c = result["choices"][0]
    assert c["num_heads"] == 8 and 0 <= c["heads_grouped"] <= 8 and result["settings"]["per_head"] is True
    assert DistrConfig.load(tmp_path / "run" / "distr_config-0.05.json") == DistrConfig.from_dict(c["distr_config"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "heads grouped" in report and "measured speedup" in report and "PyTorch reference" in report
    for r in [c, *result["all_grouped"]]:  # --speedup on: timed on the CPU
        sp = r["speed"]
        assert sp["device"] == "cpu" and sp["ms"] > 0 and sp["speedup"] == pytest.approx(sp["exact_ms"] / sp["ms"])
    for a in result["all_grouped"]:  # every (layer, head) at one G: no exact layer, no exact head
        cfg = DistrConfig.from_dict(a["distr_config"])
        assert len(cfg.layer_overrides) == 2 and not cfg.exact_layers
        assert all(cfg.for_head(i, h, 4).group_size == a["group_size"] for i in range(2) for h in range(4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
def test_speedup_measured_on_the_gpu_by_default(ids):
    """speedup='auto' on a CUDA model: every result carries a CUDA-event timing against exact attention."""
    gpu_model = tiny_lm(head_dim=32).to("cuda")  # a head dim the Triton kernel takes
    sens, choices = calibrate_full(gpu_model, ids, [0.5], CANDS, window=WINDOW, heldout_windows=2)
    for r in [*choices, *sens.all_grouped]:
        assert r.speed is not None and r.speed.device.startswith("cuda")
        assert r.speed.ms > 0 and r.speed.speedup == pytest.approx(r.speed.exact_ms / r.speed.ms)


# ----------------------------------------------------------------------------- measured kernel speed
def test_measured_speeds_are_ratios_to_exact_at_the_models_shape(model, monkeypatch):
    from distr_patch.calibrate import kernel_speed

    shape = kernel_speed.attention_shape(model)
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (4, 2, 16) and shape.dtype == torch.float32
    calls = []

    def fake_time(fn, device, *, warmup, repeats):  # the time of a call = how often it was made
        fn()
        calls.append(1)
        return {"p50_ms": float(len(calls))}

    monkeypatch.setattr(kernel_speed, "time_call", fake_time)
    cands = [Candidate.parse(c) for c in CANDS[:3]]
    speeds = kernel_speed.measure_speeds(cands, shape, seq_len=40)
    assert speeds == {c.name: (i + 2) / 1.0 for i, c in enumerate(cands)}  # exact ran first, 1 ms
    cost = CostModel(40, speeds)
    assert cost.source == "measured" and cost.work(cands[1]) == 3.0
    with pytest.raises(ValueError, match="seq_len"):
        kernel_speed.measure_speeds(cands, shape, seq_len=0)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        kernel_speed.measure_speeds(cands, shape, seq_len=40, batch=0)


def test_measured_speeds_run_the_operator(model):
    """Real timings on the CPU (the reference path): finite positive ratios, one per candidate."""
    from distr_patch.calibrate.kernel_speed import attention_shape, measure_speeds

    speeds = measure_speeds([Candidate.parse(c) for c in CANDS], attention_shape(model), seq_len=64, warmup=0,
                            repeats=1)
    assert list(speeds) == CANDS and all(math.isfinite(r) and r > 0 for r in speeds.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the device machine)")
def test_measured_speeds_on_the_gpu():
    from distr_patch.calibrate.kernel_speed import attention_shape, measure_speeds

    m = tiny_lm(head_dim=32).to("cuda", torch.bfloat16)
    shape = attention_shape(m)
    assert shape.device.type == "cuda" and shape.dtype == torch.bfloat16
    speeds = measure_speeds([Candidate.parse(c) for c in CANDS], shape, seq_len=2048)
    assert list(speeds) == CANDS and all(math.isfinite(r) and r > 0 for r in speeds.values())


@pytest.mark.parametrize("extra,yaml,expect", [
    (["--stride", "0"], None, "--stride: expected a positive integer, got 0"),
    (["--window", "64", "--stride", "65"], None, "--stride: 65 is larger than --window 64"),
    (["--window", "0"], None, "--window: expected a positive integer, got 0"),
    (["--speeds", "missing.json"], None, "--speeds missing.json: no such file"),
    (["--speeds", "{t}/x.png"], None, "--speeds {t}/x.png: not JSON (not a text file)"),
    (["--speeds", "{t}/speeds.json"], None, "--speeds {t}/speeds.json: unknown candidate 'G2-quick'"),
    (["--speeds", "{t}/partial.json", "--candidates", "G2-mean-b32-w0-c0,G4-mean-b32-w0-c0"], None,
     "--speeds {t}/partial.json: no time for 1 of the 2 candidates (G4-mean-b32-w0-c0)"),  # not mixed with analytic
    (["--probe", "nonsense"], None, "--probe: unknown candidate 'nonsense'"),
    (["--device", "gpu"], None, "--device 'gpu': not a device name"),
    (["--output-dir", "{t}/x.png/out"], None, "--output-dir {t}/x.png/out: {t}/x.png is a file"),
    ([], "window: abc", "--config {t}/c.yaml: window: expected an integer, got 'abc'"),
    ([], "seed: abc", "--config {t}/c.yaml: seed: expected an integer, got 'abc'"),
    ([], "speedup: maybe", "--speedup: 'maybe' is not one of auto, on, off"),
    ([], "no-all-grouped: 1", "--config {t}/c.yaml: no-all-grouped: expected true or false, got 1"),
])
def test_cli_settings_are_checked_before_the_model_loads(tmp_path, capsys, extra, yaml, expect):
    """Each names its flag or YAML key; none waits for the model (which would fail: the path does not exist)."""
    from distr_patch.cli.main import main

    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (tmp_path / "speeds.json").write_text('{"G2-quick": 0.5}')
    (tmp_path / "partial.json").write_text('{"G2-mean-b32-w0-c0": 0.9}')
    (tmp_path / "text.txt").write_text(sample_text(200))
    argv = ["calibrate", "--model", "./no/such/model", "--data", str(tmp_path / "text.txt"),
            "--output-dir", str(tmp_path / "out"), *[a.format(t=tmp_path) for a in extra]]
    if yaml is not None:
        (tmp_path / "c.yaml").write_text(yaml + "\n")
        argv += ["--config", str(tmp_path / "c.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expect.format(t=tmp_path) in err.strip().splitlines()[-1]


def test_cli_yaml_takes_no_flags_and_flag_forms(tmp_path):
    from argparse import Namespace

    from distr_patch.cli.calibrate import settings_from

    (tmp_path / "c.yaml").write_text('model: m\nno-all-grouped: true\nno_plots: true\nwindow: "64"\nbudget: 1%,3%\n'
                                     'stride: 16\n')
    s = settings_from(Namespace(config=str(tmp_path / "c.yaml")))
    assert (s["all_grouped"], s["plots"], s["window"], s["budget"], s["stride"]) == (False, False, 64, ["1%", "3%"], 16)


def test_budget_labels_keep_small_budgets():
    """The Pareto legend and the table printed 0.5% and 0.001% as "0%"."""
    from distr_patch.calibrate.report import budget_label

    assert [budget_label(b) for b in (0.01, 0.005, 0.0025, 1e-5, 0.1, 0.0)] == [
        "1%", "0.5%", "0.25%", "0.001%", "10%", "0%"]


def test_a_hybrid_model_calibrates_its_attention_layers(tmp_path):
    """LFM2 (attention in layers 1 and 3 of 4; its registry entry's own finder): calibration counts the two attention
    modules as patch_model does, its config patches the model, and the report counts grouped layers out of two."""
    from patching.tiny_patch_models import build

    from distr_patch.cli.main import main

    tok = word_tokenizer()
    model = build("lfm2", config_overrides={"vocab_size": len(tok)})
    model.save_pretrained(tmp_path / "lfm2")
    tok.save_pretrained(tmp_path / "lfm2")
    (tmp_path / "long.txt").write_text(sample_text(2000))
    assert main(["calibrate", "--model", str(tmp_path / "lfm2"), "--data", str(tmp_path / "long.txt"), "--budget",
                 "100%", "--candidates", ",".join(CANDS[:2]), "--window", "64", "--heldout-windows", "1",
                 "--test-windows", "0", "--output-dir", str(tmp_path), "--run-name", "run", "--no-plots"]) == 0
    result = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert (result["model"]["num_layers"], result["model"]["num_attention_layers"]) == (4, 2)
    cfg = DistrConfig.load(tmp_path / "run" / "distr_config-1.json")
    assert set(cfg.layer_overrides) == {0, 1}  # a generous budget: both attention layers grouped
    assert "| 100% | 2/2 |" in (tmp_path / "run" / "report.md").read_text()
    patch_model(model, cfg)
    assert [m._distr_settings.exact for m in patched_modules(model)] == [False, False]
    unpatch_model(model)
