"""What calibration keeps within the budget: one objective per task, the search is shared.

An objective says what a model's output is (``output``), how far an output is from exact (``loss``, in
the unit of the predicted loss), how a budget maps onto that unit (``target``), and how the end-to-end
held-out check is measured (``value``, ``relative``). ``proxy`` and ``api`` only call these.

- ``Perplexity`` (causal LMs): output = next-token log-probabilities of a window; loss = KL from exact in
  nats per token; held-out value = perplexity; budget = relative perplexity increase, target log(1 + b).
- ``Fidelity`` (ViT-family: vit, deit, dinov2): output = the classifier logits, or the pooled embedding of
  a backbone (``eval.vision.pooled``), per image; loss = 1 − mean cosine similarity to exact
  (``eval.vision.fidelity``); held-out value = that loss; budget = the absolute loss (0.01: cosine ≥ 0.99).
  1 − cos is quadratic in a small perturbation, like KL, so the proxy's alpha · error² model holds.
"""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F

from ..config import DistrConfig
from ..patching import patched
from ..patching.registry import VISION_MODEL_TYPES

TASKS = ("lm", "vit")


def task_of(model, task: str | None = None) -> str:
    """``task`` checked against the model, or detected from its model_type ("vit" for vit/deit/dinov2)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    vision = model_type in VISION_MODEL_TYPES
    if task is None:
        return "vit" if vision else "lm"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (lm: perplexity, vit: embedding fidelity), got {task!r}")
    if (task == "vit") != vision:
        kind = f"a ViT-family model ({', '.join(VISION_MODEL_TYPES)})" if task == "vit" else "a causal LM"
        raise ValueError(f"task={task!r} needs {kind}; the model is {model_type!r}")
    return task


class Objective(abc.ABC):
    """Base: subclasses define the output and its loss; ``check`` and budgets follow from them."""
    task: str
    metric: str       # what ``value`` measures (the held-out column of the report)
    loss_unit: str    # unit of the predicted loss

    @abc.abstractmethod
    def output(self, model, x: torch.Tensor) -> torch.Tensor:
        ...

    def reference(self, out: torch.Tensor) -> torch.Tensor:
        """What the exact pass keeps of an output (default: the output, float on the CPU)."""
        return out.float().cpu()

    @abc.abstractmethod
    def loss(self, ref: torch.Tensor, out: torch.Tensor) -> float:
        ...

    @abc.abstractmethod
    def target(self, budget: float) -> float:
        """The budget in the unit of the predicted loss."""
        ...

    @abc.abstractmethod
    def measured(self, relative: float) -> float:
        """A held-out check's ``relative`` in the unit of the predicted loss."""
        ...

    @abc.abstractmethod
    def value(self, model, data, config: DistrConfig | None) -> float:
        ...

    @abc.abstractmethod
    def relative(self, value: float, exact: float) -> float:
        """What the budget bounds, from the held-out value of a config and of exact attention."""
        ...


class Perplexity(Objective):
    task, metric, loss_unit = "lm", "perplexity", "nats/token (KL)"

    def __init__(self, window: int, stride: int):
        self.window, self.stride = window, stride

    def output(self, model, x):
        return model(x.to(model.device), use_cache=False).logits[0]

    def reference(self, out):
        return F.log_softmax(out.float(), dim=-1).cpu()

    def loss(self, ref, out):
        from .proxy import kl_to_exact

        return kl_to_exact(ref, out.cpu())

    def target(self, budget):
        return math.log1p(budget)

    def measured(self, relative):
        return math.log1p(max(relative, -0.99))

    def value(self, model, data, config):
        from . import api  # api._ppl: one place to stub the harness in tests

        return api._ppl(model, data, window=self.window, stride=self.stride, config=config)

    def relative(self, value, exact):
        return value / exact - 1


class Fidelity(Objective):
    """1 − mean cosine similarity to exact; ``data`` is a list of pixel batches [B, 3, H, W]."""
    task, metric, loss_unit = "vit", "fidelity loss", "1 - cosine"

    def __init__(self):
        self._exact: dict[int, tuple[list, list[torch.Tensor]]] = {}  # id(data) -> (data, exact outputs)

    def output(self, model, x):
        from ..eval.vision import pooled

        out = model(pixel_values=x.to(model.device, model.dtype))
        logits = getattr(out, "logits", None)
        return logits if logits is not None else pooled(out)

    def loss(self, ref, out):
        from ..eval.vision import fidelity

        return 1.0 - fidelity(out.float().cpu(), ref)

    def target(self, budget):
        return budget

    def measured(self, relative):
        return relative

    @torch.no_grad()
    def _outputs(self, model, data, config) -> list[torch.Tensor]:
        if config is None:
            return [self.reference(self.output(model, x)) for x in data]
        with patched(model, config):
            return [self.reference(self.output(model, x)) for x in data]

    def value(self, model, data, config):
        key = id(data)
        if key not in self._exact or self._exact[key][0] is not data:
            self._exact[key] = (data, self._outputs(model, data, None))
        if config is None:
            return 0.0
        exact = torch.cat(self._exact[key][1])
        return self.loss(exact, torch.cat(self._outputs(model, data, config)))

    def relative(self, value, exact):
        return value - exact
