"""Perplexity with a strided sliding window (the transformers perplexity guide).

Windows of ``window`` tokens start every ``stride`` tokens; in each window only the tokens not scored
by the previous one are targets, so overlapping tokens are never counted twice and each target keeps up
to ``window - stride`` tokens of earlier context. Perplexity = exp(sum of target NLLs / number of targets),
summed exactly (not as a mean of window means). The first token of the text, and with
``stride == window`` the first token of each window, has no context and is not scored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distributed import Shard
from .timing import Timer, quantiles


@dataclass(frozen=True)
class Window:
    begin: int
    end: int
    targets: int  # the last ``targets`` positions of the window are scored


def strided_windows(num_tokens: int, window: int, stride: int, max_windows: int | None = None) -> list[Window]:
    out, prev_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        out.append(Window(begin, end, end - prev_end))
        prev_end = end
        if end == num_tokens or (max_windows is not None and len(out) == max_windows):
            break
    return out


@torch.no_grad()
def window_nll(model, input_ids: torch.Tensor, w: Window) -> tuple[float, int]:
    """(sum of the NLL of the window's scored tokens, how many) from one forward pass."""
    ids = input_ids[w.begin:w.end].unsqueeze(0).to(model.device)
    logits = model(ids, use_cache=False).logits[0, :-1].float()
    labels = ids[0, 1:].clone()  # labels[j] is window position j + 1
    labels[: max(0, (w.end - w.begin) - w.targets - 1)] = -100  # positions before the targets
    nll = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    return float(nll), int((labels != -100).sum())


def perplexity(model, input_ids: torch.Tensor, *, window: int, stride: int, max_windows: int | None = None,
               shard: Shard = Shard(), progress: bool = True, desc: str = "perplexity") -> dict:
    """Strided perplexity of ``input_ids`` [T] plus the per-window forward latency (every process's windows)."""
    from tqdm.auto import tqdm

    windows = strided_windows(input_ids.numel(), window, stride, max_windows)
    timer = Timer(model)
    mine = []
    for i in tqdm(shard.indices(len(windows)), desc=desc, disable=not (progress and shard.is_main), leave=False):
        mine.append((i, timer(lambda: window_nll(model, input_ids, windows[i]))))
    results = shard.gather(mine)
    samples = shard.gather_all(timer.samples)  # every window's, whichever process ran it (some may have run none)
    nll = sum(r[0] for r in results)
    count = sum(r[1] for r in results)
    scored_len = sum(w.end - w.begin for w in windows)
    return {
        "metrics": {"perplexity": math.exp(nll / count), "nll_per_token": nll / count},
        "num_tokens": count,
        "num_windows": len(windows),
        "latency": {**quantiles(samples), "unit": f"forward of one window (<= {window} tokens){shard.at_once}",
                    "tokens_per_s": 1e3 * scored_len / len(windows) / quantiles(samples)["p50_ms"]},
    }
