"""The operator bench's speed as a figure: one panel per (head dim d, causal), speed vs SDPA-flash over N.

Reads what ``scripts/bench_attention.py --json`` writes (forward, or ``--backward``): rows of
{d, N, causal, variant, ms, ...}. Each line is a variant's SDPA-flash ms / its ms at each N (higher is faster);
its legend entry carries its median relative error against exact attention over the file's shapes (forward:
the output's; backward: the largest gradient's), so speed is never shown without its accuracy.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from .config import ConfigError

BASELINE = "sdpa-flash"
# The variants drawn by default: the peers, exact attention by our kernel, and issue 3's G=2 block_m=128 points on
# both engines (others by ``variants=``). Names absent from a file are left out.
DEFAULT_VARIANTS = ("sdpa-cudnn", "sage1", "distr G=1", "distr G=2 mean", "distr G=2 rank1",
                    "distr G=2 rank1 W128 c.5 bm128", "distr G=2 rank1 W128 c.5", "distr G=2 mean sdpa",
                    "distr G=2 rank1 sdpa", "distr G=2 rank1 W128 c.5 bm128 sdpa")
TARGET = 1.37  # issue 3: G=2 at N >= 4096, d = 64 and 128, causal and not
ROW_FIELDS = ("d", "N", "causal", "variant", "ms")  # what a bench row needs to be drawn


def load_rows(path) -> tuple[dict, list[dict]]:
    """(the file's header, its rows) of a ``bench_attention.py --json`` file; a named error for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"bench JSON: no such file: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"bench JSON: {path} is not JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or data.get("kind") not in (
            "bench-op", "bench-op-backward"):
        raise ConfigError(f"bench JSON: {path} is not a `scripts/bench_attention.py --json` file "
                          f"(kind {data.get('kind') if isinstance(data, dict) else None!r}; a --tune file has no "
                          "SDPA-flash rows either)")
    for i, row in enumerate(data["rows"]):
        missing = [k for k in ROW_FIELDS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"bench JSON: {path}: row {i} lacks {', '.join(missing)} (a bench row has "
                              f"{', '.join(ROW_FIELDS)})")
    header = {k: v for k, v in data.items() if k != "rows"}
    return header, data["rows"]


def check_figure_path(out_path) -> Path:
    """``out_path`` as a Path, if matplotlib can write its format (by the suffix; none: PNG); a ConfigError naming
    the path and the formats otherwise. An ImportError without matplotlib."""
    from .report import pyplot

    pyplot()  # matplotlib importable (a named ImportError otherwise)
    from matplotlib.backend_bases import FigureCanvasBase

    out_path = Path(out_path)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = out_path.suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise ConfigError(f"figure path {out_path}: matplotlib cannot write .{suffix}; use one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    return out_path


def speed_series(rows: list[dict], d: int, causal: bool, name: str) -> list[tuple[int, float]]:
    """[(N, SDPA-flash ms / the variant's ms)] at head dim ``d`` and ``causal``, by N; shapes where either row is
    missing (or timed 0) are left out."""
    by = {(r["N"], r["variant"]): r["ms"] for r in rows if r["d"] == d and bool(r["causal"]) == causal}
    return [(n, by[n, BASELINE] / by[n, name]) for n in sorted({n for n, _ in by})
            if by.get((n, name), 0) > 0 and by.get((n, BASELINE), 0) > 0]


def _setting(name: str) -> str:
    """A variant's name without its engine ("distr G=2 mean sdpa" -> "distr G=2 mean")."""
    return " ".join(w for w in name.split() if w != "sdpa")


def _error(row: dict) -> float | None:
    return row.get("rel_err", row.get("err_vs_exact"))


def plot_op(header: dict, rows: list[dict], out_path, *, variants=None, target: float = TARGET) -> Path:
    """Write the figure to ``out_path`` (PNG, or any format matplotlib knows by the suffix); returns the path.
    ``variants``: names to draw in this order (None: those of ``DEFAULT_VARIANTS`` in the rows; ["all"]: every
    variant but the baseline). ``target``: a dashed line at that ratio (None: none)."""
    from .report import pyplot

    out_path = check_figure_path(out_path)
    names = list(dict.fromkeys(r["variant"] for r in rows))
    if BASELINE not in names:
        raise ConfigError(f"bench JSON: no {BASELINE!r} rows to measure against (variants: {', '.join(names)})")
    if variants is None:
        chosen = [n for n in DEFAULT_VARIANTS if n in names]
    elif list(variants) == ["all"]:
        chosen = [n for n in names if n != BASELINE]
    else:
        unknown = [v for v in variants if v not in names]
        if unknown:
            raise ConfigError(f"--variants: {', '.join(map(repr, unknown))} not in the file "
                              f"(it has: {', '.join(names)})")
        chosen = [v for v in variants if v != BASELINE]
    if not chosen:
        raise ConfigError(f"nothing to draw: the file has only {BASELINE} rows")
    panels = sorted({(r["d"], bool(r["causal"])) for r in rows})
    plt = pyplot()
    cols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(max(6.2 * cols, 9.5), 3.9 * nrows + 0.8), squeeze=False,
                             sharey=True)  # one panel: wide enough for the title
    # one colour per setting, the same on both engines (the line style tells the engine)
    settings = list(dict.fromkeys(_setting(n) for n in chosen))
    colors = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    handles = {}
    for ax, (d, causal) in zip(axes.flat, panels):
        ns = sorted({r["N"] for r in rows if r["d"] == d and bool(r["causal"]) == causal})
        for name in chosen:
            pts = speed_series(rows, d, causal, name)
            if not pts:
                continue
            style = ("--" if "sdpa" in name.split() else "-") if name.startswith("distr") else ":"
            (line,) = ax.plot(*zip(*pts), style, marker="o", ms=4,
                              color=colors(settings.index(_setting(name)) % colors.N))
            handles.setdefault(name, line)
        ax.axhline(1.0, color="black", lw=0.8)
        if target is not None:
            ax.axhline(target, color="red", lw=0.9, ls="--")
            ax.annotate(f"target {target:g}x", (ns[0], target), xytext=(2, 3), textcoords="offset points",
                        fontsize=7, color="red")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("sequence length N (= M)")
        ax.set_ylabel(f"speed vs {BASELINE} (x)")
        ax.set_title(f"d={d}, {'causal' if causal else 'non-causal'}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    labels = []
    for name in handles:
        errs = [e for r in rows if r["variant"] == name and (e := _error(r)) is not None]
        labels.append(name + (f"  (err {statistics.median(errs):.1e})" if errs else ""))
    fig.legend(list(handles.values()), labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    timing = header.get("timing") or {}
    what = "forward+backward" if header.get("kind") == "bench-op-backward" else "forward"
    fig.suptitle(f"DistrAttention {what} vs SDPA-flash, {header.get('gpu') or header.get('device') or '?'}, bf16"
                 + (f"; settled {timing['settle_ms']:g} ms, " + (f"median of {timing['rounds']} passes"
                    if timing["rounds"] > 1 else "one pass") if timing.get("rounds") else "")
                 + "\nsolid: fused kernel; dashed: SDPA engine; dotted: peers; err: median relative error vs exact "
                 "attention on the bench's random inputs", fontsize=9)
    legend_rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0, (0.2 + 0.16 * legend_rows) / fig.get_figheight(), 1, 1))  # room for the legend
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path
