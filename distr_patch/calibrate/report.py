"""Calibration results: one JSON (declared schema, provenance), a markdown table and two plots.

``calibration.json`` holds the candidates and their relative work, the per-layer heat map (attention
error, predicted loss), the probes, the greedy path (predicted loss vs saving) and, per budget, the chosen
DistrConfig with its held-out checks. Plots read only this dict: ``sensitivity_heatmap.png`` (layers x
candidates, predicted loss) and ``pareto.png`` (the path, the checked points and the chosen ones).
``task`` says what the loss is: "lm" (KL nats/token, held-out perplexity, relative = ppl / exact − 1) or
"vit" (1 − cosine to exact; held-out and relative are that fidelity loss). Files without it are "lm".
A per-head calibration (``per_head``: true) adds ``num_heads`` (per layer), ``head_errors`` and
``head_predicted_loss`` ([layer][head][candidate]); its path's ``grouped`` counts (layer, head) units and
each choice adds ``heads_grouped`` / ``heads_grouped_by_g`` (``layers_grouped``: layers with a grouped head).
``all_grouped`` (optional) holds, per G, every layer grouped at G on its lowest-predicted-loss candidate, with
its held-out and test values: the reference "a whole model at G" next to the budget choices. ``speed``
(choices and all_grouped, optional) is the measured forward time vs exact: exact_ms, ms, speedup, device.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

from ..eval.report import pyplot
from ..eval.schema import SchemaError, _check
from .api import AllGrouped, Choice, Sensitivity

SCHEMA_VERSION = 1
PLOT_NAMES = ("sensitivity_heatmap.png", "pareto.png")
_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
CHOICE = {
    "type": "object",
    "required": ["budget", "distr_config", "layers_grouped", "layers_grouped_by_g", "attention_work_saving",
                 "predicted_loss", "heldout", "checks"],
    "properties": {"budget": _NUM, "distr_config": {"type": "object"}, "layers_grouped": {"type": "integer"},
                   "layers_grouped_by_g": {"type": "object"}, "attention_work_saving": _NUM,
                   "predicted_loss": _NUM, "checks": {"type": "array"},
                   "heldout": {"type": "object", "required": ["exact", "chosen", "relative"]},
                   "test": {"type": ["object", "null"]}},
}
ALL_GROUPED = {
    "type": "object",
    "required": ["group_size", "distr_config", "attention_work_saving", "predicted_loss", "heldout"],
    "properties": {"group_size": {"type": "integer"}, "distr_config": {"type": "object"},
                   "attention_work_saving": _NUM, "predicted_loss": _NUM,
                   "heldout": {"type": "object", "required": ["exact", "chosen", "relative"]},
                   "test": {"type": ["object", "null"]}},
}
CALIBRATION_SCHEMA: dict[str, Any] = {
    "title": "distr_patch calibration result",
    "type": "object",
    "required": ["schema_version", "kind", "created", "model", "settings", "provenance", "candidates", "work",
                 "errors", "predicted_loss", "probe", "path", "choices"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "kind": {"const": "calibrate"},
        "model": {"type": "object", "required": ["name", "model_type", "num_layers"]},
        "settings": {"type": "object"},
        "provenance": {"type": "object", "required": ["torch", "transformers", "device", "git_commit", "seed"]},
        "candidates": {"type": "array", "items": {"type": "string"}},
        "work": {"type": "array", "items": _NUM},
        "errors": {"type": "array", "items": {"type": "array", "items": _NUM}},
        "predicted_loss": {"type": "array", "items": {"type": "array", "items": _NUM}},
        "probe": {"type": "object", "required": ["candidate", "kl", "alpha"]},
        "path": {"type": "array", "items": {"type": "object", "required": ["predicted_loss", "saving", "grouped"]}},
        "choices": {"type": "array", "items": CHOICE},
        "all_grouped": {"type": "array", "items": ALL_GROUPED},
        "timing_s": {"type": "object"},
    },
}


def budget_label(budget: float) -> str:
    """A budget as a percentage with the digits it needs: 0.01 -> "1%", 0.005 -> "0.5%", 1e-05 -> "0.001%"."""
    return f"{100 * budget:.3g}%"

def validate(result: dict) -> None:
    """Raise SchemaError unless ``result`` follows CALIBRATION_SCHEMA."""
    _check(result, CALIBRATION_SCHEMA, "$")


def _rel(a, b, metric: str = "perplexity"):
    if a is None or b is None:
        return None
    return a / b - 1 if metric == "perplexity" else a - b


def _vit(result: dict) -> bool:
    return result.get("task", "lm") == "vit"


def _predicted(result: dict, loss: float) -> float:
    """A predicted loss in the budget's unit (lm: relative perplexity increase; vit: 1 − cosine)."""
    return loss if _vit(result) else math.expm1(loss)


def choice_dict(c: Choice, sens: Sensitivity) -> dict:
    return {
        "budget": c.budget,
        "distr_config": c.config.to_dict(),
        "layers_grouped": c.grouped,
        "layers_grouped_by_g": {str(g): n for g, n in sorted(c.grouped_by_g.items())},
        "fraction_grouped_g2": c.grouped_by_g.get(2, 0) / sens.num_layers,
        "attention_work_saving": c.saving,
        "predicted_loss": c.predicted,
        "path_point": c.point,
        "metric": c.metric,
        "heldout": {"exact": c.heldout_exact, "chosen": c.heldout,
                    "relative": _rel(c.heldout, c.heldout_exact, c.metric)},
        "test": None if c.test is None else {"exact": c.test_exact, "chosen": c.test,
                                             "relative": _rel(c.test, c.test_exact, c.metric)},
        "checks": [dataclasses.asdict(k) for k in c.checks],
        "speed": None if c.speed is None else c.speed.to_dict(),
        **({} if c.heads_grouped is None else {
            "heads_grouped": c.heads_grouped, "num_heads": c.num_heads,
            "heads_grouped_by_g": {str(g): n for g, n in sorted((c.heads_grouped_by_g or {}).items())}}),
    }


def all_grouped_dict(a: AllGrouped) -> dict:
    return {
        "group_size": a.group_size,
        "distr_config": a.config.to_dict(),
        "attention_work_saving": a.saving,
        "predicted_loss": a.predicted,
        "metric": a.metric,
        "heldout": {"exact": a.heldout_exact, "chosen": a.heldout, "relative": _rel(a.heldout, a.heldout_exact, a.metric)},
        "test": None if a.test is None else {"exact": a.test_exact, "chosen": a.test,
                                             "relative": _rel(a.test, a.test_exact, a.metric)},
        "speed": None if a.speed is None else a.speed.to_dict(),
    }


def result_dict(sens: Sensitivity, choices: list[Choice], *, model: dict, settings: dict, provenance: dict) -> dict:
    out = {
        "schema_version": SCHEMA_VERSION,
        "kind": "calibrate",
        "task": sens.task,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "settings": settings,
        "provenance": provenance,
        "candidates": [c.name for c in sens.candidates],
        "work": sens.work,
        "cost": {"source": sens.cost_source, "seq_len": sens.seq_len},
        "errors": sens.errors,
        "predicted_loss": sens.loss,
        "probe": {"candidate": sens.probe.name, "kl": sens.probe_kl, "alpha": sens.alpha},
        "path": [{"predicted_loss": p.loss, "saving": p.saving, "grouped": sum(j is not None for j in p.choice)}
                 for p in sens.path],
        "choices": [choice_dict(c, sens) for c in choices],
        "all_grouped": [all_grouped_dict(a) for a in sens.all_grouped],
        "timing_s": sens.seconds,
        "per_head": sens.heads is not None,
    }
    if sens.heads is not None:
        out.update(num_heads=sens.heads, head_errors=sens.head_errors, head_share=sens.head_share,
                   head_predicted_loss=sens.head_loss)
    validate(out)
    return out


def write_json(result: dict, path: Path) -> Path:
    validate(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def load_json(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    try:
        validate(data)
    except SchemaError as e:
        raise SchemaError(f"{path} is not a distr_patch calibration result: {e}") from e
    return data


def _pct(x) -> str:
    return "" if x is None else f"{x:+.2%}"


def markdown(result: dict) -> str:
    n = result["model"].get("num_attention_layers") or result["model"]["num_layers"]  # (older results: num_layers)
    vit = _vit(result)
    held, test = ("held-out 1 - cos", "test 1 - cos") if vit else ("held-out ppl (Δ)", "test ppl (Δ)")
    per_head = any("heads_grouped" in c for c in result["choices"])
    rows = [*result["choices"], *result.get("all_grouped", [])]
    timed = any(r.get("speed") for r in rows)
    speed_head = ["measured speedup"] if timed else []
    head = ["budget", "layers grouped", "at G=2", "at G=4", *(["heads grouped"] if per_head else []),
            "attention-work saving", "predicted", held, test, *speed_head, "checks"]

    def value(x):
        return "" if x is None else f"{x['chosen']:.2e}" if vit else f"{x['chosen']:.3f} ({_pct(x['relative'])})"

    def speed(r):
        sp = r.get("speed")
        return ([] if not timed else [""] if not sp else
                [f"{sp['speedup']:.2f}x ({sp['ms']:.1f} vs {sp['exact_ms']:.1f} ms)"])

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result["choices"]:
        by_g = c["layers_grouped_by_g"]
        h, t = c["heldout"], c["test"]
        lines.append("| " + " | ".join([
            budget_label(c["budget"]),
            f"{c['layers_grouped']}/{n}", f"{by_g.get('2', 0)}/{n}", f"{by_g.get('4', 0)}/{n}",
            *([f"{c.get('heads_grouped', 0)}/{c.get('num_heads', '?')}"] if per_head else []),
            f"{c['attention_work_saving']:.1%}",
            f"{c['predicted_loss']:.2e}" if vit else _pct(math.expm1(c["predicted_loss"])),
            value(h), value(t), *speed(c), str(len(c["checks"]))]) + " |")
    unit = "head" if per_head else "layer"
    if result.get("all_grouped"):
        lines += ["", f"Every {unit} grouped at one G, each on its lowest-predicted-loss candidate of that G "
                      "(reference, not a budget choice):", "",
                  "| " + " | ".join([f"every {unit} at", "attention-work saving", "predicted", held, test, *speed_head])
                  + " |", "|" + "---|" * (5 + len(speed_head))]
        for a in result["all_grouped"]:
            lines.append("| " + " | ".join([
                f"G={a['group_size']}", f"{a['attention_work_saving']:.1%}",
                f"{a['predicted_loss']:.2e}" if vit else _pct(math.expm1(a["predicted_loss"])),
                value(a["heldout"]), value(a.get("test")), *speed(a)]) + " |")
    m = result["model"]
    s = result["settings"]
    sp = next((r["speed"] for r in rows if r.get("speed")), None)
    if sp:
        lines += ["", f"Measured speedup: exact time / config time of one forward on the first calibration "
                      f"window, p50, on {sp['device']}"
                      + (" (CPU: DistrAttention runs its PyTorch reference there, not the kernel)."
                         if not str(sp["device"]).startswith("cuda") else ".")]
    notes = [f"model {m['name']} ({m['model_type']}, {n} layers); candidates: {len(result['candidates'])} per "
             f"{'query head' if result.get('per_head') else 'layer'}; "
             f"probe {result['probe']['candidate']}; work: {result['cost']['source']} at {result['cost']['seq_len']} "
             f"tokens",
             f"data {s.get('data')}: calibration {s.get('calib_images')} images, held-out {s.get('heldout_images')}, "
             f"test {s.get('test_images')}; loss: 1 - mean cosine of the {s.get('vit_output')} to exact" if vit else
             f"data {s.get('data')}: calibration {s.get('calib_windows')} x {s.get('window')} tokens, held-out "
             f"{s.get('heldout_windows')} windows, test {s.get('test_windows')} windows (stride {s.get('stride')})"]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    plt = pyplot()
    import numpy as np

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    loss = np.array(result["predicted_loss"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * loss.shape[1] + 2), max(4.0, 0.22 * loss.shape[0] + 1.5)))
    im = ax.imshow(np.log10(np.maximum(loss, 1e-6)), aspect="auto", cmap="viridis")
    ax.set_xticks(range(loss.shape[1]))
    ax.set_xticklabels(result["candidates"], rotation=75, fontsize=6)
    ax.set_yticks(range(loss.shape[0]))
    ax.set_yticklabels(range(loss.shape[0]), fontsize=6)
    ax.set_ylabel("layer")
    ax.set_title(f"{result['model']['name']}: predicted loss per layer and candidate")
    fig.colorbar(im, ax=ax, label="log10 predicted 1 - cosine" if _vit(result) else "log10 predicted KL (nats/token)")
    fig.tight_layout()
    fig.savefig(out_dir / PLOT_NAMES[0], dpi=120)
    plt.close(fig)
    written.append(out_dir / PLOT_NAMES[0])

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    path = result["path"]
    ax.plot([100 * p["saving"] for p in path], [100 * _predicted(result, p["predicted_loss"]) for p in path], lw=1,
            color="grey", label="greedy path (predicted)")
    for c in result["choices"]:
        checks = c["checks"]
        if checks:
            ax.scatter([100 * k["saving"] for k in checks], [100 * k["relative"] for k in checks], marker="x", s=20)
        ax.scatter([100 * c["attention_work_saving"]], [100 * (c["heldout"]["relative"] or 0.0)], marker="o", s=40,
                   label=f"chosen, budget {budget_label(c['budget'])} (held-out)")
        if c.get("speed"):
            ax.annotate(f"{c['speed']['speedup']:.2f}x", (100 * c["attention_work_saving"],
                                                           100 * (c["heldout"]["relative"] or 0.0)),
                        textcoords="offset points", xytext=(5, -10), fontsize=7)
        ax.axhline(100 * c["budget"], lw=0.6, ls=":", color="black")
    for a in result.get("all_grouped", []):
        ax.scatter([100 * a["attention_work_saving"]], [100 * (a["heldout"]["relative"] or 0.0)], marker="s", s=36,
                   facecolors="none", edgecolors="black" if a["group_size"] == 2 else "tab:red",
                   label=f"every unit at G={a['group_size']} (held-out)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("attention work saved [%]")
    ax.set_ylabel(("fidelity loss 1 - cosine" if _vit(result) else "perplexity increase") +
                  " [%] (x: held-out checks)")
    ax.set_title(f"{result['model']['name']}: loss vs saving")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / PLOT_NAMES[1], dpi=120)
    plt.close(fig)
    written.append(out_dir / PLOT_NAMES[1])
    return written
