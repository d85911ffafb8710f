"""scripts/probe_predecessor.py: a GPU probe; without a GPU it says so instead of failing inside torch."""
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
def test_probe_predecessor_without_a_gpu_is_a_named_error(load_script, capsys):
    module = load_script("probe_predecessor")
    with pytest.raises(SystemExit) as exc:
        module.main(["--rounds", "1"])
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
