"""The GPU probes in scripts/: without a GPU each says so instead of failing inside torch."""
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is visible")
@pytest.mark.parametrize("script", ["probe_predecessor", "probe_overlap"])
def test_a_probe_without_a_gpu_is_a_named_error(load_script, capsys, script):
    module = load_script(script)
    with pytest.raises(SystemExit) as exc:
        module.main(["--rounds", "1"])
    assert exc.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
