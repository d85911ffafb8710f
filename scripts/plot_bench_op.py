"""Draw a ``scripts/bench_attention.py --json`` file (forward or ``--backward``) as a figure: one panel per head dim
and causal flag, each variant's speed vs SDPA-flash over N, its median error in the legend, issue 3's 1.37x target
as a dashed line (``distr_patch/eval/op_plot.py``; needs matplotlib: ``pip install 'distr_patch[plots]'``).

    python scripts/plot_bench_op.py docs/results/sweep-2026-12-06-h100-33rd.json docs/img/op-sweep.png
    python scripts/plot_bench_op.py sweep.json out.png --variants "distr G=1" "distr G=2 mean sdpa"   # or: all
"""
from __future__ import annotations

import argparse
import sys

from distr_patch.eval.config import ConfigError
from distr_patch.eval.op_plot import TARGET, load_rows, plot_op


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", help="a bench_attention.py --json file")
    p.add_argument("out", help="the figure to write (.png, .svg, .pdf)")
    p.add_argument("--variants", nargs="+", help="variant names to draw, in order, or 'all' (default: the peers, "
                   "G=1 and issue 3's G=2 points on both engines)")
    p.add_argument("--target", type=float, default=TARGET, help="dashed line at this ratio (0: none)")
    args = p.parse_args(argv)
    try:
        header, rows = load_rows(args.json)
        out = plot_op(header, rows, args.out, variants=args.variants, target=args.target or None)
    except (ConfigError, FileNotFoundError, ImportError) as e:
        print(f"plot_bench_op.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
