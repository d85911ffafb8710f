"""``--lm-eval-tasks`` over 2 processes (torchrun, gloo): each scores half the requests; metrics equal 1 process's."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install -e '.[lm-eval]')")

from tiny_models import write_lm_eval_task  # noqa: E402

from distr_patch.cli.main import main  # noqa: E402
from distr_patch.eval.distributed import Shard  # noqa: E402
from distr_patch.eval.lm_eval_shard import ShardedRequests, owners  # noqa: E402

ROWS = 6
CHOICES = 4


def _requests(docs, per_doc, task="t"):
    return [SimpleNamespace(task_name=task, doc_id=d, idx=i) for d in range(docs) for i in range(per_doc)]


def test_owners_deal_documents_round_robin():
    reqs = _requests(3, 2) + _requests(2, 1, task="u")
    assert owners(reqs, 2) == [0, 0, 1, 1, 0, 0, 1, 0]  # a document's requests stay on one process
    assert owners(reqs, 1) == [0] * len(reqs)
    assert owners([object(), object(), object()], 2) == [0, 1, 0]  # no doc_id: dealt one by one


class _Base:
    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-float(r.doc_id), r.idx == 0) for r in requests]


class _Fake(ShardedRequests, _Base):
    pass


def test_each_rank_scores_its_share_and_gets_all_answers(monkeypatch):
    reqs = _requests(5, CHOICES)
    lms = [_Fake(), _Fake()]
    shares = []
    monkeypatch.setattr(Shard, "gather", lambda self, items: shares.append(items) or [])
    for rank, lm in enumerate(lms):
        lm.shard = Shard(rank, 2)
        lm.loglikelihood(reqs)
    assert [lm.requests_scored for lm in lms] == [12, 8] and [lm.requests_seen for lm in lms] == [20, 20]
    merged = [a for _, a in sorted(shares[0] + shares[1])]  # what the real gather returns on every rank
    assert merged == _Base().loglikelihood(reqs)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_lm_eval_task(tmp_path_factory.mktemp("lm_eval_shard_task"), ROWS)


@pytest.mark.slow
def test_two_processes_equal_one(tiny_lm_dir, task_dir, tmp_path, monkeypatch):
    """Equal to the bit: both runs score one request per batch on one thread, so every matmul has the same shape
    and summation order. (With batches of 4 and the default thread count in the one-process run, a last-bit
    difference in q can flip a hash sign in the paper's G=2, change a group and move a metric; the one failure
    seen, not reproduced, fits that.)"""
    flags = ["eval", "lm", "--model", str(tiny_lm_dir), "--lm-eval-tasks", "mytask", "--lm-eval-include",
             str(task_dir), "--group-sizes", "2", "--settings", "paper", "--distr", "block_m=32", "--no-perplexity",
             "--no-plots", "--batch-size", "1", "--device", "cpu", "--output-dir", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the two processes below
    try:
        assert main([*flags, "--run-name", "one"]) == 0
    finally:
        torch.set_num_threads(threads)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "distr_patch"]
    out = subprocess.run([*launch, *flags, "--run-name", "two"], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("results: ") == 1  # only process 0 reports (and writes)
    one, two = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("one", "two"))
    assert two["provenance"]["num_processes"] == 2
    assert [v["name"] for v in two["variants"]] == ["exact", "G2"]
    for a, b in zip(one["variants"], two["variants"]):
        assert {k: m["value"] for k, m in a["metrics"].items()} == {k: m["value"] for k, m in b["metrics"].items()}
    requests = ROWS * CHOICES
    assert one["datasets"]["lm-eval"]["requests_per_process"] == [requests]
    assert two["datasets"]["lm-eval"]["requests_per_process"] == [requests // 2, requests // 2]
    assert two["datasets"]["lm-eval"]["rows_per_task"] == {"mytask": ROWS}
