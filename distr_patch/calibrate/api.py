"""``calibrate(model, data, budget=...) -> DistrConfig``: per-layer settings within a perplexity budget.

Steps (``measure`` once, then ``choose`` per budget):
1. The token stream is split: calibration windows first, then the held-out part (its own strided windows
   for the check), then optionally a test part that only reports.
2. ``measure``: one exact pass records every layer's attention inputs (``proxy.capture``); each
   (layer, candidate) is scored by its attention-output error e; one probe candidate per layer is scored
   by the KL of the final logits with only that layer changed. The predicted loss of (layer, candidate) is
   alpha_layer * e^2 with alpha_layer = KL_probe / e_probe^2 (KL is quadratic in a small perturbation),
   in nats per token, the unit of a perplexity ratio's log.
3. ``choose``: the greedy path (``search.greedy_path``) over predicted loss vs attention work saved
   (``cost.CostModel``); the furthest point whose predicted loss is <= log(1 + budget) is checked end to end
   on the held-out windows (perplexity vs exact). Over budget, it backs off along the path (secant step on
   the measured / predicted ratio, else bisection between the best point within budget and the first
   over it), at most ``max_checks`` checks; under budget with room left, it steps forward the same way.
   Checks are shared between budgets (a point checked for 3% bounds the search for 10%). All-exact is
   within any budget, so the result always is.
4. ``all_grouped`` (``calibrate_full``, on by default): per G among the candidates, every layer on its
   lowest-predicted-loss candidate of that G, checked on the same held-out (and test) windows: a reference
   row that says whether the whole model fits at that G, whatever the search chose.

Per head (``per_head=True``, CLI ``--per-head``): the units of the search are (layer, query head). The same
replays give each head's attention-output error e_h and its share s_h of the layer's exact output energy
(``proxy.HeadErrors``; e_layer² = Σ_h s_h·e_h²), so a unit's predicted loss is alpha_layer · s_h · e_h²
(the layer's probe still sets alpha; all heads on one candidate predict the per-layer loss). The greedy path
moves one head at a time (each weighted 1/heads of its layer's work), the result has ``head_overrides``,
and the held-out checks and the back-off along the path are unchanged (they back off whole units).

ViT-family models (vit, deit, dinov2; ``task="vit"``, detected from the model) run the same steps on
images: the windows are pixel batches, the loss is 1 − mean cosine similarity of the classifier logits or
pooled embedding to exact (``objectives.Fidelity``), and the budget is that loss itself (0.01: cosine
>= 0.99 on the held-out images).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..config import ENGINES, DistrConfig
from ..eval.perplexity import perplexity
from ..ops.validate import check_group_size
from ..patching import patched, patched_modules
from .candidates import Candidate, parse_candidates
from .cost import CostModel
from .objectives import Fidelity, Objective, Perplexity, task_of
from .proxy import Capture, attention_errors, capture, layer_loss
from .search import PathPoint, all_grouped_point, config_for, greedy_path, point_within
from .speed import Speed, forward_ms, wants_speed

DEFAULT_PROBE = Candidate(2, "rank1", 128, 0, 0.0)


class BudgetError(ValueError):
    """The budget is not a finite number >= 0 (a relative perplexity increase: 0.01 or '1%'), or for
    task="vit" not a fidelity loss in [0, 1) (1 − cosine: 0.01 means cosine >= 0.99)."""


def parse_budget(budget, task: str = "lm") -> float:
    """0.01, '0.01' or '1%' -> 0.01 (lm: a relative perplexity increase; vit: 1 − cosine similarity)."""
    text = budget
    if isinstance(budget, str):
        s = budget.strip()
        try:
            budget = float(s[:-1]) / 100 if s.endswith("%") else float(s)
        except ValueError:
            raise BudgetError(f"budget {text!r} is not a number or a percentage (e.g. 0.01 or 1%)") from None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        what = "fidelity loss (1 - cosine) >= 0 (0.01: cosine >= 0.99)" if task == "vit" else \
            "relative perplexity increase >= 0 (0.01 = 1%)"
        raise BudgetError(f"budget must be a finite {what}, got {text!r}")
    if task == "vit" and budget >= 1:
        raise BudgetError(f"a ViT budget is a fidelity loss 1 - cosine below 1 (0.01: cosine >= 0.99); {text!r} "
                          "would allow embeddings orthogonal to exact")
    return float(budget)


@dataclass
class Split:
    """Token ids of the three parts: calibration windows [1, n] each, held-out and test streams [T]."""
    calib: list[torch.Tensor]
    heldout: torch.Tensor
    test: torch.Tensor | None


def split_tokens(ids: torch.Tensor, *, window: int, stride: int, calib_windows: int, heldout_windows: int,
                 test_windows: int = 0) -> Split:
    """Calibration windows first, then the held-out stream, then the test stream (never overlapping)."""
    def span(k):  # tokens that k strided windows cover
        return 0 if k == 0 else window + (k - 1) * stride

    need = calib_windows * window + span(heldout_windows) + span(test_windows)
    if ids.numel() < need:
        raise ValueError(f"the data has {ids.numel()} tokens; {calib_windows} calibration window(s) of {window}, "
                         f"{heldout_windows} held-out and {test_windows} test window(s) need {need}")
    calib = [ids[i * window:(i + 1) * window].unsqueeze(0) for i in range(calib_windows)]
    h0 = calib_windows * window
    heldout = ids[h0:h0 + span(heldout_windows)]
    t0 = h0 + span(heldout_windows)
    test = ids[t0:t0 + span(test_windows)] if test_windows else None
    return Split(calib, heldout, test)


@dataclass
class Sensitivity:
    """What ``measure`` found: the heat map, the probes, the predicted losses and the greedy path."""
    candidates: list[Candidate]
    work: list[float]                 # relative attention work per candidate
    errors: list[list[float]]         # [layer][candidate] relative attention-output error
    probe: Candidate
    probe_kl: list[float]             # [layer] loss (lm: KL nats/token; vit: 1 - cos) with only that layer on the probe
    alpha: list[float]                # [layer] probe loss / error^2
    loss: list[list[float]]           # [layer][candidate] predicted loss
    path: list[PathPoint]
    cost_source: str
    seq_len: int
    seconds: dict[str, float] = field(default_factory=dict)
    task: str = "lm"
    # per_head=True: the path's units are (layer, head), layer-major; None when the units are layers
    heads: list[int] | None = None                   # [layer] query heads
    head_errors: list[list[list[float]]] | None = None  # [layer][head][candidate] relative attention-output error
    head_share: list[list[float]] | None = None      # [layer][head] share of the layer's exact output energy
    head_loss: list[list[list[float]]] | None = None  # [layer][head][candidate] predicted loss
    all_grouped: list["AllGrouped"] = field(default_factory=list)  # filled by calibrate_full (checked)

    @property
    def num_layers(self) -> int:
        return len(self.errors)

    @property
    def num_units(self) -> int:
        """Entries of a path point's choice: layers, or (layer, head) pairs when per head."""
        return self.num_layers if self.heads is None else sum(self.heads)

    def unit_losses(self) -> list[list[float]]:
        """[unit][candidate] predicted loss: per layer, or per (layer, head) layer-major."""
        return self.loss if self.heads is None else [unit for layer in self.head_loss for unit in layer]

    def unit_weights(self) -> list[float] | None:
        """Each unit's share of its layer's work (per head: 1/heads); None: layers, all equal."""
        return None if self.heads is None else [1.0 / h for h in self.heads for _ in range(h)]


@dataclass
class Check:
    point: int
    predicted: float          # predicted loss (nats/token)
    saving: float
    perplexity: float         # the held-out value: perplexity (lm) or fidelity loss 1 - cos (vit)
    relative: float           # lm: perplexity / exact - 1; vit: the fidelity loss


@dataclass
class Choice:
    """One budget's result: the config and how it was checked."""
    budget: float
    config: DistrConfig
    point: int
    predicted: float
    saving: float             # fraction of the model's attention work saved (cost model)
    grouped: int              # layers not exact
    grouped_by_g: dict[int, int]
    heldout_exact: float      # held-out value with exact attention (vit: 0)
    heldout: float            # held-out value of the chosen config: perplexity (lm), 1 - cosine (vit)
    checks: list[Check]
    test_exact: float | None = None
    test: float | None = None
    metric: str = "perplexity"  # or "fidelity loss"
    heads_grouped: int | None = None     # per head: (layer, head) units not exact
    heads_grouped_by_g: dict[int, int] | None = None
    num_heads: int | None = None         # per head: all query heads of the model
    speed: Speed | None = None           # measured forward time vs exact (calibrate_full's ``speedup``)

    @property
    def heldout_relative(self) -> float:
        """What the budget bounds: relative perplexity increase (lm), fidelity loss (vit)."""
        return self.heldout / self.heldout_exact - 1 if self.metric == "perplexity" else self.heldout


@dataclass
class AllGrouped:
    """Every layer (every head, per head) grouped at one G, each on its lowest-predicted-loss candidate of
    that G that saves work: the most accurate "G everywhere" config the proxy knows, checked like a choice.
    It answers "does every layer fit at G=2 within the budget?" next to the budget choices."""
    group_size: int
    config: DistrConfig
    predicted: float
    saving: float
    heldout_exact: float
    heldout: float
    test_exact: float | None = None
    test: float | None = None
    metric: str = "perplexity"
    speed: Speed | None = None

    @property
    def heldout_relative(self) -> float:
        return self.heldout / self.heldout_exact - 1 if self.metric == "perplexity" else self.heldout


def all_grouped(model, sens: Sensitivity, heldout, *, objective: Objective, base: DistrConfig | None = None,
                heldout_exact: float | None = None, test=None, test_exact: float | None = None) -> list[AllGrouped]:
    """One ``AllGrouped`` per group size among the candidates (ascending), each checked on ``heldout`` (and
    ``test``): two evaluations per G."""
    base = _uniform(base)
    if heldout_exact is None:
        heldout_exact = objective.value(model, heldout, None)
    if test is not None and test_exact is None:
        test_exact = objective.value(model, test, None)
    out = []
    for g in sorted({c.group_size for c in sens.candidates}):
        point = all_grouped_point(sens.work, sens.unit_losses(), [c.group_size == g for c in sens.candidates],
                                  sens.unit_weights())
        if point is None:
            continue
        cfg = config_for(point.choice, sens.candidates, base, sens.heads)
        out.append(AllGrouped(g, cfg, point.loss, point.saving, heldout_exact, objective.value(model, heldout, cfg),
                              test_exact, None if test is None else objective.value(model, test, cfg),
                              objective.metric))
    return out


def _fmt_predicted(loss: float, task: str) -> str:
    """A predicted loss in the budget's unit: relative perplexity increase (lm), 1 − cosine (vit)."""
    return f"{(loss if task == 'vit' else math.expm1(loss)):+.2%}"


def _uniform(base: DistrConfig | None) -> DistrConfig:
    base = DistrConfig() if base is None else DistrConfig.from_dict(base) if isinstance(base, dict) else base
    return base.replace(exact_layers=(), exact_first=0, exact_last=0, layer_overrides={}, head_overrides={})


def measure(model, calib: list[torch.Tensor], candidates=None, *, base: DistrConfig | None = None,
            cost: CostModel | None = None, probe: Candidate | str | None = None, objective: Objective | None = None,
            progress: bool = True, per_head: bool = False) -> Sensitivity:
    """Score every (layer, candidate) on the calibration windows (token ids [1, n] each, or pixel batches
    [B, 3, H, W] with ``objective=Fidelity()``); with ``per_head`` every (layer, query head, candidate)
    too, and the greedy path runs over (layer, head) units."""
    base = _uniform(base)
    cands = parse_candidates(candidates)
    objective = objective or Perplexity(0, 0)
    modules = patched_modules(model)
    timings = {}
    t0 = time.perf_counter()
    cap: Capture = capture(model, calib, objective)
    timings["capture_s"] = time.perf_counter() - t0
    probe = Candidate.parse(probe) if isinstance(probe, str) else probe
    if probe is None:  # the default, else the first candidate that groups some scores at this length
        probe = DEFAULT_PROBE if DEFAULT_PROBE in cands else next(
            (c for c in cands if c.exact_window < cap.seq_len), cands[0])
    for d in set(cap.head_dim):
        for c in cands:
            check_group_size(c.group_size, d)
        try:
            check_group_size(probe.group_size, d)
        except ValueError as e:
            raise ValueError(f"probe {probe.name}: {e}") from None
    if probe.exact_window >= cap.seq_len:
        # its output loss would be rounding noise (even negative), and loss / error² no sensitivity at all
        raise ValueError(f"probe {probe.name}: its exact_window covers every score at {cap.seq_len} tokens, so it "
                         "cannot measure a layer's sensitivity; give a probe with a narrower window "
                         f"(default {DEFAULT_PROBE.name})")
    seq_len = cost.seq_len if cost is not None else cap.seq_len
    cost = cost or CostModel(seq_len, causal=bool(getattr(modules[0], "is_causal", True)))
    work = [cost.work(c) for c in cands]

    t0 = time.perf_counter()
    err = attention_errors(cap, cands, base, modules, progress=progress, per_head=per_head)
    err, head = err if per_head else (err, None)
    timings["proxy_s"] = time.perf_counter() - t0

    pj = cands.index(probe) if probe in cands else None
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    kls, alpha = [], []
    for layer in tqdm(range(cap.num_layers), desc="proxy: output-loss probes", disable=not progress, leave=False):
        kl = max(layer_loss(model, cap, layer, probe, base, objective), 0.0)  # a KL; below 0 only by rounding
        e = float(err[layer, pj]) if pj is not None else float(attention_errors(
            _one_layer(cap, layer), [probe], base, modules[layer:layer + 1], progress=False)[0, 0])
        kls.append(kl)
        alpha.append(kl / (e * e) if e > 0 else 0.0)
    timings["probes_s"] = time.perf_counter() - t0
    cap_heads = cap.num_heads
    del cap
    loss = [[alpha[i] * float(err[i, j]) ** 2 for j in range(len(cands))] for i in range(len(alpha))]
    if pj is not None:  # measured where we have it
        for i in range(len(alpha)):
            loss[i][pj] = kls[i]
    if not per_head:
        weights = None  # every layer's exact attention work is the same in these models (same heads, same N)
        path = greedy_path(work, loss, weights)
        return Sensitivity(cands, work, err.tolist(), probe, kls, alpha, loss, path, cost.source, seq_len, timings,
                           objective.task)
    heads = list(cap_heads)
    head_err = [head.errors[i, :heads[i]].tolist() for i in range(len(heads))]
    share = [head.share[i, :heads[i]].tolist() for i in range(len(heads))]
    head_loss = [[[alpha[i] * share[i][h] * e * e for e in head_err[i][h]] for h in range(heads[i])]
                 for i in range(len(heads))]
    sens = Sensitivity(cands, work, err.tolist(), probe, kls, alpha, loss, [], cost.source, seq_len, timings,
                       objective.task, heads, head_err, share, head_loss)
    sens.path = greedy_path(work, sens.unit_losses(), sens.unit_weights())  # each layer's work shared by its heads
    return sens


def _one_layer(cap: Capture, layer: int) -> Capture:
    return Capture(cap.windows, cap.calls[layer:layer + 1], [], cap.exact)


def _ppl(model, ids, *, window, stride, config: DistrConfig | None) -> float:
    if config is None:
        return perplexity(model, ids, window=window, stride=stride, progress=False)["metrics"]["perplexity"]
    with patched(model, config):
        return perplexity(model, ids, window=window, stride=stride, progress=False)["metrics"]["perplexity"]


def choose(model, sens: Sensitivity, budget, heldout, *, window: int | None = None, stride: int | None = None,
           base: DistrConfig | None = None, max_checks: int = 4, heldout_exact: float | None = None,
           test=None, test_exact: float | None = None, known: dict | None = None,
           objective: Objective | None = None, progress: bool = True) -> Choice:
    """The per-layer (per-head when ``sens.heads`` is set) config for ``budget``, checked on ``heldout``: token
    ids with ``window``/``stride`` (budget: relative perplexity increase), or pixel batches with
    ``objective=Fidelity()`` (budget: 1 − cosine).

    ``known`` (point -> Check) carries the checks of earlier budgets on the same ``sens`` and held-out data;
    new checks are added to it. ``max_checks`` counts only new checks."""
    if objective is None:
        if window is None or stride is None:
            raise ValueError("choose: give window= and stride= (perplexity), or an objective")
        objective = Perplexity(window, stride)
    budget = parse_budget(budget, objective.task)
    base = _uniform(base)
    if not isinstance(max_checks, int) or max_checks < 1:
        raise ValueError(f"max_checks must be an int >= 1, got {max_checks!r}")
    n = sens.num_units
    path = sens.path
    if heldout_exact is None:
        heldout_exact = objective.value(model, heldout, None)
    target = objective.target(budget)
    known = {} if known is None else known  # point -> Check, shared between the budgets of one measurement
    checks: list[Check] = []
    lo, hi = 0, len(path)   # lo: furthest point known within budget; hi: nearest known over it
    if budget > 0:
        lo = max([p for p, c in known.items() if c.relative <= budget], default=0)
        hi = min([p for p, c in known.items() if c.relative > budget], default=len(path))
        hi = max(hi, lo + 1)
    k = point_within(path, target) if budget > 0 else 0
    if budget > 0 and not lo < k < hi:
        k = (lo + hi) // 2
    while budget > 0 and lo < k < hi and len(checks) < max_checks:
        cfg = config_for(path[k].choice, sens.candidates, base, sens.heads)
        p = objective.value(model, heldout, cfg)
        rel = objective.relative(p, heldout_exact)
        known[k] = Check(k, path[k].loss, path[k].saving, p, rel)
        checks.append(known[k])
        if progress:
            print(f"  budget {100 * budget:.3g}%: point {k}/{len(path) - 1} "
                  f"predicted {_fmt_predicted(path[k].loss, objective.task)} "
                  f"held-out {rel:+.2%} ({objective.metric}) saving {path[k].saving:.1%}")
        if rel <= budget:
            lo = k
        else:
            hi = k
        measured = objective.measured(rel)
        # secant: assume measured = r * predicted along the path, aim a little inside the budget
        if measured > 0 and path[k].loss > 0:
            guess = point_within(path, 0.9 * target * path[k].loss / measured)
        else:
            guess = len(path) - 1
        k = guess if lo < guess < hi else (lo + hi) // 2
    choice = path[lo].choice
    cfg = config_for(choice, sens.candidates, base, sens.heads)
    held = heldout_exact if lo == 0 else known[lo].perplexity
    by_g: dict[int, int] = {}
    for j in choice:
        if j is not None:
            g = sens.candidates[j].group_size
            by_g[g] = by_g.get(g, 0) + 1
    if sens.heads is None:
        out = Choice(budget, cfg, lo, path[lo].loss, path[lo].saving, sum(j is not None for j in choice), by_g,
                     heldout_exact, held, checks, metric=objective.metric)
    else:  # layers: those with a grouped head, by the G of their layer override; heads: every grouped unit
        layer_g: dict[int, int] = {}
        for over in cfg.layer_overrides.values():
            layer_g[over["group_size"]] = layer_g.get(over["group_size"], 0) + 1
        out = Choice(budget, cfg, lo, path[lo].loss, path[lo].saving, len(cfg.layer_overrides), layer_g,
                     heldout_exact, held, checks, metric=objective.metric, heads_grouped=sum(by_g.values()),
                     heads_grouped_by_g=by_g, num_heads=sum(sens.heads))
    if test is not None:
        out.test_exact = test_exact if test_exact is not None else objective.value(model, test, None)
        out.test = out.test_exact if lo == 0 else objective.value(model, test, cfg)
    assert len(choice) == n
    return out


def _token_ids(data, tokenizer) -> torch.Tensor:
    if isinstance(data, str):
        if tokenizer is None:
            raise ValueError("data is text: pass tokenizer= (or token ids as a 1-D LongTensor)")
        return tokenizer(data, return_tensors="pt").input_ids[0]
    ids = torch.as_tensor(data)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"data must be text or a 1-D tensor of token ids, got shape {tuple(ids.shape)} {ids.dtype}")
    return ids.long()


def _pixel_values(data, processor, image_column: str, split: str, need: int, seed: int) -> torch.Tensor:
    """Images as pixel values [N, 3, H, W]: from a tensor as is, else through ``processor`` (a data set: a
    seeded sample of ``need`` images, so that a large folder is not processed whole)."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 4:
            raise ValueError(f"pixel values must be [N, 3, H, W], got shape {tuple(data.shape)}")
        return data
    if isinstance(data, str):
        from ..data import load_images

        data = load_images(data, split=split, image_column=image_column, label_column=None)
    if hasattr(data, "column_names"):  # a datasets.Dataset
        if image_column not in data.column_names:
            raise ValueError(f"the data set has no column {image_column!r} (columns: {data.column_names})")
        if len(data) > need:
            data = data.shuffle(seed=seed).select(range(need))
        data = data[image_column]
    images = list(data)
    if processor is None:
        raise ValueError("data is images: pass processor= (the model's image processor), or pixel values [N, 3, H, W]")
    return processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]


@dataclass
class ImageSplit:
    """Pixel batches [B, 3, H, W] of the three parts (a seeded shuffle of the images, never overlapping)."""
    calib: list[torch.Tensor]
    heldout: list[torch.Tensor]
    test: list[torch.Tensor] | None


def split_images(pixels: torch.Tensor, *, calib_images: int, heldout_images: int, test_images: int = 0,
                 batch_size: int = 16, seed: int = 0) -> ImageSplit:
    need = calib_images + heldout_images + test_images
    if pixels.shape[0] < need:
        raise ValueError(f"the data has {pixels.shape[0]} images; {calib_images} calibration, {heldout_images} "
                         f"held-out and {test_images} test image(s) need {need}")
    order = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(seed))

    def batches(a, b):
        idx = order[a:b]
        return [pixels[idx[i:i + batch_size]] for i in range(0, len(idx), batch_size)]

    h0, t0 = calib_images, calib_images + heldout_images
    return ImageSplit(batches(0, h0), batches(h0, t0), batches(t0, need) if test_images else None)


def calibrate(model, data, budget=0.01, candidates=None, *, task: str | None = None, tokenizer=None,
              processor=None, base: DistrConfig | None = None, window: int = 1024, stride: int | None = None,
              calib_windows: int = 1, heldout_windows: int = 2, calib_images: int = 16, heldout_images: int = 32,
              batch_size: int = 16, image_column: str = "image", split: str = "train",
              probe: Candidate | str | None = None, cost: CostModel | None = None, max_checks: int = 4,
              seed: int = 0, progress: bool = False, per_head: bool = False) -> DistrConfig:
    """Per-layer DistrAttention settings for ``model`` whose held-out loss is within ``budget``.

    Args:
        model: an unpatched transformers model of a supported type: a causal LM (task "lm": perplexity), or
            a ViT-family classifier or backbone (vit, deit, dinov2; task "vit": embedding fidelity).
        data: lm: text (with ``tokenizer``) or a 1-D tensor of token ids; the first ``calib_windows``
            windows of ``window`` tokens calibrate, the next ``heldout_windows`` strided windows (``stride``,
            default window // 2) check. vit: an image folder or data set name (``image_column``,
            ``split``), a ``datasets.Dataset``, a list of PIL images (all with ``processor``), or pixel
            values [N, 3, H, W]; after a seeded shuffle the first ``calib_images`` calibrate and the next
            ``heldout_images`` check, in batches of ``batch_size``.
        budget: lm: allowed relative perplexity increase on the held-out part (0.01 or "1%"); vit: allowed
            fidelity loss, 1 − mean cosine similarity of the logits (classifier) or pooled embedding
            (backbone) to exact (0.01: cosine >= 0.99). 0: all exact.
        candidates: a grid name ("default": the issue's 156 per layer, "fast"), a grid dict, or a list of
            candidate names / dicts (``candidates.parse_candidates``).
        task: "lm" or "vit"; default: from the model's model_type.
        base: LSH seed, hash bits and exact_below of every layer (default ``DistrConfig()``'s).
        probe: the candidate whose output loss sets each layer's sensitivity (default G2-rank1-b128-w0-c0).
        cost: relative attention work per candidate (default: the analytic count at the model's tokens).
        max_checks: end-to-end held-out checks at most.
        seed: the result's LSH seed when ``base`` is None (``base.seed`` otherwise), and the seed of the
            calibration's own randomness (the image shuffle).
        per_head: choose settings per (layer, query head) from each head's attention-output error; the result
            also has ``head_overrides`` (heads that differ from their layer, {"group_size": 1} for exact ones).

    Returns a DistrConfig (``layer_overrides`` for the grouped layers, ``exact_layers`` for the rest) that
    ``patch_model``, ``config.distr_config`` and ``save_pretrained`` take as it is. ``calibrate_full``
    returns the measurements as well.
    """
    return calibrate_full(model, data, [budget], candidates, task=task, tokenizer=tokenizer, processor=processor,
                          base=base, window=window, stride=stride, calib_windows=calib_windows,
                          heldout_windows=heldout_windows, calib_images=calib_images, heldout_images=heldout_images,
                          batch_size=batch_size, image_column=image_column, split=split, probe=probe, cost=cost,
                          max_checks=max_checks, seed=seed, progress=progress, per_head=per_head,
                          check_all_grouped=False, speedup="off")[1][0].config


def calibrate_full(model, data, budgets, candidates=None, *, task: str | None = None, tokenizer=None,
                   processor=None, base=None, window: int = 1024, stride: int | None = None, calib_windows: int = 1,
                   heldout_windows: int = 2, test_windows: int = 0, calib_images: int = 16,
                   heldout_images: int = 32, test_images: int = 0, batch_size: int = 16, image_column: str = "image",
                   split: str = "train", probe=None, cost: CostModel | None = None, max_checks: int = 4,
                   seed: int = 0, progress: bool = False, per_head: bool = False,
                   check_all_grouped: bool = True, speedup: str = "auto",
                   engine: str | None = None) -> tuple[Sensitivity, list[Choice]]:
    """``calibrate`` for several budgets sharing one measurement; returns (sensitivity, one Choice per budget).

    ``check_all_grouped``: also check, per G among the candidates, every layer grouped at that G on its
    lowest-predicted-loss candidate (``AllGrouped``, in ``sensitivity.all_grouped``; two evaluations per G).
    ``speedup``: time one forward on the first calibration window with exact attention and with each result
    (``Choice.speed``, ``AllGrouped.speed``): "auto" on a GPU only, "on" also on the CPU (where DistrAttention
    runs its PyTorch reference, so the times are not the kernel's), "off" never.
    ``engine``: the engine the returned configs name (default: ``base``'s, which runs the calibration either
    way); the speedup is timed with the configs as returned."""
    task = task_of(model, task)
    if isinstance(budgets, (str, int, float)):  # one budget: "10" would otherwise be read as "1" and "0"
        raise TypeError(f"budgets must be a list of budgets (e.g. ['1%', '3%']), got {budgets!r}; "
                        "calibrate() takes one")
    budgets = [parse_budget(b, task) for b in budgets]
    if not budgets:
        raise BudgetError("give at least one budget")
    if len(set(budgets)) != len(budgets):
        raise BudgetError(f"budgets {budgets} repeat a value (one choice and one config per budget)")
    cands = parse_candidates(candidates)  # bad candidates fail before any model work
    timed = wants_speed(speedup, model)
    if not isinstance(per_head, bool):
        raise TypeError(f"per_head must be True or False, got {per_head!r}")
    if not isinstance(max_checks, int) or isinstance(max_checks, bool) or max_checks < 1:
        raise ValueError(f"max_checks must be an int >= 1, got {max_checks!r}")  # before hours of measuring
    if isinstance(probe, str):
        probe = Candidate.parse(probe)
    elif probe is not None and not isinstance(probe, Candidate):
        raise TypeError(f"probe must be a candidate name (e.g. {DEFAULT_PROBE.name!r}) or a Candidate, got {probe!r}")
    base = DistrConfig(seed=seed) if base is None else base  # the hash seed of the result, unless base sets one
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be None (base's) or one of {ENGINES}, got {engine!r}")
    counts = (("window", window), ("calib_windows", calib_windows), ("heldout_windows", heldout_windows)) \
        if task == "lm" else (("calib_images", calib_images), ("heldout_images", heldout_images),
                              ("batch_size", batch_size))
    for name, v in counts:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    for name, v in (("test_windows", test_windows), ("test_images", test_images)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if task == "lm":
        if window < 2:
            raise ValueError(f"window must be >= 2 (a one-token window scores nothing), got {window}")
        exact_below = _uniform(base).exact_below
        if window < exact_below:  # every call would run exact attention: rounding noise measured as each loss
            raise ValueError(f"window={window} is below exact_below={exact_below}: calls on fewer query rows run "
                             "exact attention, so no candidate would be measured; use a longer window (or a base "
                             "config with a lower exact_below)")
        if stride is not None and (not isinstance(stride, int) or isinstance(stride, bool)
                                   or not 1 <= stride <= window):
            raise ValueError(f"stride must be None (window // 2) or an int in [1, window={window}], got {stride!r}")
    torch.manual_seed(seed)
    if task == "lm":
        stride = stride or max(1, window // 2)
        objective: Objective = Perplexity(window, stride)
        ids = _token_ids(data, tokenizer)
        parts = split_tokens(ids, window=window, stride=stride, calib_windows=calib_windows,
                             heldout_windows=heldout_windows, test_windows=test_windows)
    else:
        objective = Fidelity()
        need = calib_images + heldout_images + test_images
        parts = split_images(_pixel_values(data, processor, image_column, split, need, seed), calib_images=calib_images,
                             heldout_images=heldout_images, test_images=test_images, batch_size=batch_size, seed=seed)
    sens = measure(model, parts.calib, cands, base=base, cost=cost, probe=probe, objective=objective,
                   progress=progress, per_head=per_head)
    heldout_exact = objective.value(model, parts.heldout, None)
    test_exact = None
    if parts.test is not None:
        test_exact = objective.value(model, parts.test, None)
    choices, known = [], {}
    for b in budgets:
        t0 = time.perf_counter()
        choices.append(choose(model, sens, b, parts.heldout, base=base, max_checks=max_checks,
                              heldout_exact=heldout_exact, test=parts.test, test_exact=test_exact, known=known,
                              objective=objective, progress=progress))
        sens.seconds[f"choose_{b:g}_s"] = time.perf_counter() - t0
    if check_all_grouped:
        t0 = time.perf_counter()
        sens.all_grouped = all_grouped(model, sens, parts.heldout, objective=objective, base=base,
                                       heldout_exact=heldout_exact, test=parts.test, test_exact=test_exact)
        sens.seconds["all_grouped_s"] = time.perf_counter() - t0
        if progress:
            for a in sens.all_grouped:
                print(f"  every unit at G={a.group_size}: predicted {_fmt_predicted(a.predicted, objective.task)} "
                      f"held-out {a.heldout_relative:+.2%} ({objective.metric}) saving {a.saving:.1%}")
    if engine is not None:
        for r in [*choices, *(sens.all_grouped or [])]:
            r.config = r.config.replace(engine=engine)
    if timed:
        t0 = time.perf_counter()
        x = parts.calib[0]
        exact_ms = forward_ms(model, objective, x, None)
        device = str(next(model.parameters()).device)
        for r in [*choices, *sens.all_grouped]:
            r.speed = Speed(exact_ms, forward_ms(model, objective, x, r.config), device)
        sens.seconds["speed_s"] = time.perf_counter() - t0
    return sens, choices
