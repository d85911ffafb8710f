"""Latency sweep of the real-size presets (random weights; for the GPU), then one merged report.

    python scripts/bench_models.py [--presets llama-3.2-1b,vit-b16] [--output-dir results]
"""
import argparse
import sys
from pathlib import Path

from distr_patch.cli.main import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = ("llama-3.2-1b", "qwen2-1.5b", "vit-b16", "deit-b")

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--presets", default=",".join(PRESETS))
parser.add_argument("--output-dir", default="results")
args, rest = parser.parse_known_args()
runs = []
for name in args.presets.split(","):
    run = f"bench-{name}"
    status = main(["bench", "model", "--config", str(CONFIGS / f"bench-{name}.yaml"), "--output-dir", args.output_dir,
                   "--run-name", run, *rest])
    if status != 0:
        sys.exit(status)
    runs.append(str(Path(args.output_dir) / run / "result.json"))
sys.exit(main(["report", *runs, "--output-dir", str(Path(args.output_dir) / "bench-report")]))
