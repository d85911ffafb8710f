"""``distr-patch bench op``: the operator sweep, i.e. ``scripts/bench_attention.py``'s ``main(argv)``."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

HELP = "operator latency sweep (runs scripts/bench_attention.py; its flags pass through)"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_attention.py"


def register(sub) -> None:
    p = sub.add_parser("op", help=HELP, description=HELP + "; see `python scripts/bench_attention.py --help`",
                       add_help=False)
    p.set_defaults(func=run, passthrough=True)  # main() hands every further argument to the script


def run(args: argparse.Namespace) -> int:
    if not SCRIPT.is_file():
        raise FileNotFoundError(f"bench op runs {SCRIPT}, which is not in this checkout (it ships with the "
                                f"repository, not the wheel: run from a clone of distr_patch)")
    spec = importlib.util.spec_from_file_location("bench_attention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "main"):
        raise ImportError(f"{SCRIPT} has no main(argv)")
    argv0, sys.argv[0] = sys.argv[0], "distr-patch bench op"  # the script's usage line names this command
    try:
        result = module.main(list(args.passthrough_args))  # the script's rows, or an exit status
    finally:
        sys.argv[0] = argv0
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
