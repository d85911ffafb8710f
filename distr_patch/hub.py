"""Whether the HuggingFace hub can be reached from here, asked once per process.

Offline, transformers and datasets retry the hub for about half a minute per lookup before they fall back to their
caches or fail (27 s for one model config, 31 s for one data set, measured on a machine without a network). Where
the hub cannot be reached, models load with ``local_files_only=True`` (``hub_kwargs``) and data sets inside
``cache_only()`` instead: from the cache at once, or a named error at once.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0  # one TCP connect to the hub's host
_TRUE = {"1", "on", "yes", "true"}
_OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


@functools.lru_cache(maxsize=None)
def hub_offline() -> bool:
    """True where the hub cannot be reached: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, or the host of
    ``HF_ENDPOINT`` (default huggingface.co) not accepting a TCP connection within ``PROBE_TIMEOUT_S``. Behind a
    proxy (``HTTPS_PROXY`` etc.) a direct connect proves nothing, so the hub counts as reachable. Cached for the
    process (``hub_offline.cache_clear()`` asks again)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in _OFFLINE_SWITCHES):
        return True
    if any(os.environ.get(v) for v in _PROXIES):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return False  # a malformed endpoint: huggingface_hub's own request says what is wrong with it
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=PROBE_TIMEOUT_S).close()
    except OSError:  # no name resolution, refused, unreachable, timed out
        return True
    return False


def hub_kwargs() -> dict:
    """``from_pretrained`` keywords for a hub id: ``{"local_files_only": True}`` where ``hub_offline()``, else {}."""
    return {"local_files_only": True} if hub_offline() else {}


@contextlib.contextmanager
def cache_only():
    """Where ``hub_offline()``: within, huggingface_hub and datasets read their caches only (their offline switches
    set, and restored after); elsewhere nothing changes."""
    if not hub_offline():
        yield
        return
    saved = []
    for name in ("huggingface_hub.constants", "datasets.config"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "HF_HUB_OFFLINE"):
            saved.append((module, module.HF_HUB_OFFLINE))
            module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in saved:
            module.HF_HUB_OFFLINE = value
