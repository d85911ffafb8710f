"""ViT-B/16 top-1/top-5 on an ImageNet-style image folder (needs the hub for the weights).

    python scripts/eval_vit_imagenet.py --data /path/to/imagenet-val [--model facebook/deit-base-patch16-224]
"""
import sys
from pathlib import Path

from distr_patch.cli.main import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vit-b16-imagenet.yaml"
sys.exit(main(["eval", "vit", "--config", str(CONFIG), *sys.argv[1:]]))
