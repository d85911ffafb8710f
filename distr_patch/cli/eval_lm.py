"""``distr-patch eval lm``: perplexity and multiple-choice accuracy, exact vs DistrAttention per G."""
from __future__ import annotations

import argparse

from ..eval.config import COMPILE_MODES
from . import options as o

HELP = "perplexity and multiple-choice accuracy of a causal LM, exact vs DistrAttention at each G"
EPILOG = """examples:
  distr-patch eval lm --model smollm2-135m --group-sizes 2,4 --settings paper,recommended
  distr-patch eval lm --config configs/smollm2-135m.yaml --max-windows 2
  distr-patch eval lm --model meta-llama/Llama-3.2-1B --data wikitext --data-name wikitext-2-raw-v1 --split test
  distr-patch eval lm --model smollm2-135m --no-perplexity --lm-eval-tasks mytask --lm-eval-include my_tasks/
  distr-patch eval lm --model smollm2-135m --group-sizes 2 --settings recommended --max-windows 2 --compile default
"""


def register(sub) -> None:
    p = sub.add_parser("lm", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_config(p)
    o.add_model(p, required_help="an alias (smollm2-135m), a local directory or .gguf file, or a hub id")
    o.add_variants(p)
    g = p.add_argument_group("perplexity (strided sliding window)")
    o.add_data_source(g, data_help="text: 'lee' (packaged news corpus, default), " + o.TEXT_SOURCES,
                      text_column="column holding the text (text)")
    g.add_argument("--window", type=int, default=o.S, help="tokens per window (1024)")
    g.add_argument("--stride", type=int, default=o.S, help="tokens between window starts (window // 2: 512)")
    g.add_argument("--max-windows", type=int, default=o.S, help="evaluate at most this many windows (4)")
    g.add_argument("--no-perplexity", dest="perplexity", action="store_false", default=o.S,
                   help="skip perplexity (run only the tasks)")
    g.add_argument("--compile", default=o.S, choices=COMPILE_MODES, metavar="MODE",
                   help="score the perplexity windows through torch.compile(model, mode=MODE), exact and "
                        "DistrAttention alike: perplexity as a compiled model serves it (with G > 1 the grouping sees "
                        "the compiled query's rounding; the tasks stay eager): " + ", ".join(COMPILE_MODES))
    g = p.add_argument_group("multiple-choice tasks (log-likelihood of each choice)")
    g.add_argument("--tasks", type=o.str_list, default=o.S, metavar="T,T",
                   help="lee-next-sentence (built in, offline), .jsonl files, or datasets names "
                        "(NAME:CONFIG, e.g. allenai/ai2_arc:ARC-Easy)")
    g.add_argument("--task-limit", type=int, default=o.S, help="rows per task (100)")
    g.add_argument("--task-split", default=o.S, help="the tasks' data set split (default: --split; HellaSwag's test "
                   "split has no labels: validation)")
    g.add_argument("--question-column", default=o.S, help="column of the question/context (auto-detected)")
    g.add_argument("--choices-column", default=o.S, help="column of the list of choices (auto-detected)")
    g.add_argument("--label-column", default=o.S, help="column of the right choice's index or letter (auto-detected)")
    g.add_argument("--lm-eval-tasks", type=o.str_list, default=o.S, metavar="T,T",
                   help="lm-evaluation-harness tasks (needs distr_patch[lm-eval] and their data)")
    g.add_argument("--lm-eval-include", default=o.S, metavar="DIR",
                   help="directory of lm-eval task YAMLs of your own (e.g. dataset_path: json over local files)")
    g.add_argument("--lm-eval-limit", type=int, default=o.S, help="rows per lm-eval task")
    g.add_argument("--batch-size", type=int, default=o.S, help="lm-eval batch size (8)")
    o.add_output(p)
    o.finish(p, run)


def run(args: argparse.Namespace) -> int:
    from ..eval.lm import run_lm

    out = run_lm(o.config_from(args))
    return 130 if out.interrupted else 0
