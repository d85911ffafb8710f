"""``distr-patch report RESULTS...``: merge result JSON files into one markdown table and the plots."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import options as o

HELP = "merge result JSON files into one markdown table and PNG plots"
EPILOG = """examples:
  distr-patch report results/eval-a results/eval-b/result.json
  distr-patch report results/eval-lm-smollm2 --speed-from gpu/bench-llama/result.json
  distr-patch report results/eval-lm-smollm2 --speed-from sweep.json --speed-at N=16384,causal=1
--speed-from places each eval variant at (speedup of the bench variant with the same DistrAttention settings,
accuracy loss from the eval file) in the trade-off plot and table; variants without a match are listed.
"""


def _fields(text: str) -> dict[str, str]:
    out = {}
    for item in o.str_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r}: expected FIELD=VALUE")
        out[key.strip()] = value.strip()
    return out


def register(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", metavar="RESULTS", help="result.json files (or run directories)")
    p.add_argument("--output-dir", default="results/report", help="where report.md and the plots go (results/report)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--speed-from", metavar="BENCH", help="speedups for the trade-off from this `bench model` "
                   "result (file or run directory) or `bench op --json` file, e.g. measured on a GPU")
    p.add_argument("--speed-at", type=_fields, default={}, metavar="FIELD=VALUE,...",
                   help="average the speedup over these bench points only, e.g. seq_len=4096 or batch=1 (bench "
                        "model: measure, batch, seq_len; default measure=prefill/images) or N=16384,causal=1 "
                        "(bench op: d, N, B, H, causal); default: all of them, geometric mean")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.report import markdown, write_plots
    from ..eval.config import check_output_dir
    from ..eval.results import label_runs, load_results

    out = check_output_dir(args.output_dir)
    paths = [Path(p) / "result.json" if Path(p).is_dir() else Path(p) for p in args.results]
    results = label_runs(paths, load_results(paths))
    tradeoff = None
    if args.speed_from:
        from ..eval.speed import load_speeds
        from ..eval.tradeoff import combine

        tradeoff = combine(list(zip(paths, results)), load_speeds(args.speed_from, args.speed_at))
    elif args.speed_at:
        from ..eval.config import ConfigError

        raise ConfigError("--speed-at: needs --speed-from")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, tradeoff)
    (out / "report.md").write_text(table)
    print(table)
    print(f"table: {out / 'report.md'}")
    for p in write_plots(results, out, tradeoff) if args.plots else []:
        print(f"plot:  {p}")
    return 0
