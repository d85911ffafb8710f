"""scripts/probe_predecessor.py: a GPU probe; without a GPU it says so instead of failing inside torch."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_probe_predecessor_without_a_gpu_is_a_named_error(capsys):
    spec = importlib.util.spec_from_file_location("probe_predecessor", ROOT / "scripts" / "probe_predecessor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exc:
        module.main(["--rounds", "1"])
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
