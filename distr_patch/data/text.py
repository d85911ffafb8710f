"""Text for perplexity: one string, the rows of a text column joined by newlines.

Local text files (.txt, .cor, .text, also compressed: .gz, .bz2, .xz) and the packaged corpora are one row per
line. Where ``datasets`` is not installed (the GPU image, say) they are read as plain files, with the same rows;
other sources need it.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

from .corpora import CORPUS_ALIASES, locate_corpus
from .errors import DataError, missing_column
from .source import check_single_split, file_format, open_dataset

_OPENERS = {None: open, ".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}

PLAIN_TEXT_SUFFIXES = (".txt", ".cor", ".text")


def load_text(data: str, *, column: str = "text", split: str = "train", name: str | None = None,
              max_chars: int | None = None) -> tuple[str, int]:
    """(text, number of rows used). Empty rows are kept as blank lines, as the source had them."""
    try:
        import datasets  # noqa: F401
        rows = None
    except ImportError:
        rows = plain_text_rows(data)
        if rows is None:
            raise DataError(f"--data {data}: reading it needs the `datasets` package (pip install datasets); "
                            f"without it only local {'/'.join(PLAIN_TEXT_SUFFIXES)} files and the corpora "
                            f"{', '.join(CORPUS_ALIASES)} load") from None
        if column != "text":
            raise missing_column("--text-column", column, ["text"])
        check_single_split("--data", data, "a plain text file", split, name)
    if rows is None:
        ds = open_dataset(data, split=split, name=name, folder_builder="text")  # a folder: its text files
        if column not in ds.column_names:
            raise missing_column("--text-column", column, ds.column_names)
        rows = ds[column]
    parts, size = [], 0
    for i, row in enumerate(rows):
        if row is not None and not isinstance(row, str):
            raise DataError(f"--text-column {column}: row {i} holds a {type(row).__name__}, not text")
        if i == 0 and row and row.startswith("\ufeff"):
            row = row[1:]  # a byte order mark datasets kept (it does in compressed files): not text
        parts.append(row or "")
        size += len(parts[-1]) + 1
        if max_chars is not None and size >= max_chars:
            break
    text = "\n".join(parts)
    if not text.strip():
        raise DataError(f"--data {data}: column {column!r} holds no text")
    return text, len(parts)


def plain_text_rows(data: str) -> list[str] | None:
    """The lines of a packaged corpus or a local text file, read without ``datasets`` (the rows its
    ``text`` builder gives: lines end at \\n, \\r\\n or \\r only, and a byte order mark is dropped); None for
    any other source."""
    compression = None
    if data in CORPUS_ALIASES:
        path = locate_corpus(data)
    else:
        path = Path(data).expanduser()
        fmt, compression = file_format(path)
        if not (path.is_file() and fmt in PLAIN_TEXT_SUFFIXES):
            return None
    try:
        with _OPENERS[compression](path, "rt", encoding="utf-8-sig") as f:  # universal newlines, as datasets
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError:
        raise DataError(f"--data {data}: not a UTF-8 text file") from None
    except (OSError, EOFError, lzma.LZMAError) as e:  # unreadable, or a damaged or mislabelled compressed file
        what = f"as a {compression} compressed text file" if compression else "(not readable)"
        raise DataError(f"--data {data}: cannot be read {what} ({type(e).__name__}: {e})") from None
