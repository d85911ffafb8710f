"""Open ``--data`` as a ``datasets.Dataset``: a packaged corpus alias, a local file or folder, or a hub name."""
from __future__ import annotations

from pathlib import Path

from ..hub import cache_only, hub_offline
from .corpora import CORPUS_ALIASES, locate_corpus
from .errors import DataError

_LOCAL_BUILDERS = {".txt": "text", ".cor": "text", ".text": "text", ".json": "json", ".jsonl": "json",
                   ".csv": "csv", ".parquet": "parquet"}
# Compressed local files: the suffix before the compression's names the format ("wiki.txt.gz" is text). datasets
# decompresses them itself; the plain reading without it (text.py) opens them with the standard library.
COMPRESSIONS = (".gz", ".bz2", ".xz")


def file_format(path) -> tuple[str, str | None]:
    """(the format's suffix, the compression's suffix or None) of a file name, lower case: "a.TXT.gz" ->
    (".txt", ".gz"), "a.jsonl" -> (".jsonl", None), "a" -> ("", None)."""
    suffixes = [x.lower() for x in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) > 1 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def looks_local(data: str) -> bool:
    """``data`` reads as a path, not a hub name: it starts with ., / or ~, has two / or more, or ends with a
    local file type (.txt, .jsonl, .txt.gz, ...). Such a path that does not exist fails at once, without hub
    retries."""
    return (data.startswith((".", "/", "~")) or data.count("/") > 1 or "\\" in data
            or file_format(data)[0] in _LOCAL_BUILDERS)


def _first_line(e: BaseException, cause: bool = True) -> str:
    """The first line of ``e``'s message, or of its cause's (datasets wraps a parse error in a generic one)."""
    e = (e.__cause__ or e) if cause else e
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def check_single_split(option: str, data: str, what: str, split: str, name: str | None) -> None:
    """A local file or a corpus is one split, 'train', with no configuration: asking for another is an error,
    not silently the same rows."""
    if split == "train" and name is None:
        return
    got = [f"--split {split!r}"] if split != "train" else []
    if name is not None:
        got.append(f"--data-name {name!r}" if option == "--data" else f"configuration {name!r}")
    raise DataError(f"{option} {data}: {what} has one split ('train') and no configuration; got {' '.join(got)}")


def _load_local(option: str, data: str, builder: str, split: str, **where):
    """``datasets.load_dataset`` of a local source; what it cannot read is a DataError naming ``option``."""
    import logging

    import datasets

    log = logging.getLogger("datasets")  # it logs a parse error before raising it: the DataError says it in one line
    level = log.level
    log.setLevel(logging.CRITICAL)
    if builder == "text":  # a UTF-8 file saved with a byte order mark: the mark is not text
        where = {**where, "encoding": "utf-8-sig"}
    try:
        return datasets.load_dataset(builder, split=split, **where)
    except (datasets.exceptions.DatasetsError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError) and "data_dir" in where:
            raise DataError(f"{option} {data}: the folder holds no data files") from e
        if isinstance(e, ValueError) and "split" in str(e).lower():
            raise DataError(f"--split {split}: {option} {data}: {_first_line(e)}") from e
        raise DataError(f"{option} {data}: cannot be read as {builder} data: {_first_line(e)}") from e
    finally:
        log.setLevel(level)


_NOT_DATA = ("README.md", "config.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json")


def _folder_builder(option: str, data: str, path: Path) -> str:
    """The builder of a folder's data files (text, json, csv or parquet, by suffix; hidden files and datasets'
    metadata files aside); a file of another type, or files of several, is a DataError."""
    kinds: dict[str, list[Path]] = {}
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if not f.is_file() or f.name in _NOT_DATA or any(part.startswith((".", "__")) for part in rel.parts):
            continue
        fmt, compression = file_format(f)
        builder = _LOCAL_BUILDERS.get(fmt)
        if builder is None or (compression and builder == "parquet"):
            raise DataError(f"{option} {data}: {rel} is not a data file; a folder holds files of one of the types "
                            f"{', '.join(sorted(_LOCAL_BUILDERS))} (all but .parquet may be compressed)")
        kinds.setdefault(builder, []).append(rel)
    if len(kinds) > 1:
        raise DataError(f"{option} {data}: the folder mixes " + ", ".join(f"{b} ({kinds[b][0]})" for b in sorted(kinds))
                        + " files; give a folder of one type (or one file)")
    return next(iter(kinds), "text")


def _saved_to_disk(option: str, data: str, path: Path, split: str):
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (its ``split``), else None."""
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        return None
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"--split {split}: {option} {data}: a saved DatasetDict with splits {', '.join(ds)}")
        return ds[split]
    check_single_split(option, data, "a saved Dataset", split, None)
    return ds


def open_dataset(data: str, *, split: str = "train", name: str | None = None, folder_builder: str = "imagefolder",
                 option: str = "--data"):
    """A ``datasets.Dataset`` for ``data``; errors name ``option``, the argument that gave it.

    Local files pick their builder from the suffix (``text`` for .txt/.cor, ``json`` for .json/.jsonl,
    ``csv``, ``parquet``), before a compression's (.gz, .bz2, .xz: "wiki.txt.gz" is text); a local directory uses
    ``folder_builder``; anything else is a hub name.
    """
    import datasets

    if data in CORPUS_ALIASES:
        check_single_split(option, data, "the packaged corpus", split, name)
        path = locate_corpus(data, given=f"{option} {data}")
        return _load_local(option, data, "text", "train", data_files={"train": str(path)})
    path = Path(data).expanduser()
    if path.is_file():
        fmt, compression = file_format(path)
        builder = _LOCAL_BUILDERS.get(fmt)
        if builder is None or (compression and builder == "parquet"):
            kind = f"{fmt}{compression}" if compression else (fmt or "(no suffix)")
            raise DataError(f"{option} {data}: unknown file type {kind!r}; use one of "
                            f"{', '.join(sorted(_LOCAL_BUILDERS))} (all but .parquet may be compressed: "
                            f"{', '.join(COMPRESSIONS)})" + ("; images come as a folder (a subfolder per class) or a "
                                                             "file listing them" if folder_builder == "imagefolder"
                                                             else ""))
        check_single_split(option, data, "a local file", split, name)
        if path.stat().st_size == 0:
            raise DataError(f"{option} {data}: the file is empty")
        return _load_local(option, data, builder, "train", data_files={"train": str(path)})
    if path.is_dir():
        if name is not None:
            raise DataError(f"{option} {data}: a local folder has no configuration; got "
                            + (f"--data-name {name!r}" if option == "--data" else f"configuration {name!r}"))
        saved = _saved_to_disk(option, data, path, split)
        if saved is not None:
            return saved
        if folder_builder == "text":  # the folder's files say how to read them (a JSONL's syntax is not text)
            folder_builder = _folder_builder(option, data, path)
        return _load_local(option, data, folder_builder, split, data_dir=str(path))
    if looks_local(data):
        raise DataError(f"{option} {data}: no such file or directory")
    try:
        with cache_only():  # the hub unreachable: datasets' cache at once, not after its retries
            return datasets.load_dataset(data, name, split=split)
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ConnectionError, ValueError) as e:
        aliases = f", a corpus alias ({', '.join(CORPUS_ALIASES)})" if option == "--data" else ""
        where = ("a data set in the local cache (the hub is not reachable from here: HF_HUB_OFFLINE, or no "
                 "connection to its host)" if hub_offline() else "a data set the hub could serve here (offline?)")
        config = "" if name is None else (f" --data-name {name}" if option == "--data" else f":{name}")
        raise DataError(f"{option} {data}{config}: not a local file or folder{aliases}, or {where}: "
                        f"{_first_line(e, cause=False)}") from e
