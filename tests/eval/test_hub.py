"""distr_patch/hub.py: where the hub cannot be reached, hub ids load from the cache at once (transformers
would retry for about half a minute per lookup first)."""
import socket
import time

import pytest

from distr_patch import hub
from distr_patch.models.loading import ModelLoadError, load_model


@pytest.fixture
def fresh(monkeypatch):
    """No offline switch, no proxy, the default endpoint; the cached answer cleared before and after."""
    for v in (*hub._OFFLINE_SWITCHES, *hub._PROXIES, "HF_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    hub.hub_offline.cache_clear()
    yield monkeypatch
    hub.hub_offline.cache_clear()


class _Conn:
    def close(self):
        pass


def test_the_offline_switches(fresh):
    fresh.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no probe where a switch says offline"))
    fresh.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline() and hub.hub_kwargs() == {"local_files_only": True}
    hub.hub_offline.cache_clear()
    fresh.delenv("HF_HUB_OFFLINE")
    fresh.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.hub_offline()


def test_the_probe_connects_to_the_endpoints_host(fresh):
    calls = []

    def connect(address, timeout):
        calls.append((address, timeout))
        return _Conn()
    fresh.setattr(socket, "create_connection", connect)
    assert not hub.hub_offline() and hub.hub_kwargs() == {}
    assert calls == [(("huggingface.co", 443), hub.PROBE_TIMEOUT_S)]
    hub.hub_offline()
    assert len(calls) == 1  # asked once per process
    hub.hub_offline.cache_clear()
    fresh.setenv("HF_ENDPOINT", "http://mirror.example:8080/hf")
    hub.hub_offline()
    assert calls[-1][0] == ("mirror.example", 8080)


def test_unreachable_host_and_proxies(fresh):
    def refuse(address, timeout):
        raise socket.gaierror(-2, "Name or service not known")
    fresh.setattr(socket, "create_connection", refuse)
    assert hub.hub_offline()
    hub.hub_offline.cache_clear()
    fresh.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not hub.hub_offline()  # through a proxy a direct connect proves nothing


def test_an_unreachable_hub_fails_at_once_with_the_reason(fresh):
    """HF_HUB_OFFLINE unset, no network: the load reads the cache only and says so, in well under transformers'
    ~30 s of retries."""
    fresh.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"--model someorg/no-such-model: not a local path.*the hub is not "
                                             r"reachable from here .*the local cache has no copy of it"):
        load_model("someorg/no-such-model", "lm")
    assert time.perf_counter() - t0 < 10


def test_hub_ids_ask_the_cache_only_where_the_hub_is_unreachable(fresh):
    """The keyword that skips transformers' retries reaches both from_pretrained calls, for hub ids only."""
    from distr_patch.models import loading

    seen = []

    class Spy:
        @classmethod
        def from_pretrained(cls, location, **kwargs):
            seen.append(kwargs.get("local_files_only"))
            raise OSError("not in the cache")
    fresh.setattr(loading, "_auto_classes", lambda kind: (Spy, Spy))
    fresh.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError):
        load_model("someorg/model", "lm")
    hub.hub_offline.cache_clear()
    fresh.delenv("HF_HUB_OFFLINE")
    fresh.setattr(socket, "create_connection", lambda *a, **k: _Conn())
    with pytest.raises(ModelLoadError, match="the hub could not serve it"):
        load_model("someorg/model", "lm")
    assert seen == [True, None]


def test_cache_only_sets_the_offline_switches_only_while_the_hub_is_unreachable(fresh):
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_OFFLINE
    fresh.setattr(constants, "HF_HUB_OFFLINE", False)
    fresh.setattr(socket, "create_connection", lambda *a, **k: _Conn())
    with hub.cache_only():
        assert constants.HF_HUB_OFFLINE is False  # reachable: nothing changes
    hub.hub_offline.cache_clear()
    fresh.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    with pytest.raises(RuntimeError, match="inside"):
        with hub.cache_only():
            assert constants.HF_HUB_OFFLINE is True
            raise RuntimeError("inside")
    assert constants.HF_HUB_OFFLINE is False  # restored, after an error too
    fresh.setattr(constants, "HF_HUB_OFFLINE", before)


def test_a_data_set_name_with_the_hub_unreachable_fails_at_once(fresh):
    datasets = pytest.importorskip("datasets")
    from distr_patch.data.errors import DataError
    from distr_patch.data.text import load_text

    fresh.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    fresh.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"--data someorg/no-such-data: .*or a data set in the local cache \(the hub "
                                        r"is not reachable from here"):
        load_text("someorg/no-such-data")
    assert time.perf_counter() - t0 < 10 and datasets.config.HF_HUB_OFFLINE is False


def test_a_task_name_with_its_configuration_is_named_whole_when_unreachable(fresh):
    """``--tasks NAME:CONFIG``: the error names the configuration too, as the user wrote it."""
    datasets = pytest.importorskip("datasets")
    from distr_patch.data.choices import load_choices
    from distr_patch.data.errors import DataError
    from distr_patch.data.text import load_text

    fresh.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    fresh.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("unreachable")))
    with pytest.raises(DataError, match=r"^--tasks someorg/no-such-task:Some-Config: not a local file"):
        load_choices("someorg/no-such-task", name="Some-Config", split="validation")
    with pytest.raises(DataError, match=r"^--data someorg/no-such-data --data-name cfg: not a local file"):
        load_text("someorg/no-such-data", name="cfg")
