"""pyproject.toml's version floors, scripts/check_floors.sh's pins and compat.py's gates say the same versions."""
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (requires-python admits 3.10, where these checks skip)

ROOT = Path(__file__).resolve().parents[1]
FLOORED = ("torch", "triton", "transformers", "accelerate", "datasets", "evaluate", "tqdm", "pyyaml")


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
