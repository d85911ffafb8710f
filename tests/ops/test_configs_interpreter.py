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
