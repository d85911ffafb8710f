"""scripts/device_check.sh names only variants that scripts/bench_attention.py knows (a typo there costs a GPU call:
the bench refuses unknown names only once it runs on the device)."""
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def _bench_commands():
    """Each bench_attention.py command of the script, its continuation lines joined, as argv lists."""
    text = (ROOT / "scripts" / "device_check.sh").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in re.finditer(r"python scripts/bench_attention\.py([^|;]*)", line):
            yield shlex.split(m.group(1).replace("2>&1", ""))


def test_device_check_bench_variants_are_known(load_script):
    bench = load_script("bench_attention")
    commands = list(_bench_commands())
    assert len(commands) >= 4  # fwd, bwd, sweep, bwd16k at least
    named = 0
    for argv in commands:
        if "--variants" not in argv:
            continue
        names = []
        for a in argv[argv.index("--variants") + 1:]:
            if a.startswith("--"):
                break
            names.append(a)
        known = bench.BWD_VARIANTS if "--backward" in argv else bench._variants(SimpleNamespace())
        assert names and not [n for n in names if n not in known], (argv, sorted(known))
        named += 1
    assert named >= 2  # sweep and bwd16k name their variants
