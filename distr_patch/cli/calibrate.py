"""``distr-patch calibrate``: per-layer DistrAttention settings within a perplexity or fidelity budget.

``--task lm`` (default): a causal LM, budget = relative held-out perplexity increase. ``--task vit``: a
ViT-family model (vit, deit, dinov2) on an image folder or data set, budget = held-out fidelity loss
1 − mean cosine similarity to exact of the pooled embedding (``--vit-output embedding``, the model loaded
as a backbone) or the classifier logits (``--vit-output logits``).

``--per-head`` chooses settings per (layer, query head) instead of per layer (configs with ``head_overrides``).

Writes one directory: ``calibration.json`` (heat map, greedy path, per budget the chosen DistrConfig and
its held-out checks, provenance), ``distr_config-<budget>.json`` per budget (``DistrConfig.load`` /
``patch_model`` take it as it is), ``report.md`` and the plots. Next to the budgets it checks, per G among
the candidates, every layer grouped at that G on its lowest-predicted-loss candidate
(``distr_config-all-G<G>.json``; ``--no-all-grouped`` skips it): whether a whole model fits at G=2.
Settings merge defaults < ``--config`` YAML < flags.
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

from ..eval.config import DTYPES
from . import options as o

HELP = ("choose per-layer DistrAttention settings that save the most attention work within a perplexity (LM) or "
        "embedding-fidelity (ViT) budget")
EPILOG = """examples:
  distr-patch calibrate --model smollm2-135m --data lee --budget 1%
  distr-patch calibrate --model smollm2-135m --budget 1%,3%,10% --candidates fast --test-windows 2
  distr-patch calibrate --model smollm2-135m --budget 1% --candidates fast --per-head
  distr-patch calibrate --model smollm2-135m --budget 1% --device cuda --dtype bfloat16 --speeds measure
  distr-patch calibrate --config configs/calibrate-smollm2-135m.yaml
  distr-patch calibrate --task vit --model facebook/dinov2-small --data IMAGE_FOLDER --budget 0.01
"""
DEFAULTS = dict(task="lm", model=None, data=None, data_name=None, split="train", text_column="text", dtype="float32",
                device="cpu", seed=0, budget=["1%"], candidates="default", probe=None, window=1024, stride=None,
                calib_windows=1, heldout_windows=2, test_windows=0, max_checks=4, speeds=None, seq_len=None,
                output_dir="results", run_name=None, plots=True, vit_output="embedding", calib_images=16,
                heldout_images=32, test_images=0, batch_size=16, image_column="image", per_head=False,
                all_grouped=True, speedup="auto", engine="auto")
CHOICES = dict(task=("lm", "vit"), dtype=DTYPES, vit_output=("embedding", "logits"), speedup=("auto", "on", "off"),
               engine=("auto", "sdpa"))  # the flags' choices, checked for --config values too


def register(sub) -> None:
    p = sub.add_parser("calibrate", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    o.add_config(p)
    g = p.add_argument_group("model and data")
    g.add_argument("--task", default=o.S, choices=CHOICES["task"],
                   help="lm (default): causal LM, perplexity budget; vit: vit/deit/dinov2, fidelity budget")
    g.add_argument("--model", default=o.S, help="an alias (smollm2-135m), a local directory or .gguf file, or a hub id")
    g.add_argument("--dtype", default=o.S, choices=CHOICES["dtype"], help="weights dtype (float32)")
    g.add_argument("--device", default=o.S, help="cpu (default) or cuda")
    g.add_argument("--seed", type=int, default=o.S,
                   help="seed (0): the hash directions' seed of every candidate and of the written configs, and the "
                        "image sampling")
    o.add_data_source(g, data_help="lm: text, 'lee' (default), " + o.TEXT_SOURCES + "; vit: " + o.IMAGE_SOURCES
                                   + " (required)",
                      text_column="column holding the text (text)", image_column="vit: column holding the images (image)")
    g.add_argument("--vit-output", default=o.S, choices=CHOICES["vit_output"],
                   help="vit: compare the pooled embedding (default, model loaded as a backbone) or the logits")
    g = p.add_argument_group("calibration")
    g.add_argument("--budget", type=o.str_list, default=o.S, metavar="B,B",
                   help="lm: allowed held-out perplexity increase(s): 1%%, 0.01, or several (1%%,3%%,10%%); "
                        "vit: allowed fidelity loss 1 - cosine (0.01: cosine >= 0.99); default 1%%")
    g.add_argument("--candidates", default=o.S,
                   help="'default' (the full grid: G 2,4 x mean,rank1 x block_m 32,64,128 x window 0,64,128,256 x "
                        "correction 0,0.25,0.5,1), 'fast' (12), or names like G2-rank1-b128-w128-c0.5,...")
    g.add_argument("--probe", default=o.S, help="candidate whose logit KL sets each layer's sensitivity "
                                              "(G2-rank1-b128-w0-c0 when among the candidates, else the first "
                                              "candidate whose window is shorter than --window)")
    g.add_argument("--window", type=int, default=o.S, help="tokens per window, calibration and checks (1024)")
    g.add_argument("--stride", type=int, default=o.S, help="stride of the held-out/test windows (window/2)")
    g.add_argument("--calib-windows", type=int, default=o.S, help="calibration windows (1)")
    g.add_argument("--heldout-windows", type=int, default=o.S, help="held-out windows for the checks (2)")
    g.add_argument("--test-windows", type=int, default=o.S, help="further windows that only report (0)")
    g.add_argument("--calib-images", type=int, default=o.S, help="vit: calibration images (16)")
    g.add_argument("--heldout-images", type=int, default=o.S, help="vit: held-out images for the checks (32)")
    g.add_argument("--test-images", type=int, default=o.S, help="vit: further images that only report (0)")
    g.add_argument("--batch-size", type=int, default=o.S, help="vit: images per forward (16)")
    g.add_argument("--max-checks", type=int, default=o.S, help="end-to-end held-out checks per budget (4)")
    g.add_argument("--per-head", action="store_true", default=o.S,
                   help="choose settings per (layer, query head) from each head's attention-output error: the "
                        "configs get head_overrides (default: per layer)")
    g.add_argument("--no-all-grouped", dest="all_grouped", action="store_false", default=o.S,
                   help="skip the reference rows 'every layer at G' (each layer's lowest-loss candidate of that G, "
                        "checked on the held-out and test windows: two evaluations per G)")
    g.add_argument("--speedup", default=o.S, choices=CHOICES["speedup"],
                   help="time one forward with exact attention and with each result: auto (default) on a GPU only; "
                        "on: also on the CPU, where DistrAttention runs its PyTorch reference (not the kernel)")
    g.add_argument("--speeds", default=o.S, metavar="FILE.json|measure",
                   help="kernel time per candidate relative to exact attention, the work the choice saves: a JSON "
                        "file {candidate: ratio}, or 'measure' to time each candidate's operator at the model's "
                        "attention shape first (CUDA only; written to speeds.json); default: analytic count")
    g.add_argument("--engine", default=o.S, choices=CHOICES["engine"],
                   help="what runs DistrAttention while calibrating: auto (default; the PyTorch reference on the "
                        "CPU) or sdpa (SDPA on Q_eff: the same function, 2-3x faster on the CPU); the written configs "
                        "keep engine auto")
    g.add_argument("--seq-len", type=int, default=o.S,
                   help="sequence length of the work estimate (lm: --window; vit: the model's tokens)")
    o.add_output(p)
    p.set_defaults(func=run)


def _kinds() -> dict:
    """How each ``--config`` value is read: as its flag reads its text (``eval.config.setting_kinds``);
    ``candidates`` as given (a grid name, names, or a grid mapping)."""
    kinds = {}
    for k, v in DEFAULTS.items():
        kind = (None if k == "candidates" else o.str_list if isinstance(v, list) else int if k in ("stride", "seq_len")
                else str if v is None else type(v))
        kinds[k] = (kind, v is None)
    return kinds


def _read_yaml(path: str) -> dict:
    from ..eval.config import read_yaml_settings

    return read_yaml_settings(path, list(DEFAULTS), _kinds())


def settings_from(args: argparse.Namespace) -> dict:
    """defaults < YAML (--config) < flags; unknown YAML keys and bad values raise ConfigError naming the flag."""
    from ..eval.config import ConfigError, check_output_dir, flag

    values = dict(DEFAULTS)
    if getattr(args, "config", None):
        values.update(_read_yaml(args.config))
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS})
    if not values["model"]:
        raise ConfigError("--model: required (an alias such as smollm2-135m, a local path, or a hub id)")
    for name, allowed in CHOICES.items():
        if values[name] not in allowed:
            raise ConfigError(f"{flag(name)}: {values[name]!r} is not one of {', '.join(allowed)}")
    if values["task"] == "vit" and not values["data"]:
        raise ConfigError("--data: required with --task vit (an image folder or a datasets name with an image column)")
    values["data"] = values["data"] or "lee"
    for name in ("window", "calib_windows", "heldout_windows", "max_checks", "calib_images", "heldout_images",
                 "batch_size", "stride", "seq_len"):
        v = values[name]
        if v is not None and v <= 0:
            raise ConfigError(f"{flag(name)}: expected a positive integer, got {v!r}")
    for name in ("test_windows", "test_images"):
        if values[name] < 0:
            raise ConfigError(f"{flag(name)}: expected an integer >= 0, got {values[name]!r}")
    if values["task"] == "lm" and values["stride"] is not None and values["stride"] > values["window"]:
        raise ConfigError(f"--stride: {values['stride']} is larger than --window {values['window']}; tokens between "
                          "windows would never be scored")
    if not isinstance(values["candidates"], (str, list, dict)):
        raise ConfigError(f"--candidates: expected a grid name (default, fast), candidate names or a grid mapping, "
                          f"got {values['candidates']!r}")
    if values["speeds"] not in (None, "measure") and not Path(values["speeds"]).is_file():
        raise ConfigError(f"--speeds {values['speeds']}: no such file (a JSON file {{candidate: time relative to "
                          "exact}, or 'measure')")
    check_output_dir(values["output_dir"], values["run_name"])
    return values


def _read_speeds(path: str) -> dict[str, float]:
    """``--speeds FILE``: {candidate: time relative to exact attention}, checked before the model loads."""
    from ..calibrate import CostModel
    from ..eval.config import ConfigError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--speeds {path}: not JSON (not a text file)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--speeds {path}: not JSON: {e}") from None
    try:
        if not isinstance(data, dict):
            raise ValueError("expected a mapping {candidate: time relative to exact attention}")
        speeds = {str(k): float(v) for k, v in data.items()}
        CostModel(1, speeds)  # names and ratios
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--speeds {path}: {e}") from None
    return speeds


def _parsed(option: str, parse, value):
    """``parse(value)``; its ValueError becomes a ConfigError naming ``option``."""
    from ..eval.config import ConfigError

    try:
        return parse(value)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from e


def run(args: argparse.Namespace) -> int:
    import torch

    from ..calibrate import Candidate, CostModel, calibrate_full, parse_budget, parse_candidates
    from ..calibrate.kernel_speed import attention_shape, measure_speeds
    from ..eval.distributed import check_device, refuse_several_processes
    from ..calibrate.report import markdown, result_dict, write_json, write_plots
    from ..data import load_images, load_text
    from ..eval.config import ConfigError
    from ..eval.provenance import provenance
    from ..eval.results import model_info
    from ..models import load_model
    from ..config import DistrConfig

    s = settings_from(args)
    vit = s["task"] == "vit"
    budgets = [_parsed("--budget", lambda b: parse_budget(b, s["task"]), b) for b in s["budget"]]
    candidates = _parsed("--candidates", parse_candidates, s["candidates"])
    probe = _parsed("--probe", Candidate.parse, s["probe"]) if s["probe"] else None  # before the model loads
    if not budgets:
        raise ConfigError("--budget: give at least one budget, e.g. 1%")
    if len(set(budgets)) != len(budgets):  # (1% and 0.01 are one budget: one row, one config file)
        raise ConfigError(f"--budget: {','.join(map(str, s['budget']))} repeats a budget")
    refuse_several_processes("calibrate", "each process would run the whole calibration and write the same files")
    check_device(s["device"])  # a name torch knows, and a device this machine has
    device = torch.device(s["device"])
    causal = not vit
    stride = None if vit else s["stride"] if s["stride"] is not None else max(1, s["window"] // 2)
    seq_len = s["seq_len"] or (None if vit else s["window"])  # vit: None = the model's token count
    if seq_len is None and s["speeds"]:
        raise ConfigError("--speeds with --task vit needs --seq-len (the model's tokens, 1 + patches)")
    if s["speeds"] == "measure" and device.type != "cuda":
        raise ConfigError("--speeds measure: needs a CUDA device (--device cuda); on the CPU DistrAttention "
                          "runs its PyTorch reference, whose times say nothing about the kernel")
    speeds_file = _read_speeds(s["speeds"]) if s["speeds"] not in (None, "measure") else None
    if speeds_file is not None:  # measured and analytic costs do not mix: every candidate needs its time
        missing = [c.name for c in candidates if c.name not in speeds_file]
        if missing:
            raise ConfigError(f"--speeds {s['speeds']}: no time for {len(missing)} of the {len(candidates)} "
                              f"candidates ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); a file "
                              "from another --candidates grid? Use --speeds measure, or give every candidate")
    if vit:
        data = load_images(s["data"], split=s["split"], name=s["data_name"], image_column=s["image_column"],
                           label_column=None)
        loaded = load_model(s["model"], "backbone" if s["vit_output"] == "embedding" else "vit", dtype=s["dtype"])
        inputs = dict(task="vit", processor=loaded.processor, image_column=s["image_column"],
                      calib_images=s["calib_images"], heldout_images=s["heldout_images"],
                      test_images=s["test_images"], batch_size=s["batch_size"])
    else:
        need = s["calib_windows"] * s["window"] + sum(s["window"] + (k - 1) * stride for k in
                                                      (s["heldout_windows"], s["test_windows"]) if k)
        text, _ = load_text(s["data"], column=s["text_column"], split=s["split"], name=s["data_name"],
                            max_chars=12 * need)
        loaded = load_model(s["model"], "lm", dtype=s["dtype"])
        data = loaded.processor(text, return_tensors="pt").input_ids[0]
        inputs = dict(task="lm", window=s["window"], stride=stride, calib_windows=s["calib_windows"],
                      heldout_windows=s["heldout_windows"], test_windows=s["test_windows"])
    model = loaded.model
    model.to(device)
    cost, speeds = None, None
    if s["speeds"] == "measure":
        speeds = measure_speeds(candidates, attention_shape(model), seq_len=seq_len, causal=causal,
                                seed=s["seed"], progress=True)
        cost = CostModel(seq_len, speeds, causal)
    elif seq_len is not None:
        cost = CostModel(seq_len, speeds_file or {}, causal)
    try:
        sens, choices = calibrate_full(model, data, budgets, candidates, probe=probe, cost=cost,
                                       max_checks=s["max_checks"], seed=s["seed"], progress=True,
                                       per_head=bool(s["per_head"]), check_all_grouped=bool(s["all_grouped"]),
                                       speedup=s["speedup"], base=DistrConfig(engine=s["engine"], seed=s["seed"]),
                                       engine="auto", **inputs)  # the engine ran the calibration; configs stay neutral
    except ValueError as e:
        raise ConfigError(str(e)) from e
    name = s["run_name"] or "calibrate-{}-{}".format(re.sub(r"[^A-Za-z0-9.]+", "-", s["model"].rsplit("/", 1)[-1]),
                                                      datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    out = Path(s["output_dir"]) / name
    result = result_dict(sens, choices, model=model_info(model, s["model"], loaded.source, s["dtype"]),
                         settings={**s, "stride": stride, "budget": budgets},
                         provenance=provenance(device, seed=s["seed"]))
    if speeds is not None:
        result["cost"]["speeds"] = speeds  # reusable as --speeds FILE
        out.mkdir(parents=True, exist_ok=True)
        (out / "speeds.json").write_text(json.dumps(speeds, indent=2) + "\n")
    write_json(result, out / "calibration.json")
    for c in choices:
        c.config.save(out / f"distr_config-{c.budget:g}.json")
    for a in sens.all_grouped:
        a.config.save(out / f"distr_config-all-G{a.group_size}.json")
    table = markdown(result)
    (out / "report.md").write_text(table)
    print("\n" + table)
    print(f"results: {out / 'calibration.json'}")
    for c in choices:
        print(f"config:  {out / f'distr_config-{c.budget:g}.json'}")
    for a in sens.all_grouped:
        print(f"config:  {out / f'distr_config-all-G{a.group_size}.json'} (every layer at G={a.group_size})")
    for p in write_plots(result, out) if s["plots"] else []:
        print(f"plot:    {p}")
    return 0
