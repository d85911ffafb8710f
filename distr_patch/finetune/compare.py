"""Before/after evaluation on the held-out data, and the run's ONE table and ONE trade-off plot.

Every variant is scored on the same held-out data three ways that matter: exact attention (the pretrained
model, then the model fine-tuned with exact attention the same way), DistrAttention without fine-tuning,
DistrAttention after fine-tuning. Scoring uses the harness: strided perplexity (``eval.perplexity``) for
causal LMs, top-1 accuracy (``eval.metrics.accuracy``) for image classifiers.

``gap closed`` = 1 − gap_after / gap_before, where a gap is the variant's loss against exact attention in the
same state (pretrained / fine-tuned the same way): for perplexity, the difference of NLL per token (log
perplexity); for accuracy, exact − variant. 1 = fine-tuning removed the whole approximation loss.

The result dict (``finetune.json``) is the only input of ``markdown`` and ``write_plot`` (STYLE habit 7).
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import torch

from ..eval.distributed import Shard
from ..eval.metrics import accuracy
from ..eval.perplexity import perplexity

KIND = "finetune"
SCHEMA_VERSION = 1
PLOT_NAME = "finetune_tradeoff.png"
# A gap below this (NLL per token, or accuracy) is no gap: "gap closed" is left empty rather than noise.
MIN_GAP = 1e-3
REQUIRED = ("schema_version", "kind", "status", "created", "model", "config", "data", "provenance", "metric",
            "variants")


# --------------------------------------------------------------------------- scoring
def score_lm(model, heldout_ids: torch.Tensor, *, window: int, stride: int, shard: Shard = Shard(),
             desc: str = "held-out") -> dict:
    """Held-out perplexity and NLL per token (the harness's strided perplexity) and the forward p50."""
    out = perplexity(model, heldout_ids, window=window, stride=stride, shard=shard, progress=False, desc=desc)
    return {**out["metrics"], "num_tokens": out["num_tokens"], "forward_p50_ms": out["latency"]["p50_ms"]}


@torch.no_grad()
def score_vit(model, dataset, *, batch_size: int) -> dict:
    """Held-out top-1 accuracy of an image classifier."""
    preds = []
    for i in range(0, len(dataset), batch_size):
        pixels = dataset.pixel_values[i:i + batch_size].to(model.device, model.dtype)
        preds += model(pixel_values=pixels).logits.argmax(-1).tolist()
    return {"top1": accuracy(preds, dataset.labels.tolist()), "num_images": len(dataset)}


def attention_work_saved(distr_config: dict | None, num_layers: int, seq_len: int,
                         num_heads: int | None = None) -> float:
    """Fraction of the model's attention multiply-adds saved at ``seq_len`` tokens (the calibration cost model:
    analytic, causal, per layer, layers kept exact count as 1; with ``num_heads``, per-head settings are
    averaged over the layer's query heads)."""
    if not distr_config:
        return 0.0
    from ..calibrate.candidates import Candidate
    from ..calibrate.cost import relative_work
    from ..config import DistrConfig

    def work_of(s) -> float:
        if s.exact or s.group_size == 1:
            return 1.0
        return relative_work(Candidate(s.group_size, s.fusion, s.block_m, s.exact_window,
                                       s.window_correction if s.exact_window else 0.0), seq_len)

    cfg = DistrConfig.from_dict(distr_config)
    work = []
    for i in range(num_layers):
        s = cfg.for_layer(i, num_layers)
        if s.heads and num_heads and not s.exact:
            work.append(sum(work_of(s.for_head(h)) for h in range(num_heads)) / num_heads)
        else:
            work.append(work_of(s))
    return 1.0 - sum(work) / len(work)


# --------------------------------------------------------------------------- the result file
def new_result(*, model: dict, config: dict, data: dict, provenance: dict, metric: str,
               higher_is_better: bool) -> dict:
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "status": "running",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": model, "config": config, "data": data, "provenance": provenance, "metric": metric,
            "higher_is_better": higher_is_better, "variants": []}


def validate(result: dict) -> None:
    from ..eval.schema import SchemaError

    for key in REQUIRED:
        if key not in result:
            raise SchemaError(f"$: missing {key!r} (not a distr_patch fine-tuning result)")
    if result["kind"] != KIND:
        raise SchemaError(f"$.kind: expected {KIND!r}, got {result['kind']!r}")
    for i, v in enumerate(result["variants"]):
        for key in ("name", "group_size", "setting", "distr_config", "before", "after", "train"):
            if key not in v:
                raise SchemaError(f"$.variants[{i}]: missing {key!r}")


def write_json(result: dict, path: Path) -> Path:
    validate(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def load_json(path) -> dict:
    result = json.loads(Path(path).read_text())
    validate(result)
    return result


# --------------------------------------------------------------------------- table and plot
def _gap(result: dict, value: float, ref: float) -> float:
    """The variant's loss vs exact in the same state, in the gap unit (NLL for perplexity)."""
    if result["metric"] == "perplexity":
        return math.log(value) - math.log(ref)
    return (ref - value) if result["higher_is_better"] else (value - ref)


def summary(result: dict) -> list[dict]:
    """Per variant: before/after values, the exact references, gap closed, throughput vs exact."""
    m = result["metric"]
    variants = result["variants"]
    exact = next((v for v in variants if v["group_size"] is None), None)
    rows = []
    for v in variants:
        before, after = v["before"].get(m), (v["after"] or {}).get(m)
        ex_before = exact["before"].get(m) if exact else None
        ex_after = (exact["after"] or {}).get(m) if exact else None
        closed = None
        if v is not exact and None not in (before, after, ex_before, ex_after):
            g0 = _gap(result, before, ex_before)
            closed = 1 - _gap(result, after, ex_after) / g0 if abs(g0) > MIN_GAP else None
        tput = (v["train"] or {}).get("throughput")
        ref_tput = (exact["train"] or {}).get("throughput") if exact else None
        rows.append({"name": v["name"], "group_size": v["group_size"], "setting": v["setting"],
                     "saved": v.get("attention_work_saved"), "before": before, "after": after,
                     "exact_before": ex_before, "exact_after": ex_after, "gap_closed": closed,
                     "throughput": tput, "throughput_unit": (v["train"] or {}).get("throughput_unit", ""),
                     "vs_exact": tput / ref_tput if tput and ref_tput else None,
                     "steps": (v["train"] or {}).get("steps")})
    return rows


def _f(x, spec=".4g") -> str:
    return "" if x is None else format(x, spec)


def _rel(x, ref) -> str:
    return "" if x is None or ref is None else f" ({x / ref:.2f}x)" if ref else ""


def markdown(result: dict) -> str:
    """The run's one table: held-out metric before / after fine-tuning per variant, and training speed."""
    m = result["metric"]
    rows = summary(result)
    unit = next((r["throughput_unit"] for r in rows if r["throughput_unit"]), "")
    head = ["variant", "G", "setting", "attention work saved", f"held-out {m} before (vs exact)",
            "after fine-tuning (vs exact fine-tuned)", "gap closed", f"train {unit}", "vs exact"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["name"], str(r["group_size"] or "exact"), r["setting"] or "", _f(r["saved"], ".1%"),
            _f(r["before"]) + ("" if r["group_size"] is None else _rel(r["before"], r["exact_before"])),
            _f(r["after"]) + ("" if r["group_size"] is None else _rel(r["after"], r["exact_after"])),
            _f(r["gap_closed"], ".0%"), _f(r["throughput"], ".4g"), _f(r["vs_exact"], ".2f") + ("x" if r["vs_exact"]
                                                                                               else "")]) + " |")
    d = result["data"]
    notes = [f"{result['model']['name']}; held-out: {d.get('heldout_desc', '')}; trained on {d.get('train_desc', '')}."]
    notes += list(result.get("notes", []))
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_plot(result: dict, out_dir: Path) -> Path | None:
    """The trade-off plot: attention work saved (x) vs the held-out metric (y), before → after fine-tuning."""
    from ..eval.report import pyplot

    rows = [r for r in summary(result) if r["before"] is not None]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, r in enumerate(rows):
        color = f"C{i}"
        x = 100 * (r["saved"] or 0.0)
        ax.scatter([x], [r["before"]], facecolors="none", edgecolors=color, s=50)
        if r["after"] is not None:
            ax.scatter([x], [r["after"]], color=color, s=50, label=r["name"])
            ax.annotate("", xy=(x, r["after"]), xytext=(x, r["before"]),
                        arrowprops=dict(arrowstyle="->", color=color, lw=1.2))
        ax.annotate(r["name"], (x, r["after"] if r["after"] is not None else r["before"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    m = result["metric"]
    if m == "perplexity":
        ax.set_yscale("log")
    ax.set_xlabel(f"attention work saved at {result['data'].get('seq_len', '?')} tokens (%, analytic)")
    ax.set_ylabel(f"held-out {m} ({'higher' if result['higher_is_better'] else 'lower'} is better)")
    ax.set_title("Fine-tuning recovery: before (hollow) → after (filled)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out_dir) / PLOT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
