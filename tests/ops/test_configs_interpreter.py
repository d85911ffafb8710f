"""When the Triton interpreter cannot run the kernels (measured: Triton 3.2-3.6 with NumPy >= 2.4), the library
says which versions to change instead of failing inside the interpreter."""
import pytest

from distr_patch.ops import configs


@pytest.mark.parametrize("triton,numpy,broken", [
    ("3.6.0", "2.4.6", True), ("3.2.0", "2.4.0", True), ("3.6.0", "2.3.5", False), ("3.7.1", "2.4.6", False),
    ("3.9.0", "2.4.6", False), ("3.5.1", "1.26.4", False),
])
def test_interpreter_problem_names_the_versions(triton, numpy, broken):
    problem = configs.interpreter_problem(triton, numpy)
    assert (problem is not None) == broken
    if broken:
        assert f"Triton {triton}" in problem and f"NumPy {numpy}" in problem and "triton>=3.7" in problem


def test_interpreting_raises_the_problem(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(configs, "installed_interpreter_problem", lambda: "the interpreter cannot run the kernels")
    with pytest.raises(RuntimeError, match="cannot run the kernels"):
        configs.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert configs.interpreting() is False  # off: no check, no error


@pytest.mark.parametrize("triton,broken", [("3.3.1", True), ("3.2.0", True), ("3.4.0", False), ("3.9.0", False)])
def test_triton_below_the_floor_is_named(triton, broken):
    """Triton < 3.4 cannot compile the forward (3.3) or formed Q_eff wrong under the interpreter (3.2)."""
    problem = configs.triton_problem(triton)
    assert (problem is not None) == broken
    if broken:
        assert f"triton>={configs.MIN_TRITON}, found {triton}" in problem


def test_an_old_triton_stops_the_kernels_with_its_version(monkeypatch):
    import torch

    from distr_patch import distr_attention

    monkeypatch.setattr(configs, "installed_triton_problem", lambda: "the Triton kernels need triton>=3.4, found 3.3.0")
    monkeypatch.setattr("distr_patch.ops.validate.installed_triton_problem", configs.installed_triton_problem)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 1, 8, 32)
    with pytest.raises(RuntimeError, match="need triton>=3.4, found 3.3.0"):
        distr_attention(q, q, q, backend="triton")
    assert distr_attention(q, q, q, backend="reference").shape == q.shape  # the reference needs no Triton
