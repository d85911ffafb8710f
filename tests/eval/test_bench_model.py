"""``bench model``: what its numbers are (a fake clock and fake models: no timing noise) and its flags."""
import json
import types

import pytest
import torch

from distr_patch.cli.main import main
from distr_patch.eval import bench, timing
from distr_patch.eval.config import ConfigError, RunConfig


class FakeLM(torch.nn.Module):
    """Each call advances ``clock`` by the next of ``durations`` (ms); generate() returns prompt + new tokens."""

    def __init__(self, clock, prefill_ms, generate_ms):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=11)
        self.clock, self.prefill_ms, self.generate_ms = clock, list(prefill_ms), list(generate_ms)
        self.calls = {"prefill": 0, "generate": 0}

    def forward(self, ids, use_cache=True):
        self.calls["prefill"] += 1
        self.clock.now += self.prefill_ms.pop(0) / 1e3

    def generate(self, ids, **kw):
        self.calls["generate"] += 1
        self.clock.now += self.generate_ms.pop(0) / 1e3
        return torch.cat([ids, torch.zeros(ids.shape[0], kw["max_new_tokens"], dtype=ids.dtype)], dim=1)


def test_points_time_the_repeats_after_the_warmup(monkeypatch, tmp_path):
    """p50 of the timed calls only (the slow warm-up is left out), throughput = work / p50 in per-second units
    (prefill: batch x length tokens; generate: batch x new tokens, the whole call), and each point records the
    calls it ran: generate() times a third of --repeats (at least 3) after at most 2 warm-up calls."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    model = FakeLM(clock, prefill_ms=[1000, 1000, 10, 30, 20, 50, 40], generate_ms=[1000, 1000, 100, 300, 200])
    cfg = RunConfig(seq_lens=[8], batch_sizes=[2], warmup=2, repeats=5, gen_tokens=3, gen_prompt_len=4,
                    output_dir=str(tmp_path))
    out = bench.bench_lm(model, cfg, torch.device("cpu"), progress=False)
    assert model.calls == {"prefill": 7, "generate": 5}
    (prefill,), (gen,) = out["prefill"], out["generate"]
    assert prefill["p50_ms"] == pytest.approx(30) and prefill["throughput"] == pytest.approx(2 * 8 / 0.030)
    assert prefill["throughput_unit"] == "tokens/s" and (prefill["warmup"], prefill["repeats"]) == (2, 5)
    assert gen["p50_ms"] == pytest.approx(200) and gen["throughput"] == pytest.approx(2 * 3 / 0.200)
    assert gen["throughput_unit"] == "new tokens/s" and gen["new_tokens"] == 3 and gen["seq_len"] == 4
    assert (gen["warmup"], gen["repeats"]) == (2, 3)
    assert prefill["peak_mem_mib"] is None and gen["peak_mem_mib"] is None  # the CPU: not measured, not 0


def test_prefill_settles_before_its_timing(monkeypatch, tmp_path):
    """--settle-ms: after the warm-up, the call runs back to back (in fours) until that much wall time has passed,
    untimed; the point records it. The default settles only on a CUDA device."""
    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
    # warm-up 1 call (1000 ms), settle 50 ms: 4 calls of 10 ms (40 ms < 50), 4 more (80 ms): 8 calls; then 3 timed
    model = FakeLM(clock, prefill_ms=[1000] + [10] * 8 + [7, 5, 6], generate_ms=[100] * 4)
    cfg = RunConfig(seq_lens=[8], batch_sizes=[1], warmup=1, settle_ms=50, repeats=3, gen_tokens=1, gen_prompt_len=4,
                    output_dir=str(tmp_path))
    (prefill,) = bench.bench_lm(model, cfg, torch.device("cpu"), progress=False)["prefill"]
    assert model.calls["prefill"] == 1 + 8 + 3 and prefill["p50_ms"] == pytest.approx(6)
    assert (prefill["warmup"], prefill["settle_ms"], prefill["repeats"]) == (1, 50, 3)
    assert bench.settle_ms(RunConfig(), torch.device("cpu")) == 0
    assert bench.settle_ms(RunConfig(), torch.device("cuda", 0)) == 200
    assert bench.settle_ms(RunConfig(settle_ms=0), torch.device("cuda")) == 0
    assert timing.run_for(lambda: None, 0) == 0


@pytest.mark.parametrize("value", [-1, "200", True, float("nan"), float("inf")])
def test_settle_ms_is_checked(tmp_path, value):
    with pytest.raises(ConfigError, match="--settle-ms: expected a number of milliseconds >= 0"):
        RunConfig(settle_ms=value, output_dir=str(tmp_path))


def test_peak_memory_sums_the_gpus_of_the_model(monkeypatch):
    """A --device-map model on two GPUs: the peak is reset and read on both, not only on the input's device."""
    reset = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: reset.append(torch.device(d)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: {0: 2**20, 1: 3 * 2**20}[d.index])

    class TwoGpuModel(torch.nn.Module):
        def parameters(self, recurse=True):
            return iter([types.SimpleNamespace(device=torch.device("cuda:1")),
                         types.SimpleNamespace(device=torch.device("cuda:0"))])

        def buffers(self, recurse=True):
            return iter([])

    model = TwoGpuModel()
    bench._peak_reset(model)
    assert reset == [torch.device("cuda:0"), torch.device("cuda:1")]
    assert bench._peak_mib(model) == 4.0
    assert bench._peak_mib(torch.device("cpu")) is None


@pytest.mark.parametrize("flags,match", [
    (dict(seq_lens=[16, 32, 16], batch_sizes=[1]), "--seq-lens: 16,32,16 repeats a value"),
    (dict(seq_lens=[16], batch_sizes=[1, 1]), "--batch-sizes: 1,1 repeats a value"),
    (dict(seq_lens=[16], batch_sizes=[1], settings=["paper", "paper"]), "--settings: paper,paper repeats a value"),
])
def test_repeated_points_are_an_error(tiny_lm_dir, tmp_path, flags, match):
    """A repeated length or batch was timed twice but keyed once: exact attention's own rows read 1.15x; a repeated
    setting ran twice as two variants of one name."""
    with pytest.raises(ConfigError, match=match):
        cfg = RunConfig(model=str(tiny_lm_dir), gen_tokens=1, gen_prompt_len=4, warmup=0, repeats=1,
                        group_sizes=[2], distr={"block_m": 32}, plots=False, output_dir=str(tmp_path), **flags)
        bench.run_bench(cfg, progress=False)


def test_lengths_past_the_model_positions_are_noted(tmp_path, capsys):
    cfg = RunConfig(seq_lens=[256, 600, 1024], gen_prompt_len=500, gen_tokens=20, output_dir=str(tmp_path))
    notes = bench._past_max_positions(cfg, 512)
    assert notes == ["--seq-lens 600,1024: longer than the model's max_position_embeddings (512); timed anyway",
                     "--gen-prompt-len 500 + --gen-tokens 20: longer than the model's max_position_embeddings (512); "
                     "timed anyway"]
    assert "distr-patch: warning: --seq-lens 600,1024" in capsys.readouterr().err
    assert bench._past_max_positions(RunConfig(seq_lens=[512], gen_prompt_len=500, gen_tokens=12,
                                               output_dir=str(tmp_path)), 512) == []


def test_bench_model_of_a_local_vit_directory(tmp_path):
    """A ViT saved to a folder is timed in images/s (it was loaded as a causal LM, which failed)."""
    from tiny_models import save_tiny_vit

    vit = save_tiny_vit(tmp_path / "vit")
    assert main(["bench", "model", "--model", str(vit), "--batch-sizes", "1,2", "--warmup", "0", "--repeats", "1",
                 "--settle-ms", "1", "--group-sizes", "2", "--distr", "block_m=32", "--no-plots", "--output-dir",
                 str(tmp_path), "--run-name", "v"]) == 0
    data = json.loads((tmp_path / "v" / "result.json").read_text())
    points = data["variants"][1]["latency"]["images"]
    assert [(p["batch"], p["seq_len"], p["throughput_unit"]) for p in points] == [(1, 65, "images/s"),
                                                                                   (2, 65, "images/s")]
    assert "prefill" not in data["variants"][1]["latency"]
    assert [p["settle_ms"] for p in points] == [1.0, 1.0]  # --settle-ms reaches the image batches


def test_ctrl_c_in_the_exact_variant_keeps_an_empty_run(tiny_lm_dir, tmp_path, monkeypatch):
    """Ctrl-C before exact attention finished: the run wrote its report (it raised IndexError writing it)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_lm", interrupted)
    cfg = RunConfig(model=str(tiny_lm_dir), seq_lens=[16], batch_sizes=[1], group_sizes=[2], distr={"block_m": 32},
                    plots=False, output_dir=str(tmp_path), run_name="r")
    out = bench.run_bench(cfg, progress=False)
    assert out.interrupted and json.loads(out.result.path.read_text())["variants"] == []
    assert "status interrupted, 0 variant(s) recorded" in (tmp_path / "r" / "report.md").read_text()
