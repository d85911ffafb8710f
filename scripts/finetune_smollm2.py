"""Issue 7's accuracy experiment: fine-tune SmolLM2-135M with DistrAttention (G=2, each fusion) next to exact
attention on the Lee corpus, held-out perplexity before/after, training tokens/s.

    python scripts/finetune_smollm2.py [more distr-patch finetune flags, e.g. --max-steps 100]
"""
import sys
from pathlib import Path

from distr_patch.cli.main import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune-smollm2-135m.yaml"
sys.exit(main(["finetune", "--config", str(CONFIG), *sys.argv[1:]]))
