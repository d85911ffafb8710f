"""lm-eval requests split over processes: each process scores its share, every process gets every answer.

lm-eval sees one process (rank 0 of 1) and builds all requests everywhere; the LM's ``loglikelihood``,
``loglikelihood_rolling`` and ``generate_until`` score only this process's documents (documents dealt
round-robin in request order, a document's requests on one process) and gather the answers back in
request order. Every process then computes the metrics from the same answers in the same order as a
single process would (lm-eval batches each process's share by itself, so a log-likelihood can differ from
the one-process value in its last bits). Mixed into lm-eval's ``HFLM`` by :func:`sharded_hflm`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from .distributed import Shard


def owners(requests: list, world: int) -> list[int]:
    """The process of each request: [len(requests)] ranks, documents (task, doc_id) dealt round-robin."""
    docs: dict[Any, int] = {}
    out = []
    for i, r in enumerate(requests):
        doc_id = getattr(r, "doc_id", None)
        key = (getattr(r, "task_name", None), doc_id) if doc_id is not None else ("request", i)
        out.append(docs.setdefault(key, len(docs)) % world)
    return out


class ShardedRequests:
    """Mixin placed before an lm-eval LM class. ``requests_seen`` / ``requests_scored`` count requests given
    to this process / scored by it (the sum of ``requests_scored`` over processes is ``requests_seen``)."""

    shard: Shard = Shard()
    requests_seen: int = 0
    requests_scored: int = 0

    def loglikelihood(self, requests, *args, **kwargs):
        return self._sharded(super().loglikelihood, requests, args, kwargs)

    def loglikelihood_rolling(self, requests, *args, **kwargs):
        return self._sharded(super().loglikelihood_rolling, requests, args, kwargs)

    def generate_until(self, requests, *args, **kwargs):
        return self._sharded(super().generate_until, requests, args, kwargs)

    def _sharded(self, method: Callable, requests: list, args: tuple, kwargs: dict) -> list:
        shard = self.shard
        mine = [i for i, rank in enumerate(owners(requests, shard.world)) if rank == shard.rank]
        self.requests_seen += len(requests)
        self.requests_scored += len(mine)
        if shard.world == 1:
            return method(requests, *args, **kwargs)
        if not shard.is_main and not args and "disable_tqdm" in inspect.signature(method).parameters:
            kwargs = {**kwargs, "disable_tqdm": True}
        answers = method([requests[i] for i in mine], *args, **kwargs) if mine else []
        if len(answers) != len(mine):
            raise RuntimeError(f"lm-eval returned {len(answers)} answers for {len(mine)} requests")
        return shard.gather(list(zip(mine, answers)))


def sharded_hflm(shard: Shard, **hflm_kwargs):
    """lm-eval's ``HFLM(**hflm_kwargs)`` scoring only ``shard``'s share of each request list."""
    from lm_eval.models.huggingface import HFLM

    cls = type("ShardedHFLM", (ShardedRequests, HFLM), {})
    lm = cls(**hflm_kwargs)
    lm.shard = shard
    return lm
