"""``distr-patch eval vit``: image top-1/top-5 (classifier) or embedding fidelity (backbone), exact vs each G."""
from __future__ import annotations

import argparse

from . import options as o

HELP = "top-1/top-5 of an image classifier, or embedding fidelity of a ViT backbone, exact vs each G"
EPILOG = """examples (where the hub is reachable):
  distr-patch eval vit --model google/vit-base-patch16-224 --data ./imagenet-val --limit 5000
  distr-patch eval vit --model facebook/deit-base-patch16-224 --data ./imagenet-val
  distr-patch eval vit --model facebook/dinov2-small --vit-metric fidelity --data ./photos
"""


def register(sub) -> None:
    p = sub.add_parser("vit", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_config(p)
    o.add_model(p, required_help="a local directory or a hub id (classifier; a backbone with --vit-metric fidelity)")
    o.add_variants(p)
    g = p.add_argument_group("data")
    o.add_data_source(g, data_help=o.IMAGE_SOURCES,
                      image_column="column of the images (image)", label_column="column of the class labels (label)")
    g.add_argument("--limit", type=int, default=o.S,
                   help="evaluate a seeded random sample of this many images (not the first rows: an image folder lists "
                        "them class by class)")
    g.add_argument("--batch-size", type=int, default=o.S, help="images per forward (8)")
    g.add_argument("--vit-metric", default=o.S, choices=["top-k", "fidelity"],
                   help="top-k: classifier accuracy; fidelity: cosine of pooled embeddings vs exact")
    o.add_output(p)
    o.finish(p, run)


def run(args: argparse.Namespace) -> int:
    from ..eval.vision import run_vit

    out = run_vit(o.config_from(args))
    return 130 if out.interrupted else 0
