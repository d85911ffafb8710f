"""Llama-3.2-1B on WikiText-2 perplexity and ARC-Easy / HellaSwag (needs the hub and the model licence).

    python scripts/eval_llama.py [--model OTHER] [more distr-patch eval lm flags]
"""
import sys
from pathlib import Path

from distr_patch.cli.main import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "llama-3.2-1b.yaml"
sys.exit(main(["eval", "lm", "--config", str(CONFIG), *sys.argv[1:]]))
