"""pyproject.toml's version floors, scripts/check_floors.sh's pins and compat.py's gates say the same versions; every
package distr_patch imports is declared there."""
import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (requires-python admits 3.10, where these checks skip)

ROOT = Path(__file__).resolve().parents[1]
FLOORED = ("torch", "triton", "transformers", "accelerate", "datasets", "evaluate", "tqdm", "pyyaml")
# distributions whose import name differs from their name on PyPI
DISTRIBUTION_OF = {"yaml": "pyyaml", "PIL": "pillow", "lm_eval": "lm-eval"}


def _floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep.replace(" ", ""))
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def _pins() -> dict[str, str]:
    text = (ROOT / "scripts" / "check_floors.sh").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([0-9.]+)$", text, re.M)}


def test_the_floor_script_pins_pyproject_floors():
    from packaging.version import Version

    floors, pins = _floors(), _pins()
    for name in FLOORED:
        assert name in floors, f"pyproject.toml has no >= floor for {name}"
        assert name in pins and Version(pins[name]) == Version(floors[name]), (name, pins.get(name), floors[name])


def test_the_triton_floor_is_the_kernels_own():
    from packaging.version import Version

    from distr_patch.ops import configs

    assert Version(configs.MIN_TRITON) == Version(_floors()["triton"])


def test_compat_gates_follow_the_floors():
    from packaging.version import Version

    from distr_patch import compat

    assert compat.MIN_SUPPORTED_TRANSFORMERS_VERSION == Version(_floors()["transformers"])


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Every distribution pyproject.toml names, required or in an extra (normalized names)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {_normalized(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs}


def _third_party_imports() -> dict[str, str]:
    """{top-level module: a file under distr_patch/ that imports it}, the standard library and distr_patch left out."""
    found = {}
    for path in sorted((ROOT / "distr_patch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "distr_patch" and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared():
    imports = _third_party_imports()
    assert {"torch", "triton", "transformers", "packaging", "numpy"} <= set(imports), sorted(imports)
    declared = _declared()
    missing = {module: where for module, where in imports.items()
               if _normalized(DISTRIBUTION_OF.get(module, module)) not in declared}
    assert not missing, f"imported but not in pyproject.toml's dependencies or extras: {missing}"
