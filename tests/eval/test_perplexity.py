"""Perplexity of the harness vs hand computations on a tiny model."""
import math

import pytest
import torch
import torch.nn.functional as F

from distr_patch.eval.distributed import Shard
from distr_patch.eval.perplexity import perplexity, strided_windows
from tiny_models import sample_text, tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer()
    return tiny_llama(len(tok)), tok


@pytest.mark.parametrize("T,window,stride", [(100, 32, 16), (100, 32, 32), (97, 40, 7), (10, 32, 16)])
def test_windows_score_every_token_once(T, window, stride):
    ws = strided_windows(T, window, stride)
    assert ws[0].begin == 0 and ws[-1].end == T
    assert sum(w.targets for w in ws) == T  # targets tile the text without overlap
    assert all(0 < w.targets <= w.end - w.begin <= window for w in ws)
    assert all(a.end - b.targets == a.end - (b.end - a.end) for a, b in zip(ws, ws[1:]))


def test_max_windows_truncates():
    assert len(strided_windows(1000, 64, 32, max_windows=3)) == 3


def test_one_window_equals_mean_token_nll(lm):
    model, tok = lm
    ids = tok(sample_text(60), return_tensors="pt").input_ids[0]
    out = perplexity(model, ids, window=512, stride=256, progress=False)
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss  # mean NLL of tokens 1..T-1
    assert out["num_windows"] == 1 and out["num_tokens"] == ids.numel() - 1
    assert out["metrics"]["perplexity"] == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_strided_equals_brute_force_loop(lm):
    model, tok = lm
    ids = tok(sample_text(200), return_tensors="pt").input_ids[0][:150]
    window, stride = 48, 20
    out = perplexity(model, ids, window=window, stride=stride, progress=False)
    # Brute force: token t is scored once, by the window that first contains it, from its own forward pass
    # over that window's tokens before t.
    nll, n, prev_end = 0.0, 0, 0
    for begin in range(0, ids.numel(), stride):
        end = min(begin + window, ids.numel())
        for t in range(max(prev_end, begin + 1), end):
            with torch.no_grad():
                logits = model(ids[begin:t][None]).logits[0, -1]
            nll += F.cross_entropy(logits[None], ids[t][None]).item()
            n += 1
        prev_end = end
        if end == ids.numel():
            break
    assert out["num_tokens"] == n
    assert out["metrics"]["nll_per_token"] == pytest.approx(nll / n, rel=1e-4)


class _PooledRank(Shard):
    """One rank of a simulated multi-process run: gather returns what all ranks so far put in ``pool``."""

    def __init__(self, rank, world, pool):
        super().__init__(rank, world)
        object.__setattr__(self, "pool", pool)

    def gather(self, items):
        self.pool.extend(items)
        return [r for _, r in sorted(self.pool, key=lambda x: x[0])]


def test_sharded_equals_single_process(lm):
    model, tok = lm
    ids = tok(sample_text(300), return_tensors="pt").input_ids[0]
    single = perplexity(model, ids, window=64, stride=32, progress=False)
    pool = []
    perplexity(model, ids, window=64, stride=32, shard=_PooledRank(1, 2, pool), progress=False)
    assert pool and all(i % 2 == 1 for i, _ in pool)  # rank 1 did the odd windows only
    sharded = perplexity(model, ids, window=64, stride=32, shard=_PooledRank(0, 2, pool), progress=False)
    assert sharded["num_windows"] == single["num_windows"] > 2
    assert sharded["metrics"] == single["metrics"]  # same numbers summed in the same order: bit-equal
