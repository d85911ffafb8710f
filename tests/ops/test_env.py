"""distr_patch.ops.env names every DISTR_* switch the package reads, and a switch it does not read is reported."""
import os
import re
import subprocess
import sys
from pathlib import Path

from distr_patch.ops import env

PACKAGE = Path(__file__).resolve().parents[2] / "distr_patch"


def test_known_switches_are_the_ones_the_source_reads():
    named = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name != "env.py":
            named |= set(re.findall(r"DISTR_[A-Z0-9_]+", path.read_text()))
    assert named == env.KNOWN, (f"read but not in env.KNOWN: {sorted(named - env.KNOWN)}; "
                                f"in env.KNOWN but read nowhere: {sorted(env.KNOWN - named)}")
    assert not env.KNOWN & set(env.RETIRED)


def test_unknown_and_retired_switches_are_named():
    lines = env.unknown_switches({"DISTR_FAST_LAUNH": "1", "DISTR_QEFF_PAIR_WEIGHTS": "sums", "DISTR_KV_TMA": "1",
                                  "DISTR_ZZZ": "1", "PATH": "/bin"})
    assert lines == ["DISTR_FAST_LAUNH: not a distr_patch switch (did you mean DISTR_FAST_LAUNCH?)",
                     "DISTR_QEFF_PAIR_WEIGHTS: no longer read (" + env.RETIRED["DISTR_QEFF_PAIR_WEIGHTS"] + ")",
                     "DISTR_ZZZ: not a distr_patch switch"]
    assert env.unknown_switches({"DISTR_KV_TMA": "0", "HOME": "/root"}) == []


def test_import_warns_once_about_an_unknown_switch():
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTR_")}
    run_env["DISTR_FWD_TILE_ORDR"] = "auto"
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    import distr_patch.ops\n"
            "print(sum('DISTR_FWD_TILE_ORDR: not a distr_patch switch (did you mean DISTR_FWD_TILE_ORDER?)'"
            " in str(x.message) for x in w))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == "1"
