"""``distr-patch``: the console entry point. One module per sub-command, each with ``register`` and ``run``.

    distr-patch eval lm ...      perplexity / multiple choice, exact vs DistrAttention per G
    distr-patch eval vit ...     image top-1/top-5 (classifier) or embedding fidelity (backbone)
    distr-patch bench op ...     the operator sweep (scripts/bench_attention.py)
    distr-patch bench model ...  whole-model latency: prefill, images/s, generate() tokens/s
    distr-patch report RESULTS   merge result files into one table and plots
    distr-patch calibrate ...    per-layer settings within a perplexity budget (distr_patch.calibrate)
    distr-patch finetune ...     recovery fine-tuning (HF Trainer), held-out accuracy before/after (distr_patch.finetune)
"""
from __future__ import annotations

import argparse
import sys

from ..data.errors import DataError
from ..eval.config import ConfigError
from ..eval.schema import SchemaError
from ..models.loading import ModelLoadError
from . import bench_model, bench_op, calibrate, eval_lm, eval_vit, finetune, report

# Errors a user can fix from the command line: printed as one line, exit status 2. Anything else is a
# bug and keeps its traceback.
USER_ERRORS = (ConfigError, ModelLoadError, DataError, SchemaError, FileNotFoundError, ImportError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distr-patch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ev = commands.add_parser("eval", help="accuracy of exact vs DistrAttention variants")
    ev_sub = ev.add_subparsers(dest="target", required=True, metavar="TARGET")
    eval_lm.register(ev_sub)
    eval_vit.register(ev_sub)
    bench = commands.add_parser("bench", help="latency of exact vs DistrAttention")
    bench_sub = bench.add_subparsers(dest="target", required=True, metavar="TARGET")
    bench_op.register(bench_sub)
    bench_model.register(bench_sub)
    report.register(commands)
    calibrate.register(commands)
    finetune.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.passthrough_args = extra
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("distr-patch: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"distr-patch: error: {e}", file=sys.stderr)
        return 2
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """In a process that ``torchrun`` / ``accelerate launch`` started, tear the process group down before the
    interpreter exits: left to the exit, its background threads can abort the process ("terminate called without
    an active exception") after the run has finished. (One command per process: nothing runs after it.)"""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
