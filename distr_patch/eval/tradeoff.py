"""The speed/accuracy trade-off from two files: accuracy loss from eval results, speedup from a bench file.

Each DistrAttention variant of an eval result (``eval lm`` / ``eval vit``) is placed at (speedup of the bench
variant with the same settings, loss of the result's first metric vs exact attention). Variants the bench
file has no match for are listed, with the closest bench variant and the settings that differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .report import LOSS_LINTHRESH, loss
from .speed import SpeedSource, differences, overridden


@dataclass
class Point:
    model: str
    variant: str
    group_size: int | None
    setting: str | None
    metric: str
    loss: float  # in the metric's unit, > 0 = worse than exact
    speedup: float  # x, from the bench file
    bench_variant: str


@dataclass
class TradeOff:
    speed: SpeedSource
    accuracy_files: list[str]
    points: list[Point] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)  # "model variant: why"


def _why(source: SpeedSource, distr: dict) -> str:
    entries = [e for e in source.entries if e.settings is not None]
    if not entries:
        return "the bench file has no DistrAttention variant"
    best = min(entries, key=lambda e: len(differences(e.settings, distr)))
    diff = differences(best.settings, distr)
    if not diff:
        return f"{best.name} matches but has no speedup at the selected points"
    return f"closest {best.name}: " + ", ".join(_differs(k, distr, best.settings) for k in diff)


def _differs(key: str, distr: dict, bench: dict) -> str:
    if key in bench:
        return f"{key} {distr[key]} vs {bench[key]}"
    where = "layers" if key == "layer_overrides" else "heads"  # PER_LAYER: the bench variant has one setting
    return (f"{key} set {', '.join(overridden(bench, key, distr[key]))} per {where[:-1]} (the bench variant runs "
            f"one setting in all {where}; time the config with `bench model --distr-configs`)")


def combine(results: list[tuple[str, dict]], speed: SpeedSource) -> TradeOff:
    """``results`` = [(path, result dict)]; bench results among them are skipped."""
    evals = [(p, r) for p, r in results if r["kind"] != "bench-model" and r["variants"]]
    out = TradeOff(speed, [str(p) for p, _ in evals])
    for _, r in evals:
        metric = next(iter(r["variants"][0]["metrics"]), None)
        for v in r["variants"][1:]:
            value = loss(v["metrics"][metric]) if metric in v["metrics"] else None
            if value is None:
                continue
            entry = speed.find(v["distr_config"])
            if entry is None or entry.speedup is None:
                out.unmatched.append(f"{r['model']['name']} {v['name']}: {_why(speed, v['distr_config'])}")
                continue
            out.points.append(Point(r["model"]["name"], v["name"], v["group_size"], v["setting"], metric, value,
                                    entry.speedup, entry.name))
    return out


def table(t: TradeOff) -> str:
    """A markdown section: where each axis came from, one row per placed variant, then the unmatched ones."""
    files = ", ".join(f"`{p}`" for p in t.accuracy_files)
    lines = [f"accuracy loss (y) from {files}; speedup (x) from {t.speed.describe()}", "",
             "| model | variant | G | setting | loss vs exact [accuracy file] | speedup [bench file] | bench variant |",
             "|---|---|---|---|---|---|---|"]
    for p in t.points:
        lines.append(f"| {p.model} | {p.variant} | {p.group_size} | {p.setting or ''} | {p.metric} {p.loss:+.4g} | "
                     f"{p.speedup:.2f}x | {p.bench_variant} |")
    if t.unmatched:
        lines += ["", f"No match in `{t.speed.path}` (not plotted):", *(f"- {u}" for u in t.unmatched)]
    return "\n".join(lines)


def _short(path: str) -> str:
    """The last two parts of a path: run directory and file name."""
    return "/".join(Path(path).parts[-2:])


def draw(ax, t: TradeOff) -> bool:
    """Scatter the placed variants on ``ax``; axis labels name the file each axis came from."""
    for p in t.points:
        ax.scatter(p.speedup, p.loss)
        ax.annotate(f"{p.model} {p.variant}", (p.speedup, p.loss), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    if not t.points:
        return False
    metrics = sorted({p.metric for p in t.points})
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_yscale("symlog", linthresh=LOSS_LINTHRESH)
    ax.set_xlabel(f"speedup vs {t.speed.baseline} (x), from {_short(t.speed.path)} "
                  f"({t.speed.kind}, {t.speed.device})", fontsize=8)
    ax.set_ylabel(f"loss of {', '.join(metrics)} vs exact (>0 = worse)\n"
                  f"from {', '.join(_short(p) for p in t.accuracy_files)}", fontsize=8)
    ax.set_title("Speed / accuracy trade-off")
    if t.unmatched:
        names = ", ".join(u.split(": ", 1)[0] for u in t.unmatched)  # "model variant: why" (names hold ':')
        ax.text(0.01, 0.01, f"no speed for: {names}", transform=ax.transAxes, fontsize=6, va="bottom")
    return True
