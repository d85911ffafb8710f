"""The cheap sensitivity proxy: record each layer's attention inputs once, then score candidates on them.

1. ``capture``: one exact forward per calibration window through a recording attention function
   ("distr_calib", registered like "distr"): each attention call stores q/k/v, the mask, the scale and
   the exact output, and each decoder layer's output is kept (it is the next layer's input).
2. ``attention_errors``: every (layer, candidate) replays the recorded call through the "distr" adapter
   (``integrations.hf.distr_attention_forward``, so masks and causality resolve exactly as in the patched
   model) and scores the relative error of the attention output, ||out - exact|| / ||exact||; with
   ``per_head`` also each query head's error and its share of the layer's output (``HeadErrors``).
3. ``layer_loss``: for a few (layer, candidate) pairs, the objective's loss at the output with only that
   layer changed (``objectives``: KL of the next-token distribution for LMs, 1 − cosine of the logits or
   pooled embedding for ViTs). Layers before it are not recomputed: they are swapped for stubs that hand
   on the recorded hidden state. ``layer_kl`` is the LM case.

Steps 1 and 2 are model-agnostic (a window is token ids [1, n] or a pixel batch [B, 3, H, W]; causality
comes from the recorded call and the module). The attention error is per layer and cheap; the output loss
says how much an error in that layer costs. ``api.calibrate`` combines them (predicted loss =
alpha_layer * error^2, alpha from the probes).
"""
from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import DistrConfig, LayerSettings
from ..integrations.hf import distr_attention_forward
from ..patching import is_patched, patched, patched_modules
from .candidates import Candidate
from .objectives import Objective, Perplexity

RECORD_IMPLEMENTATION = "distr_calib"
_KEEP_KWARGS = ("sliding_window", "softcap", "s_aux", "sinks", "position_bias")


@dataclass
class Call:
    """One recorded attention call (CPU tensors) and its exact output [B, N, Hq, d]."""
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attention_mask: torch.Tensor | None
    scaling: float | None
    is_causal: bool | None
    kwargs: dict
    out: torch.Tensor


@dataclass
class Capture:
    """What one exact pass over the calibration windows recorded."""
    windows: list[torch.Tensor]                  # per window: token ids [1, n] or pixel values [B, 3, H, W]
    calls: list[list[Call]]                      # [layer][window]
    layer_outputs: list[list[torch.Tensor]]      # [layer][window]: the layer's output hidden state
    exact: list[torch.Tensor]                    # [window]: Objective.reference of the exact output
    num_heads: list[int] = field(default_factory=list)
    head_dim: list[int] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.calls)

    @property
    def seq_len(self) -> int:
        """Tokens per attention call (the first layer's first window)."""
        return self.calls[0][0].query.shape[2]

    @property
    def exact_logprobs(self) -> list[torch.Tensor]:  # the LM objective's name for ``exact``
        return self.exact


def _record_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    out = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                          is_causal=is_causal, **kwargs)
    sink = getattr(module, "_distr_calib_sink", None)
    if sink is not None:
        kept = {k: kwargs[k] for k in _KEEP_KWARGS if kwargs.get(k) is not None}
        sink.append(Call(query.detach().cpu(), key.detach().cpu(), value.detach().cpu(),
                         None if attention_mask is None else attention_mask.detach().cpu(), scaling, is_causal, kept,
                         out[0].detach().cpu()))
    return out


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(RECORD_IMPLEMENTATION, _record_attention)
    AttentionMaskInterface.register(RECORD_IMPLEMENTATION, sdpa_mask)


def decoder_layers(model, modules: list[torch.nn.Module]) -> torch.nn.ModuleList | None:
    """The ModuleList whose i-th entry holds attention module i (the model's layer stack), or None."""
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) == len(modules):
            if all(any(sub is a for sub in layer.modules()) for layer, a in zip(m, modules)):
                return m
    return None


def _check_model(model) -> list[torch.nn.Module]:
    modules = patched_modules(model)  # unsupported types raise, listing the supported ones
    if is_patched(model):
        raise ValueError("calibrate needs the model unpatched (exact attention); call distr_patch.unpatch_model first")
    return modules


@torch.no_grad()
def capture(model, windows: list[torch.Tensor], objective: Objective | None = None) -> Capture:
    """One exact forward per window (token ids [1, n], or pixel values for a ViT objective) with every
    attention call and layer output recorded."""
    objective = objective or Perplexity(0, 0)
    modules = _check_model(model)
    layers = decoder_layers(model, modules)
    n = len(modules)
    calls: list[list[Call]] = [[] for _ in range(n)]
    outs: list[list[torch.Tensor]] = [[] for _ in range(n)]
    hooks = []
    if layers is not None:
        for i, layer in enumerate(layers):
            def hook(_m, _args, output, i=i):
                h = output[0] if isinstance(output, tuple) else output
                outs[i].append(h.detach().cpu())
            hooks.append(layer.register_forward_hook(hook))
    previous = model.config._attn_implementation
    _register()
    exact = []
    try:
        for i, m in enumerate(modules):
            m._distr_calib_sink = calls[i]
        model.set_attn_implementation(RECORD_IMPLEMENTATION)
        for x in windows:
            exact.append(objective.reference(objective.output(model, x)))
    finally:
        for h in hooks:
            h.remove()
        for m in modules:
            m.__dict__.pop("_distr_calib_sink", None)
        model.set_attn_implementation(previous)
    if any(len(c) != len(windows) for c in calls):
        raise RuntimeError("not every attention layer was called once per window; calibration needs a model whose "
                           "layers each run attention once per forward")
    return Capture(windows, calls, outs if layers is not None else [], exact,
                   [c[0].query.shape[1] for c in calls], [c[0].query.shape[-1] for c in calls])


def layer_settings(cand: Candidate, base: DistrConfig) -> LayerSettings:
    """The settings a layer runs with under ``cand`` (LSH seed and bits from ``base``)."""
    uniform = base.replace(exact_layers=(), exact_first=0, exact_last=0, layer_overrides={}, head_overrides={})
    values = {**uniform.for_layer(None).__dict__, **cand.settings()}
    values.pop("exact", None)
    values.pop("heads", None)
    return LayerSettings(**values, exact=False)


@dataclass
class HeadErrors:
    """Per query head: relative attention-output error [layers, heads, candidates] and each head's share of
    its layer's exact output energy [layers, heads] (layers with fewer heads are zero-padded).

    The layer's squared error is the share-weighted sum of its heads' squared errors:
    e_layer² = Σ_h share_h · e_h² (the heads' outputs are disjoint slices of the layer's)."""
    errors: torch.Tensor
    share: torch.Tensor


@torch.no_grad()
def attention_errors(cap: Capture, candidates: list[Candidate], base: DistrConfig, modules: list | None = None,
                     progress: bool = True, per_head: bool = False):
    """Relative attention-output error [layers, candidates] over the calibration windows; with ``per_head``
    the pair (that, ``HeadErrors``) from the same replays (a head's output depends only on its own setting)."""
    from tqdm.auto import tqdm

    err = torch.zeros(cap.num_layers, len(candidates), dtype=torch.float64)
    max_heads = max((c[0].query.shape[1] for c in cap.calls), default=0)
    head_num = torch.zeros(cap.num_layers, max_heads, len(candidates), dtype=torch.float64)
    head_den = torch.zeros(cap.num_layers, max_heads, dtype=torch.float64)
    bar = tqdm(total=cap.num_layers * len(candidates), desc="proxy: attention error", disable=not progress,
               leave=False)
    for layer in range(cap.num_layers):
        is_causal = getattr(modules[layer], "is_causal", True) if modules else True
        for j, cand in enumerate(candidates):
            stand_in = types.SimpleNamespace(_distr_settings=layer_settings(cand, base), is_causal=is_causal)
            num = den = 0.0
            for c in cap.calls[layer]:
                out, _ = distr_attention_forward(stand_in, c.query, c.key, c.value, c.attention_mask,
                                                 scaling=c.scaling, is_causal=c.is_causal, **c.kwargs)
                diff = (out.float() - c.out.float()).pow(2)
                num += float(diff.sum())
                den += float(c.out.float().pow(2).sum())
                if per_head:  # out is [B, N, Hq, d]
                    h = out.shape[2]
                    head_num[layer, :h, j] += diff.sum(dim=(0, 1, 3)).double()
                    if j == 0:
                        head_den[layer, :h] += c.out.float().pow(2).sum(dim=(0, 1, 3)).double()
            err[layer, j] = (num / den) ** 0.5 if den > 0 else 0.0
            bar.update()
    bar.close()
    if not per_head:
        return err
    den = head_den.unsqueeze(-1)
    head_err = torch.where(den > 0, head_num / den.clamp_min(1e-300), torch.zeros_like(head_num)).sqrt()
    total = head_den.sum(dim=1, keepdim=True)
    share = torch.where(total > 0, head_den / total.clamp_min(1e-300), torch.zeros_like(head_den))
    return err, HeadErrors(head_err, share)


class _Handoff(torch.nn.Module):
    """Stands in for a layer before the one under test: passes its input on, or the recorded hidden state."""

    def __init__(self, original: torch.nn.Module, hidden: torch.Tensor | None):
        super().__init__()
        self.hidden = hidden
        for name in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(original, name):
                setattr(self, name, getattr(original, name))

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.hidden is None else self.hidden.to(hidden_states.device, hidden_states.dtype)


@contextlib.contextmanager
def _start_at(layers: torch.nn.ModuleList | None, layer: int, hidden: torch.Tensor | None):
    """Run the model from ``layer`` on: layers before it become stubs (no-op when not possible)."""
    if layers is None or layer == 0 or hidden is None:
        yield
        return
    saved = [layers[j] for j in range(layer)]
    try:
        for j in range(layer):
            layers[j] = _Handoff(saved[j], hidden if j == layer - 1 else None)
        yield
    finally:
        for j in range(layer):
            layers[j] = saved[j]


def kl_to_exact(exact_logprobs: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over positions of KL(exact || approx) of the next-token distribution, in nats."""
    approx = F.log_softmax(logits.float(), dim=-1)
    return float((exact_logprobs.exp() * (exact_logprobs - approx)).sum(-1).mean())


def layer_kl(model, cap: Capture, layer: int, cand: Candidate, base: DistrConfig) -> float:
    """KL of the final logits from exact, averaged over the calibration windows, with only ``layer`` on ``cand``."""
    return layer_loss(model, cap, layer, cand, base, Perplexity(0, 0))


@torch.no_grad()
def layer_loss(model, cap: Capture, layer: int, cand: Candidate, base: DistrConfig, objective: Objective) -> float:
    """The objective's loss vs exact, averaged over the calibration windows, with only ``layer`` on ``cand``."""
    modules = patched_modules(model)
    stack = decoder_layers(model, modules)
    cfg = base.replace(**cand.settings(), exact_layers=(), exact_first=0, exact_last=0, layer_overrides={},
                       head_overrides={})
    total = 0.0
    with patched(model, cfg, layers=[layer]):
        for w, x in enumerate(cap.windows):
            hidden = cap.layer_outputs[layer - 1][w] if layer > 0 and cap.layer_outputs else None
            with _start_at(stack, layer, hidden):
                out = objective.output(model, x)
            total += objective.loss(cap.exact[w], out)
    return total / len(cap.windows)
