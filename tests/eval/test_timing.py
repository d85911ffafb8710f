"""``eval.timing``: which CUDA devices a timed call waits on (faked: this runs without a GPU), and the quantiles."""
import contextlib
import statistics
import types

import pytest
import torch

from distr_patch.eval import timing


class FakeCuda:
    """Records where events are recorded and which devices are synchronised."""

    def __init__(self, monkeypatch, current=0):
        self.log, self.active = [], None
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self):
                fake.log.append(("record", fake.active))

            def synchronize(self):
                fake.log.append(("event sync", fake.active))

            def elapsed_time(self, other):
                return 1.5

        @contextlib.contextmanager
        def device(d):
            fake.active, before = torch.device(d), fake.active
            yield
            fake.active = before

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: fake.log.append(("sync", torch.device(d))))


def test_timer_records_on_the_device_it_is_given(monkeypatch):
    """``--device cuda:1`` in one process: the events go on cuda:1's stream (they went on the current device's)."""
    fake = FakeCuda(monkeypatch, current=0)
    timer = timing.Timer(torch.device("cuda:1"))
    assert timer(lambda: "out") == "out" and timer.samples == [1.5]
    assert fake.log == [("record", torch.device("cuda:1")), ("record", torch.device("cuda:1")),
                        ("event sync", torch.device("cuda:1"))]
    assert timing.cuda_devices("cuda") == [torch.device("cuda:0")]  # no index: the current device


def test_timer_of_a_model_on_two_gpus_waits_for_both(monkeypatch):
    fake = FakeCuda(monkeypatch)

    class TwoGpuModel(torch.nn.Module):  # a device_map model: parameters on cuda:1 and cuda:0
        def parameters(self, recurse=True):
            return iter([types.SimpleNamespace(device=torch.device("cuda:1")),
                         types.SimpleNamespace(device=torch.device("cuda", 0))])

        def buffers(self, recurse=True):
            return iter([types.SimpleNamespace(device=torch.device("cpu"))])

    timer = timing.Timer(TwoGpuModel())
    assert timer.devices == [torch.device("cuda:0"), torch.device("cuda:1")]
    timer(lambda: None)
    cuda0, cuda1 = torch.device("cuda:0"), torch.device("cuda:1")
    assert fake.log == [("record", cuda0), ("sync", cuda1), ("record", cuda0), ("event sync", cuda0)]


def test_timer_on_the_cpu_times_wall_clock():
    timer = timing.Timer(torch.nn.Linear(2, 2))
    assert not timer.cuda
    timer(lambda: sum(range(1000)))
    assert len(timer.samples) == 1 and timer.samples[0] >= 0


def test_quantiles_are_p20_p50_p80():
    samples = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    q = timing.quantiles(samples)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    assert q == {"p20_ms": deciles[1], "p50_ms": 3.5, "p80_ms": deciles[7]}
    assert timing.quantiles([2.0]) == {"p20_ms": 2.0, "p50_ms": 2.0, "p80_ms": 2.0}
    with pytest.raises(ValueError, match="no timing samples"):
        timing.quantiles([])
