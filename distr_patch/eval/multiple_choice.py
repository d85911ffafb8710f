"""Multiple-choice accuracy by log-likelihood: the model picks the choice it finds most likely.

Each choice is scored as the summed log-probability of its tokens after the context (as in
lm-evaluation-harness): ``accuracy`` takes the highest sum, ``accuracy_norm`` divides each sum by the
choice's length in bytes first (the length-normalised option). The choices of one row run as one
right-padded batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.choices import ChoiceRow
from .distributed import Shard
from .metrics import accuracy
from .timing import Timer, quantiles


def encode_pair(tokenizer, context: str, choice: str) -> tuple[list[int], list[int]]:
    """Token ids of the context and of the choice, split as lm-evaluation-harness splits them.

    The text scored is ``context + " " + choice`` (the choice without its leading spaces). The context's trailing
    whitespace moves to the choice's side, the whole text is encoded once, and the choice's ids are those after
    the context's: a tokenizer that merges across the boundary or marks word starts ("▁") sees the words as
    they stand in the text. An empty context is the tokenizer's BOS (else EOS) token.
    """
    stripped = context.rstrip()
    cont = context[len(stripped):] + " " + choice.lstrip()
    if not stripped:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("a row with an empty context needs a tokenizer with a BOS or EOS token")
        return [prefix], tokenizer(cont, add_special_tokens=False).input_ids
    whole = tokenizer(stripped + cont).input_ids
    ctx = tokenizer(stripped).input_ids
    return ctx, whole[len(ctx):]


def encode_row(tokenizer, row: ChoiceRow, max_length: int) -> tuple[list[list[int]], list[int]]:
    """Per choice: context + choice ids, truncated, and how many of the choice's tokens are scored.

    As in lm-evaluation-harness, the ids keep their last ``max_length + 1`` tokens; the model is fed all but the
    last (no token follows it), so its input is at most ``max_length`` long.
    """
    seqs, lens = [], []
    for choice in row.choices:
        ctx, cont = encode_pair(tokenizer, row.context, choice)
        if not cont:
            raise ValueError(f"a choice encodes to no tokens: {choice!r}")
        ids = (ctx + cont)[-(max_length + 1):]
        seqs.append(ids)
        lens.append(min(len(cont), len(ids) - 1))
    return seqs, lens


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, row: ChoiceRow, max_length: int) -> list[float]:
    """Summed log-probability of each choice's tokens given the context."""
    seqs, lens = encode_row(tokenizer, row, max_length)
    width = max(map(len, seqs)) - 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # the input: all but each sequence's last token
        ids[i, : len(s) - 1] = torch.tensor(s[:-1])
        mask[i, : len(s) - 1] = 1
    logprobs = F.log_softmax(model(ids.to(model.device), attention_mask=mask.to(model.device),
                                   use_cache=False).logits.float(), dim=-1)
    out = []
    for i, (s, n) in enumerate(zip(seqs, lens)):
        positions = torch.arange(len(s) - n - 1, len(s) - 1, device=logprobs.device)
        targets = torch.tensor(s[len(s) - n:], device=logprobs.device)
        out.append(float(logprobs[i, positions, targets].sum()))
    return out


def multiple_choice(model, tokenizer, rows: list[ChoiceRow], *, max_length: int, shard: Shard = Shard(),
                    progress: bool = True, desc: str = "choices") -> dict:
    """accuracy and accuracy_norm over ``rows``, plus the per-row latency (every process's rows)."""
    from tqdm.auto import tqdm

    if not rows:
        raise ValueError("no multiple-choice rows to evaluate")
    timer = Timer(model)
    mine = []
    for i in tqdm(shard.indices(len(rows)), desc=desc, disable=not (progress and shard.is_main), leave=False):
        mine.append((i, timer(lambda: choice_loglikelihoods(model, tokenizer, rows[i], max_length))))
    lls = shard.gather(mine)
    samples = shard.gather_all(timer.samples)
    refs = [r.label for r in rows]
    pred = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    pred_norm = [max(range(len(ll)), key=lambda j: ll[j] / max(1, len(r.choices[j].encode())))
                 for ll, r in zip(lls, rows)]
    return {
        "metrics": {"accuracy": accuracy(pred, refs), "accuracy_norm": accuracy(pred_norm, refs)},
        "num_examples": len(rows),
        "latency": {**quantiles(samples), "unit": f"forward of one row's choices{shard.at_once}"},
    }
