"""``distr-patch bench model``: whole-model latency, exact (sdpa) vs DistrAttention at each G."""
from __future__ import annotations

import argparse

from ..eval.config import COMPILE_MODES, COMPILE_WARMUP
from . import options as o

HELP = "whole-model latency: prefill, generate() tokens/s (LM) or images/s (ViT), exact vs each G"
EPILOG = """examples (random weights at real sizes; no hub access needed):
  distr-patch bench model --model preset:llama-3.2-1b --dtype bfloat16 --group-sizes 2,4
  distr-patch bench model --model preset:vit-b16 --dtype float16 --batch-sizes 1,32,128
  distr-patch bench model --model preset:smollm2-135m --dtype bfloat16 --seq-lens 4096 --batch-sizes 4 --cuda-graph
  distr-patch bench model --model preset:smollm2-135m --dtype bfloat16 --seq-lens 1024 --batch-sizes 1 \
      --compile reduce-overhead
presets: llama-3.2-1b, qwen2-1.5b, smollm2-135m, vit-b16 (= deit-base-patch16-224), deit-b (distilled)
On a CPU it runs too, but DistrAttention then runs its PyTorch reference: the times are not the kernel's.
"""


def register(sub) -> None:
    p = sub.add_parser("model", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_config(p)
    o.add_model(p, required_help="preset:NAME (random weights), a local path, or a hub id")
    o.add_variants(p)
    g = p.add_argument_group("measurements")
    g.add_argument("--seq-lens", type=o.int_list, default=o.S, metavar="N,N", help="prefill lengths (512,1024,2048,4096)")
    g.add_argument("--batch-sizes", type=o.int_list, default=o.S, metavar="B,B", help="batch sizes (1,4)")
    g.add_argument("--gen-tokens", type=int, default=o.S,
                   help="new tokens per generate() call (64); new tokens/s = batch x these over the whole call's "
                        "time, the prompt's prefill included")
    g.add_argument("--gen-prompt-len", type=int, default=o.S, help="prompt length for generate() (512)")
    g.add_argument("--warmup", type=int, default=o.S, help="untimed calls first (3; generate(): 1 or 2)")
    g.add_argument("--settle-ms", type=float, default=o.S, metavar="MS",
                   help="then each prefill or image batch runs back to back this long, untimed, so the GPU's clocks "
                        "settle at its own load (200 on a GPU, 0 on the CPU; generate() is not settled)")
    g.add_argument("--repeats", type=int, default=o.S,
                   help="timed calls; p20/p50/p80 are reported (10; generate(): a third of them, at least 3); each "
                        "point records the calls it ran")
    g.add_argument("--cuda-graph", action="store_true", default=o.S,
                   help="time prefill and image batches as replays of one captured CUDA graph per shape, exact and "
                        "DistrAttention alike: the GPU's time without the host's launch overhead (generate() is not "
                        "graphed)")
    g.add_argument("--compile", default=o.S, choices=COMPILE_MODES, metavar="MODE",
                   help="time prefill and image batches through torch.compile(model, mode=MODE), exact and "
                        "DistrAttention alike (one static graph per shape; compiling and CUDA-graph recording happen "
                        f"in at least {COMPILE_WARMUP} warm-up calls; generate() stays eager): "
                        f"{', '.join(COMPILE_MODES)}")
    o.add_output(p)
    o.finish(p, run)


def run(args: argparse.Namespace) -> int:
    from ..eval.bench import run_bench

    out = run_bench(o.config_from(args))
    return 130 if out.interrupted else 0
