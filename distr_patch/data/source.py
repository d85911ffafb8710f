"""Open ``--data`` as a ``datasets.Dataset``: a packaged corpus alias, a local file or folder, or a hub name."""
from __future__ import annotations

from pathlib import Path

from .corpora import CORPUS_ALIASES, locate_corpus
from .errors import DataError

_LOCAL_BUILDERS = {".txt": "text", ".cor": "text", ".text": "text", ".json": "json", ".jsonl": "json",
                   ".csv": "csv", ".parquet": "parquet"}


def open_dataset(data: str, *, split: str = "train", name: str | None = None, folder_builder: str = "imagefolder"):
    """A ``datasets.Dataset`` for ``data``.

    Local files pick their builder from the suffix (``text`` for .txt/.cor, ``json`` for .json/.jsonl,
    ``csv``, ``parquet``); a local directory uses ``folder_builder``; anything else is a hub name.
    """
    import datasets

    if data in CORPUS_ALIASES:
        return datasets.load_dataset("text", data_files={"train": str(locate_corpus(data))}, split="train")
    path = Path(data).expanduser()
    if path.is_file():
        builder = _LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"--data {data}: unknown file type {path.suffix!r}; use one of "
                            f"{', '.join(sorted(_LOCAL_BUILDERS))}")
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
    if path.is_dir():
        return datasets.load_dataset(folder_builder, data_dir=str(path), split=split)
    if data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise DataError(f"--data {data}: no such file or directory")
    try:
        return datasets.load_dataset(data, name, split=split)
    except (FileNotFoundError, ConnectionError, ValueError) as e:
        aliases = ", ".join(CORPUS_ALIASES)
        raise DataError(f"--data {data}: not a local file or folder, a corpus alias ({aliases}), or a data set "
                        f"the hub could serve here (offline?): {str(e).splitlines()[0]}") from e
