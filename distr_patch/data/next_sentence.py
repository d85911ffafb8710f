"""A multiple-choice task built offline from real prose: pick the sentence that follows the context.

``lee-next-sentence``: for an article of the Lee corpus, the context is its first sentences and the
choices are its true next sentence and sentences at the same position in three other articles,
shuffled with a fixed seed. Its accuracy is a real (if easy) language-model task.
"""
from __future__ import annotations

import random
import re

from .choices import ChoiceRow
from .corpora import locate_corpus

NEXT_SENTENCE_TASKS = {"lee-next-sentence": "lee"}
CONTEXT_SENTENCES = 3
NUM_CHOICES = 4
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def next_sentence_rows(task: str, *, limit: int | None = None, seed: int = 0) -> list[ChoiceRow]:
    import datasets

    path = locate_corpus(NEXT_SENTENCE_TASKS[task], given=f"--tasks {task}")
    articles = [split_sentences(t) for t in datasets.load_dataset("text", data_files={"train": str(path)},
                                                                   split="train")["text"]]
    usable = [a for a in articles if len(a) > CONTEXT_SENTENCES]
    rng = random.Random(seed)
    rows = []
    for i, art in enumerate(usable):
        others = [a[CONTEXT_SENTENCES] for j, a in enumerate(usable) if j != i]
        choices = [art[CONTEXT_SENTENCES], *rng.sample(others, NUM_CHOICES - 1)]
        order = list(range(NUM_CHOICES))
        rng.shuffle(order)
        rows.append(ChoiceRow(" ".join(art[:CONTEXT_SENTENCES]), tuple(choices[k] for k in order), order.index(0)))
        if limit is not None and len(rows) >= limit:
            break
    return rows
