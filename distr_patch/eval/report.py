"""Results -> a markdown table and PNG plots. Reads only result dicts (the JSON files)."""
from __future__ import annotations

from pathlib import Path

# Losses span orders of magnitude (perplexity +3 vs +1500): symlog, linear within ±LOSS_LINTHRESH.
LOSS_LINTHRESH = 0.01
PLOT_NAMES = ("accuracy_loss_vs_g.png", "latency_vs_seq_len.png", "speed_accuracy_tradeoff.png")


def loss(metric: dict) -> float | None:
    """How much worse than exact attention (positive = worse), in the metric's own unit."""
    if metric.get("diff") is None:
        return None
    return -metric["diff"] if metric["higher_is_better"] else metric["diff"]


def _fmt(x, digits=4) -> str:
    if x is None:
        return ""
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _first_timing(latency: dict) -> dict | None:
    return next((t for t in latency.values() if isinstance(t, dict) and "p50_ms" in t), None)


def eval_table(results: list[dict]) -> str:
    """Rows: model x variant; columns: each metric as ``value (diff)``, then time and speedup."""
    evals = [r for r in results if r["kind"] != "bench-model"]
    if not evals:
        return ""
    metrics: list[str] = []
    for r in evals:
        for v in r["variants"]:
            metrics += [m for m in v["metrics"] if m not in metrics]
    head = ["model", "variant", "G", "setting", *[f"{m} (Δ vs exact)" for m in metrics], "time p50 [ms]",
            "speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in evals:
        for v in r["variants"]:
            cells = [r["model"]["name"], v["name"], _fmt(v["group_size"]) or "exact", v["setting"] or ""]
            for m in metrics:
                x = v["metrics"].get(m)
                cells.append("" if x is None else f"{_fmt(x['value'])} ({x['diff']:+.3g})" if x["diff"] is not None
                             else _fmt(x["value"]))
            t = _first_timing(v["latency"])
            cells += [_fmt(t["p50_ms"], 5) if t else "", f"{v['speedup']:.2f}x" if v.get("speedup") else ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_table(results: list[dict]) -> str:
    """Rows: model x measurement x variant with p50 and the speedup over exact at the same point."""
    benches = [r for r in results if r["kind"] == "bench-model"]
    if not benches:
        return ""
    head = ["model", "device", "measure", "batch", "seq len", "variant", "p50 [ms]", "throughput",
            "peak GPU mem [MiB]", "speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in benches:
        device = r["provenance"].get("gpu") or r["provenance"]["device"]
        if not r["variants"]:  # stopped before exact attention finished
            continue
        exact = {(e["measure"], e["batch"], e.get("seq_len")): e["p50_ms"] for e in bench_points(r["variants"][0])}
        for v in r["variants"]:
            for e in bench_points(v):
                ref = exact.get((e["measure"], e["batch"], e.get("seq_len")))
                lines.append("| " + " | ".join([
                    r["model"]["name"], device, e["measure"], str(e["batch"]), _fmt(e.get("seq_len")), v["name"],
                    _fmt(e["p50_ms"], 5), f"{e['throughput']:.4g} {e['throughput_unit']}",
                    _fmt(e.get("peak_mem_mib"), 5), f"{ref / e['p50_ms']:.2f}x" if ref else ""]) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""  # (no finished point: no table)


def bench_points(variant: dict) -> list[dict]:
    return [e for entries in variant["latency"].values() if isinstance(entries, list) for e in entries]


def markdown(results: list[dict], tradeoff=None) -> str:
    """The tables; ``tradeoff`` (a :class:`~.tradeoff.TradeOff`) adds the section of speed from a bench file."""
    from .tradeoff import table as tradeoff_table

    parts = []
    for title, table in (("Accuracy vs exact attention", eval_table(results)),
                         ("Latency", bench_table(results)),
                         ("Speed / accuracy trade-off", tradeoff_table(tradeoff) if tradeoff else "")):
        if table:
            parts.append(f"### {title}\n\n{table}")
    several = len(results) > 1  # then each note names its run
    notes = sorted({f"{r['model']['name']} ({r['kind']}): {n}" if several else n
                    for r in results for n in r.get("notes", [])})
    notes += [f"{r['model']['name']} ({r['kind']}): status {r['status']}, {len(r['variants'])} variant(s) recorded"
              + (" (still running, or stopped by an error)" if r["status"] == "running" else
                 " (stopped early: the finished variants only)") for r in results if r["status"] != "complete"]
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend; an ImportError that names the extra and --no-plots without it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'distr_patch[plots]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: list[dict], out_dir: Path, tradeoff=None) -> list[Path]:
    """Write the plots the results have data for; returns their paths. The trade-off plot takes its speedups
    from ``tradeoff`` (a :class:`~.tradeoff.TradeOff`) when given, else from each eval run's own timings."""
    from .tradeoff import draw as draw_tradeoff

    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    own_tradeoff = _plot_tradeoff if tradeoff is None else lambda ax, _: draw_tradeoff(ax, tradeoff)
    for name, draw in zip(PLOT_NAMES, (_plot_loss_vs_g, _plot_latency_vs_seq, own_tradeoff)):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        if draw(ax, results):
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=120)
            written.append(out_dir / name)
        plt.close(fig)
    return written


def _plot_loss_vs_g(ax, results) -> bool:
    drawn = False
    for r in results:
        if r["kind"] == "bench-model":
            continue
        metric_names = list(r["variants"][0]["metrics"]) if r["variants"] else []
        settings = sorted({v["setting"] for v in r["variants"] if v["setting"] and v["group_size"] != 1})
        for m in metric_names:
            for s in settings or [None]:
                pts = [(v["group_size"], loss(v["metrics"][m])) for v in r["variants"]
                       if v["group_size"] is not None and m in v["metrics"]
                       and (v["group_size"] == 1 or v["setting"] == s)]
                pts = sorted(p for p in pts if p[1] is not None)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"{r['model']['name']} {m}" + (f" ({s})" if s else ""))
                    drawn = True
    if drawn:
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=LOSS_LINTHRESH)
        ax.set_xlabel("group size G")
        ax.set_ylabel("loss vs exact (metric units; >0 = worse)")
        ax.set_title("Accuracy loss vs G")
        ax.legend(fontsize=7)
    return drawn


def _plot_latency_vs_seq(ax, results) -> bool:
    drawn = False
    for r in results:
        for v in r["variants"]:
            pts = [e for e in bench_points(v) if e["measure"] == "prefill" and e["batch"] == min(
                x["batch"] for x in bench_points(v) if x["measure"] == "prefill")]
            if pts:
                pts.sort(key=lambda e: e["seq_len"])
                ax.plot([e["seq_len"] for e in pts], [e["p50_ms"] for e in pts], marker="o",
                        label=f"{r['model']['name']} {v['name']} (batch {pts[0]['batch']})")
                drawn = True
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("prefill p50 [ms]")
        ax.set_title("Prefill latency vs sequence length")
        ax.legend(fontsize=7)
    return drawn


def _plot_tradeoff(ax, results) -> bool:
    drawn = False
    for r in results:
        if r["kind"] == "bench-model" or not r["variants"]:
            continue
        primary = next(iter(r["variants"][0]["metrics"]), None)
        for v in r["variants"][1:]:
            if primary in v["metrics"] and v.get("speedup") and loss(v["metrics"][primary]) is not None:
                ax.scatter(v["speedup"], loss(v["metrics"][primary]))
                ax.annotate(f"{r['model']['name']} {v['name']}", (v["speedup"], loss(v["metrics"][primary])),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
                drawn = True
    if drawn:
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(1, color="grey", lw=0.8)
        ax.set_yscale("symlog", linthresh=LOSS_LINTHRESH)
        ax.set_xlabel("speedup vs exact attention (x), each run's own timings")
        ax.set_ylabel("loss of the first metric vs exact (>0 = worse)")
        ax.set_title("Speed / accuracy trade-off")
    return drawn
