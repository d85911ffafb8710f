"""Text for perplexity: one string, the rows of a text column joined by newlines."""
from __future__ import annotations

from .errors import DataError, missing_column
from .source import open_dataset


def load_text(data: str, *, column: str = "text", split: str = "train", name: str | None = None,
              max_chars: int | None = None) -> tuple[str, int]:
    """(text, number of rows used). Empty rows are kept as blank lines, as the source had them."""
    ds = open_dataset(data, split=split, name=name)
    if column not in ds.column_names:
        raise missing_column("--text-column", column, ds.column_names)
    parts, size = [], 0
    for row in ds[column]:
        parts.append(row or "")
        size += len(parts[-1]) + 1
        if max_chars is not None and size >= max_chars:
            break
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"--data {data}: column {column!r} holds no text")
    return text, len(parts)
