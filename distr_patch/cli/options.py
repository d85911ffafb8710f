"""Flags shared by the sub-commands. Every flag defaults to "not given" so that the YAML file and the
dataclass defaults show through (defaults < YAML < flags, merged by ``RunConfig.merge``)."""
from __future__ import annotations

import argparse

from ..eval.config import RunConfig

S = argparse.SUPPRESS


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 1,2,4)") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def group_size_list(text: str) -> list[int]:
    """``2,4``; ``none``: no G variants (with --distr-configs only those files' variants run)."""
    return [] if text.strip().lower() == "none" else int_list(text)


def key_value(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=VALUE (e.g. exact_window=64)")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


class _KeyValues(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        current = dict(getattr(namespace, self.dest, None) or {})
        current[values[0]] = values[1]
        setattr(namespace, self.dest, current)


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of settings (any flag's name, with _ or -); flags override it")


def add_model(p: argparse.ArgumentParser, *, required_help: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=S, metavar="ID_OR_PATH", help=required_help)
    g.add_argument("--dtype", default=S, choices=["float32", "float16", "bfloat16"], help="weights and compute dtype (float32)")
    g.add_argument("--device", default=S, help="cpu, cuda, cuda:1 ... (default: the process's accelerate device)")
    g.add_argument("--device-map", default=S, metavar="MAP",
                   help="'auto' spreads a model too large for one GPU over the GPUs (accelerate)")
    g.add_argument("--seed", type=int, default=S, help="seed of the run (0)")


def add_variants(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("variants (exact attention is always first)")
    g.add_argument("--group-sizes", type=group_size_list, default=S, metavar="G,G",
                   help="DistrAttention group sizes G to compare with exact attention (1,2,4); none: only "
                        "--distr-configs")
    g.add_argument("--settings", type=str_list, default=S, metavar="S,S",
                   help="paper (mean fusion, no exact window) and/or recommended (rank-1 fusion + exact window); "
                        "default: recommended")
    g.add_argument("--distr", type=key_value, action=_KeyValues, default=S, metavar="FIELD=VALUE",
                   help="set a DistrConfig field on every variant (repeatable), e.g. the layer selection")
    add_distr_configs(g)


def add_distr_configs(g) -> None:
    g.add_argument("--distr-configs", type=str_list, default=S, metavar="FILE,FILE",
                   help="DistrConfig JSON files, one more variant each (cfg:<file stem>), e.g. the "
                        "distr_config-0.01.json or distr_config-all-G2.json that `distr-patch calibrate` writes")


# --data's sources, as data/source.py and data/images.py read them
TEXT_SOURCES = ("a .txt/.jsonl/.csv/.parquet file (all but parquet also .gz, .bz2, .xz), a folder of such files (one "
                "type), a save_to_disk folder, or a datasets name")
IMAGE_SOURCES = ("an imagefolder directory (class per sub-folder), a .jsonl/.csv/.parquet file of images or image "
                 "paths, or a datasets name")


def add_data_source(g, *, data_help: str, text_column: str | None = None, image_column: str | None = None,
                    label_column: str | None = None) -> None:
    """--data, --data-name, --split and the column flags a sub-command reads (help None: flag omitted)."""
    g.add_argument("--data", default=S, help=data_help)
    g.add_argument("--data-name", default=S, help="configuration of a hub data set")
    g.add_argument("--split", default=S, help="data set split (train)")
    for flag, help_text in (("--text-column", text_column), ("--image-column", image_column),
                            ("--label-column", label_column)):
        if help_text is not None:
            g.add_argument(flag, default=S, help=help_text)


def add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output-dir", default=S, metavar="DIR", help="where run directories go (results)")
    g.add_argument("--run-name", default=S, help="the run directory's name (default: kind-model-time)")
    g.add_argument("--no-plots", dest="plots", action="store_false", default=S, help="skip the PNG plots")


def finish(p: argparse.ArgumentParser, run) -> None:
    """Register the sub-command's ``run`` and the settings its flags set (``config_from`` warns about a
    ``--config`` setting that none of them reads). Call after the last flag is added."""
    p.set_defaults(func=run, settings_read=frozenset(a.dest for a in p._actions))


def unread_settings(config_path: str | None, settings_read) -> list[str]:
    """The settings of a ``--config`` file that this sub-command does not read (they are valid for another)."""
    if not config_path or settings_read is None:
        return []
    from ..eval.config import read_yaml_settings

    return [k for k in read_yaml_settings(config_path, RunConfig.field_names()) if k not in settings_read]


def config_from(args: argparse.Namespace, defaults: dict | None = None) -> RunConfig:
    """defaults < ``--config`` < flags; a ``--config`` setting this sub-command ignores is named on stderr."""
    import sys

    command = " ".join(x for x in (getattr(args, "command", None), getattr(args, "target", None)) if x)
    unread = unread_settings(args.config, getattr(args, "settings_read", None))
    if unread:
        print(f"distr-patch: warning: --config {args.config}: `{command or 'this command'}` does not read "
              f"{', '.join(map(repr, unread))}; ignored", file=sys.stderr)
    flags = {k: v for k, v in vars(args).items() if k in RunConfig.field_names()}
    return RunConfig.merge(args.config, flags, defaults)
