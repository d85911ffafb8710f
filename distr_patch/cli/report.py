"""``distr-patch report RESULTS...``: merge result JSON files into one markdown table and the plots."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "merge result JSON files into one markdown table and PNG plots"


def register(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP)
    p.add_argument("results", nargs="+", metavar="RESULTS", help="result.json files (or run directories)")
    p.add_argument("--output-dir", default="results/report", help="where report.md and the plots go (results/report)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.report import markdown, write_plots
    from ..eval.results import load_results

    paths = [Path(p) / "result.json" if Path(p).is_dir() else Path(p) for p in args.results]
    results = load_results(paths)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results)
    (out / "report.md").write_text(table)
    print(table)
    print(f"table: {out / 'report.md'}")
    for p in write_plots(results, out) if args.plots else []:
        print(f"plot:  {p}")
    return 0
