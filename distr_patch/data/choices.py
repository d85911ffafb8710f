"""Multiple-choice rows (context, choices, index of the right one) from JSONL or ``datasets`` rows.

Recognised row shapes, detected from the columns unless ``--question-column``/``--choices-column``/
``--label-column`` name them:

- generic / MMLU:  question, choices: [str], answer|label: int (or a letter "A".."E")
- ARC:             question, choices: {"text": [...], "label": [...]}, answerKey: "A"|"1"...
- HellaSwag:       ctx, endings: [str], label: int or "0"...
- PIQA:            goal, sol1, sol2, label: int
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DataError, missing_column
from .source import open_dataset


@dataclass(frozen=True)
class ChoiceRow:
    context: str
    choices: tuple[str, ...]
    label: int


_QUESTION = ("question", "ctx", "goal", "context", "query", "prompt")
_CHOICES = ("choices", "endings", "options")
_LABEL = ("answer", "label", "answerKey", "gold")


def _first(columns, candidates):
    return next((c for c in candidates if c in columns), None)


def _choice_texts(value, row_no: int, column: str) -> tuple[list[str], list[str] | None]:
    """Choice texts and, for ARC-style dicts, their labels; a row whose choices are not a list (a string was
    once read as its characters) or hold an empty text is a DataError."""
    if isinstance(value, dict):
        texts, labels = list(value.get("text", ())), [str(x) for x in value.get("label", [])] or None
    elif isinstance(value, (list, tuple)):
        texts, labels = list(value), None
    else:
        raise DataError(f"--choices-column: row {row_no}: column {column!r} holds {type(value).__name__} "
                        f"{str(value)[:60]!r}, expected a list of choice texts (or ARC's {{'text': [...], "
                        "'label': [...]}})")
    texts = [str(x) for x in texts]
    if len(texts) < 2 or any(not t.strip() for t in texts):
        raise DataError(f"--choices-column: row {row_no}: choices {texts!r}: expected two or more non-empty texts")
    return texts, labels


def _label_index(raw, n: int, labels: list[str] | None, row_no: int) -> int:
    if labels is not None and str(raw) in labels:
        return labels.index(str(raw))
    s = str(raw).strip()
    if s.isdigit():
        return int(s)
    if len(s) == 1 and s.upper() in "ABCDEFGH":
        return "ABCDEFGH".index(s.upper())
    raise DataError(f"--label-column: row {row_no}: cannot read {raw!r} as a choice index")


def rows_from_records(records, columns, *, question: str | None = None, choices: str | None = None,
                      label: str | None = None) -> list[ChoiceRow]:
    """Normalise records (dicts) with the given or detected column names."""
    columns = list(columns)
    piqa = choices is None and "sol1" in columns and "sol2" in columns
    q_col = question or _first(columns, _QUESTION)
    c_col = choices or (None if piqa else _first(columns, _CHOICES))
    l_col = label or _first(columns, _LABEL)
    for option, col, given in (("--question-column", q_col, question), ("--choices-column", c_col, choices),
                               ("--label-column", l_col, label)):
        if given is not None and given not in columns:
            raise missing_column(option, given, columns)
        if col is None and not (option == "--choices-column" and piqa):
            raise DataError(f"{option}: no column of a known name in the data set ({', '.join(columns)}); "
                            f"name it with {option}")
    out = []
    for i, rec in enumerate(records):
        if piqa:
            texts, labels = [rec["sol1"], rec["sol2"]], None
        else:
            texts, labels = _choice_texts(rec[c_col], i, c_col)
        idx = _label_index(rec[l_col], len(texts), labels, i)
        if not 0 <= idx < len(texts):
            raise DataError(f"--label-column: row {i}: label {idx} is outside the {len(texts)} choices")
        out.append(ChoiceRow(str(rec[q_col]), tuple(texts), idx))
    return out


def load_choices(data: str, *, split: str = "train", name: str | None = None, limit: int | None = None,
                 question: str | None = None, choices: str | None = None, label: str | None = None,
                 seed: int = 0, option: str = "--tasks") -> list[ChoiceRow]:
    """Multiple-choice rows from ``data`` (``lee-next-sentence``, a local JSONL, or a data set name); errors name
    ``option``. ``split`` picks a hub data set's split (``--split`` is shared with ``--data``); a local file's rows
    are all of it."""
    from pathlib import Path

    from .next_sentence import NEXT_SENTENCE_TASKS, next_sentence_rows

    if data in NEXT_SENTENCE_TASKS:
        return next_sentence_rows(data, limit=limit, seed=seed)
    if Path(data).expanduser().is_file():
        split = "train"
    ds = open_dataset(data, split=split, name=name, option=option, folder_builder="text")  # a folder: by its files
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return rows_from_records(ds, ds.column_names, question=question, choices=choices, label=label)
