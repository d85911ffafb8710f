"""The ``DISTR_*`` environment switches: each is read where it acts (mostly ``configs.py``); this module only
names them all, so that a misspelt or retired one is reported at import instead of silently doing nothing."""
from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping

# Every DISTR_* name the package reads (tests/ops/test_env.py keeps this in step with the source).
KNOWN = frozenset({
    "DISTR_AUTO_SDPA", "DISTR_BAND_SIGMA2_DEFERRED", "DISTR_BAND_TILES", "DISTR_BWD_DQ_TILE_ORDER",
    "DISTR_BWD_KV_TMA", "DISTR_BWD_Q_TMA", "DISTR_COLUMN_ORDER", "DISTR_DQ_ATOMIC", "DISTR_DQ_EPILOGUE",
    "DISTR_FAST_LAUNCH", "DISTR_FAST_LAUNCH_RAW", "DISTR_FWD_BAND_EXACT_TILES", "DISTR_FWD_BAND_FIRST",
    "DISTR_FWD_EXP_FMA", "DISTR_FWD_FUSED_GROUPING", "DISTR_FWD_QEFF_LAUNCH", "DISTR_FWD_RESCALE_SLACK",
    "DISTR_FWD_SCALE_AFTER_MAX", "DISTR_FWD_SIGMA2_DEFERRED", "DISTR_FWD_SIGMA2_DIFF", "DISTR_FWD_TILE_ORDER",
    "DISTR_FWD_WS", "DISTR_GROUPED_QK", "DISTR_GROUPING_POSITIONS", "DISTR_GROUPING_PROJECTION", "DISTR_KEEP_QEFF",
    "DISTR_KV_TMA", "DISTR_K_LAYOUT", "DISTR_PAIR_WEIGHTS", "DISTR_POWER_CHUNK", "DISTR_POWER_GRAMS",
    "DISTR_QEFF_FUSION_FROM", "DISTR_QEFF_LAUNCH", "DISTR_QEFF_PROLOGUE", "DISTR_QEFF_REGROUP",
})
# Switches of experiments since removed, and what became of them (docs/benchmarks.md).
RETIRED = {
    "DISTR_QEFF_PAIR_WEIGHTS": "the rank1 pair weights from column sums were removed (slower, and faulting; fortieth "
                               "session)",
    "DISTR_GROUPING_PROJ_PARTS": "the grouping's projection is one 16-bit dot since the sixteenth session",
}


def unknown_switches(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``DISTR_*`` variable in ``environ`` (default: ``os.environ``) that the package does not read:
    what became of a retired one, or the nearest known name."""
    environ = os.environ if environ is None else environ
    lines = []
    for name in sorted(k for k in environ if k.startswith("DISTR_") and k not in KNOWN):
        if name in RETIRED:
            lines.append(f"{name}: no longer read ({RETIRED[name]})")
        else:
            near = difflib.get_close_matches(name, KNOWN, n=1)
            lines.append(f"{name}: not a distr_patch switch" + (f" (did you mean {near[0]}?)" if near else ""))
    return lines


def warn_unknown_switches() -> None:
    """A UserWarning naming the ``DISTR_*`` environment variables set in this process that nothing reads."""
    lines = unknown_switches()
    if lines:
        warnings.warn("environment variables that distr_patch ignores:\n  " + "\n  ".join(lines) +
                      "\n(the switches it reads: distr_patch/ops/env.py, KNOWN)", UserWarning, stacklevel=2)
