"""``distr-patch finetune``: recover accuracy by fine-tuning a DistrAttention-patched model (HF Trainer).

Scores exact attention and each DistrAttention variant on held-out data, fine-tunes each the same way
(exact attention too, so the comparison is fair), scores again and saves each model. Writes one directory:
``finetune.json``, ``report.md`` (one table), ``finetune_tradeoff.png`` (one plot), ``checkpoints/<variant>/``.
Settings merge defaults < ``--config`` YAML < flags. Multi-GPU: ``accelerate launch -m distr_patch finetune ...``.
"""
from __future__ import annotations

import argparse

from . import options as o

HELP = "fine-tune a DistrAttention-patched model (HF Trainer) and compare held-out accuracy before/after"
EPILOG = """examples:
  distr-patch finetune --model smollm2-135m --settings paper,recommended --max-steps 60 --seq-len 256
  distr-patch finetune --config configs/finetune-smollm2-135m.yaml
  distr-patch finetune --model smollm2-135m --lora-r 16 --lora-targets q_proj,k_proj,v_proj,o_proj --max-steps 60
  distr-patch finetune --task vit --model google/vit-base-patch16-224 --data ./images --epochs 3 --bf16
  accelerate launch --multi_gpu --num_processes 2 -m distr_patch finetune --config FILE.yaml
"""


def register(sub) -> None:
    p = sub.add_parser("finetune", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_config(p)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=o.S, help="an alias (smollm2-135m), a local directory or .gguf file, or a hub id")
    g.add_argument("--task", default=o.S, choices=["lm", "vit"], help="lm: causal-LM on text (default); "
                                                                     "vit: image classification (ViT/DeiT)")
    g.add_argument("--dtype", default=o.S, choices=["float32", "float16", "bfloat16"],
                   help="weights dtype (float32; GGUF weights are dequantised to it)")
    g.add_argument("--device", default=o.S, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--seed", type=int, default=o.S, help="seed of the run (0)")
    g = p.add_argument_group("variants (exact attention first, fine-tuned the same way)")
    g.add_argument("--group-sizes", type=o.group_size_list, default=o.S, metavar="G,G",
                   help="DistrAttention G (2); none: only --distr-configs")
    o.add_distr_configs(g)
    g.add_argument("--settings", type=o.str_list, default=o.S, metavar="S,S",
                   help="paper (mean fusion, no window) and/or recommended (rank-1 + exact window); "
                        "default recommended")
    g.add_argument("--distr", type=o.key_value, action=o._KeyValues, default=o.S, metavar="FIELD=VALUE",
                   help="set a DistrConfig field on every variant (repeatable)")
    g.add_argument("--layers", type=o.int_list, default=o.S, metavar="I,I",
                   help="only these layer indices use DistrAttention (default: all)")
    g.add_argument("--no-exact-baseline", dest="exact_baseline", action="store_false", default=o.S,
                   help="do not fine-tune exact attention for comparison")
    g = p.add_argument_group("data (the first part trains, the part after it is held out)")
    o.add_data_source(g, data_help="lm: 'lee' (default), " + o.TEXT_SOURCES + "; vit: " + o.IMAGE_SOURCES,
                      text_column="lm: column holding the text (text)", image_column="vit: column of the images (image)",
                      label_column="vit: column of the class index (label)")
    g.add_argument("--seq-len", type=int, default=o.S, help="lm: tokens per training block (256)")
    g.add_argument("--train-tokens", type=int, default=o.S, help="lm: training tokens (all but the held-out)")
    g.add_argument("--heldout-tokens", type=int, default=o.S, help="lm: held-out tokens after them (4096)")
    g.add_argument("--eval-window", type=int, default=o.S, help="lm: held-out perplexity window (--seq-len)")
    g.add_argument("--eval-stride", type=int, default=o.S, help="lm: its stride (window/2)")
    g.add_argument("--heldout-fraction", type=float, default=o.S, help="vit: held-out fraction of the images (0.2)")
    g.add_argument("--limit", type=int, default=o.S,
                   help="vit: use a seeded random sample of this many images (not the first rows: an image folder "
                        "lists them class by class)")
    g = p.add_argument_group("training (HF TrainingArguments)")
    g.add_argument("--learning-rate", type=float, default=o.S, help="peak learning rate (1e-4)")
    g.add_argument("--max-steps", type=int, default=o.S, help="optimizer steps (100; 0: use --epochs)")
    g.add_argument("--epochs", type=float, default=o.S, help="epochs when --max-steps is 0 (1)")
    g.add_argument("--batch-size", type=int, default=o.S, help="per-device batch size (4)")
    g.add_argument("--grad-accum", type=int, default=o.S, help="gradient accumulation steps (1)")
    g.add_argument("--warmup-steps", type=int, default=o.S, help="learning-rate warm-up steps (10)")
    g.add_argument("--weight-decay", type=float, default=o.S, help="AdamW weight decay (0)")
    g.add_argument("--lr-scheduler", default=o.S, choices=["linear", "cosine", "constant", "constant_with_warmup"],
                   help="learning-rate schedule (cosine)")
    g.add_argument("--max-grad-norm", type=float, default=o.S, help="gradient clipping (1.0)")
    g.add_argument("--bf16", action="store_true", default=o.S, help="bf16 mixed precision")
    g.add_argument("--gradient-checkpointing", action="store_true", default=o.S, help="recompute activations")
    g.add_argument("--logging-steps", type=int, default=o.S, help="log the training loss every N steps (10)")
    g = p.add_argument_group("LoRA (PEFT; lm only: pip install 'distr_patch[lora]')")
    g.add_argument("--lora-r", type=int, default=o.S, metavar="R",
                   help="train rank-R LoRA adapters instead of every weight (every variant, exact too), merged "
                        "into the weights after training (default: full fine-tuning)")
    g.add_argument("--lora-alpha", type=float, default=o.S, help="LoRA's alpha (2 * R)")
    g.add_argument("--lora-targets", type=o.str_list, default=o.S, metavar="NAME,NAME",
                   help="modules to adapt, e.g. q_proj,k_proj,v_proj,o_proj (PEFT's default for the model type)")
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=o.S, metavar="DIR", help="where run directories go (results)")
    g.add_argument("--run-name", default=o.S, help="the run directory's name (default: finetune-model-time)")
    g.add_argument("--no-save", dest="save", action="store_false", default=o.S, help="do not save the models")
    g.add_argument("--no-plots", dest="plots", action="store_false", default=o.S, help="skip the plot")
    p.set_defaults(func=run)


def config_from(args: argparse.Namespace):
    from ..finetune.config import FinetuneConfig

    flags = {k: v for k, v in vars(args).items() if k in FinetuneConfig.field_names()}
    return FinetuneConfig.merge(args.config, flags)


def run(args: argparse.Namespace) -> int:
    from ..finetune import run_finetune

    out = run_finetune(config_from(args))
    return 130 if out.interrupted else 0
