"""load_text: the plain-file reading used where `datasets` is missing gives the rows `datasets` gives."""
import builtins
import importlib.util

import pytest

from distr_patch.data.errors import DataError
from distr_patch.data.text import load_text, plain_text_rows


def _hide_datasets(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_plain_text_file_same_as_datasets(tmp_path, monkeypatch):
    f = tmp_path / "news.txt"
    f.write_text("First line.\n\nThird line, after a blank one.\nLast line without newline", encoding="utf-8")
    with_ds = load_text(str(f)) if importlib.util.find_spec("datasets") else None
    _hide_datasets(monkeypatch)
    without = load_text(str(f))
    assert without == ("First line.\n\nThird line, after a blank one.\nLast line without newline", 4)
    if with_ds is not None:
        assert with_ds == without
    assert load_text(str(f), max_chars=15) == ("First line.\n\nThird line, after a blank one.", 3)


def test_without_datasets_other_sources_say_what_to_install(tmp_path, monkeypatch):
    _hide_datasets(monkeypatch)
    j = tmp_path / "rows.jsonl"
    j.write_text('{"text": "a"}\n')
    with pytest.raises(DataError, match="needs the `datasets` package"):
        load_text(str(j))
    f = tmp_path / "a.txt"
    f.write_text("x\n")
    with pytest.raises(DataError, match="--text-column"):
        load_text(str(f), column="body")
    assert plain_text_rows("some/hub-name") is None


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="the lee corpus comes with gensim")
def test_lee_corpus_same_without_datasets(monkeypatch):
    with_ds = load_text("lee", max_chars=20000)
    _hide_datasets(monkeypatch)
    assert load_text("lee", max_chars=20000) == with_ds


def test_eval_lm_cli_runs_without_datasets(tiny_lm_dir, text_file, tmp_path):
    """As on the GPU image: no `datasets`, no `evaluate`; a local text file still evaluates."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['datasets'] = None; sys.modules['evaluate'] = None\n"
            "from distr_patch.cli.main import main; sys.exit(main(sys.argv[1:]))")
    args = ["eval", "lm", "--model", str(tiny_lm_dir), "--data", str(text_file), "--group-sizes", "2",
            "--max-windows", "1", "--window", "64", "--stride", "32", "--output-dir", str(tmp_path), "--no-plots"]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "results:" in r.stdout


def test_without_datasets_plain_file_refuses_split_and_name(tmp_path, monkeypatch):
    """A plain text file read without `datasets` has one split and no configuration: asking for another
    is an error naming the flag, not silently the same text."""
    _hide_datasets(monkeypatch)
    f = tmp_path / "t.txt"
    f.write_text("one\ntwo\n")
    with pytest.raises(DataError, match="--split 'validation'"):
        load_text(str(f), split="validation")
    with pytest.raises(DataError, match="--data-name 'wikitext'"):
        load_text(str(f), name="wikitext")


needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="reads through `datasets`")


@needs_datasets
def test_with_datasets_a_local_file_refuses_split_and_name(tmp_path):
    """The same as without `datasets`: a local file (or a corpus) has one split and no configuration."""
    f = tmp_path / "t.txt"
    f.write_text("one\ntwo\n")
    with pytest.raises(DataError, match=r"--data .*t.txt: a local file has one split \('train'\) .*--split 'test'"):
        load_text(str(f), split="test")
    with pytest.raises(DataError, match="--data-name 'wikitext'"):
        load_text(str(f), name="wikitext")
    if importlib.util.find_spec("gensim") is not None:
        with pytest.raises(DataError, match="--data lee: the packaged corpus has one split .*--split 'nonsense'"):
            load_text("lee", split="nonsense")


@needs_datasets
@pytest.mark.parametrize("name,content,match", [
    ("empty.txt", b"", r"--data .*empty.txt: the file is empty"),
    ("rows.jsonl", b'{"text": "a"}\nnot json\n', r"--data .*rows.jsonl: cannot be read as json data: JSON parse error"),
    ("bin.txt", b"\xff\xfe\x00\x89" * 64, r"--data .*bin.txt: cannot be read as text data: .*codec can't decode"),
    ("folder", None, r"--data .*folder: the folder holds no data files"),
])
def test_empty_or_malformed_local_data(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_text(str(path))


def test_without_datasets_a_binary_text_file(tmp_path, monkeypatch):
    _hide_datasets(monkeypatch)
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00\x89" * 64)
    with pytest.raises(DataError, match=r"--data .*bin.txt: not a UTF-8 text file"):
        load_text(str(f))


@needs_datasets
def test_task_errors_name_tasks_and_a_missing_file_fails_at_once(tmp_path):
    """A task file is named as --tasks; a path that does not exist is not looked up on the hub."""
    import time

    from distr_patch.data.choices import load_choices

    t0 = time.perf_counter()
    for missing in ("nonexist.jsonl", "sub/dir/rows", "./rows"):
        with pytest.raises(DataError, match=f"--tasks {missing}: no such file or directory"):
            load_choices(missing)
    assert time.perf_counter() - t0 < 5
    f = tmp_path / "mc.jsonl"
    f.write_text('{"question": "q", "choices": ["a", "b"], "label": 1}\n')
    with pytest.raises(DataError, match=r"--tasks .*mc.jsonl: a local file has one split .*configuration 'x'"):
        load_choices(str(f), name="x")
    # --split is shared with --data (a hub data set's split): a local task file's rows are all of it
    assert [r.label for r in load_choices(str(f), split="test")] == [1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(DataError, match=r"--tasks .*bad.jsonl: cannot be read as json data"):
        load_choices(str(bad))


def test_a_folder_of_text_files(tmp_path):
    """--data DIR for text reads the folder's text files (it was read as an image folder: a column error)."""
    pytest.importorskip("datasets")
    (tmp_path / "a.txt").write_text("first line of a\nsecond line of a\n")
    (tmp_path / "b.txt").write_text("only line of b\n")
    text, rows = load_text(str(tmp_path))
    assert rows == 3 and "second line of a" in text and "only line of b" in text


def test_a_folder_is_read_by_its_files_type(tmp_path):
    """A folder of JSONL was read by the text builder: the JSON syntax itself was scored (perplexity 43 for rows
    that score 266 from the file). Now the files' type picks the builder; mixed or unknown files are named; a folder
    written by save_to_disk loads as saved."""
    pytest.importorskip("datasets")
    import datasets

    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "a.jsonl").write_text('{"text": "first row"}\n{"text": "second row"}\n')
    (rows / "README.md").write_text("# about these rows\n")  # datasets' metadata: not data
    assert load_text(str(rows)) == ("first row\nsecond row", 2)
    (rows / "b.txt").write_text("plain\n")
    with pytest.raises(DataError, match=r"the folder mixes json \(a.jsonl\), text \(b.txt\) files"):
        load_text(str(rows))
    (rows / "b.txt").unlink()
    (rows / "notes.md").write_text("x\n")
    with pytest.raises(DataError, match=r"notes.md is not a data file"):
        load_text(str(rows))
    datasets.Dataset.from_dict({"text": ["saved row"]}).save_to_disk(str(tmp_path / "saved"))
    assert load_text(str(tmp_path / "saved")) == ("saved row", 1)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t"]}),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}).save_to_disk(str(tmp_path / "dd"))
    assert load_text(str(tmp_path / "dd"), split="test") == ("held out", 1)
    with pytest.raises(DataError, match=r"--split dev: .* a saved DatasetDict with splits train, test"):
        load_text(str(tmp_path / "dd"), split="dev")


def test_plain_reading_splits_lines_as_datasets_does(tmp_path, monkeypatch):
    """datasets' text builder splits on \\n, \\r\\n and \\r only; str.splitlines also split form feeds, \\x1c-\\x1e,
    \\x85 and \\u2028, so the text read without `datasets` (the GPU image) had other rows and newlines."""
    f = tmp_path / "seps.txt"
    f.write_text("page one\x0cpage two\r\nz\x1cw\x85v\u2028u\x0bq\rlast\n\n", encoding="utf-8", newline="")
    expected = ("page one\x0cpage two\nz\x1cw\x85v\u2028u\x0bq\nlast\n", 4)
    if importlib.util.find_spec("datasets"):
        assert load_text(str(f)) == expected
    _hide_datasets(monkeypatch)
    assert load_text(str(f)) == expected


def test_a_byte_order_mark_is_not_text(tmp_path, monkeypatch):
    """A UTF-8 file saved with a BOM (Windows editors) began its text with U+FEFF, tokenised as junk bytes."""
    f = tmp_path / "bom.txt"
    f.write_text("first line\nsecond\n", encoding="utf-8-sig")
    if importlib.util.find_spec("datasets"):
        assert load_text(str(f)) == ("first line\nsecond", 2)
    _hide_datasets(monkeypatch)
    assert load_text(str(f)) == ("first line\nsecond", 2)


@needs_datasets
@pytest.mark.parametrize("content,what", [('{"text": 5}\n{"text": "b"}\n', "int"),
                                          ('{"text": ["p1", "p2"]}\n', "list"),
                                          ('{"text": {"x": 1}}\n', "dict")])
def test_a_text_column_that_holds_no_strings(tmp_path, content, what):
    """Numbers, lists or records in the text column raised a bare TypeError in the join. (datasets before 4 refuses
    a JSON column of numbers and strings when it parses it: a DataError naming --data.)"""
    f = tmp_path / "rows.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=rf"--text-column text: row 0 holds a {what}, not text|--data .*: cannot be "
                                        rf"read as json data: .*changed from number to string"):
        load_text(str(f))


@needs_datasets
def test_missing_values_are_blank_rows_in_every_format(tmp_path):
    """null in JSON, an empty CSV field, None in parquet: a blank row, as an empty line of a text file."""
    import pandas as pd

    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "three"}\n')
    (tmp_path / "a.csv").write_text('text,n\none,1\n,2\nthree,3\n')
    pd.DataFrame({"text": ["one", None, "three"]}).to_parquet(tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.parquet"):
        assert load_text(str(tmp_path / name)) == ("one\n\nthree", 3), name


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_compressed_text_files_read_as_their_text(tmp_path, monkeypatch, suffix):
    """wiki.txt.gz is text: the same rows as the uncompressed file, with and without `datasets` (a byte order mark
    dropped either way: datasets kept it in compressed files)."""
    import bz2
    import gzip
    import lzma

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[suffix]
    content = "page one\x0cpage two\r\nsecond\n\nlast line"
    f = tmp_path / f"wiki.TXT{suffix}"
    with opener(f, "wb") as out:
        out.write(("\ufeff" + content).encode("utf-8"))
    expected = ("page one\x0cpage two\nsecond\n\nlast line", 4)
    if importlib.util.find_spec("datasets"):
        assert load_text(str(f)) == expected
    _hide_datasets(monkeypatch)
    assert load_text(str(f)) == expected


def test_compressed_files_that_are_not_text_or_not_compressed(tmp_path, monkeypatch):
    from distr_patch.data.source import file_format, looks_local, open_dataset

    assert file_format("a.TXT.gz") == (".txt", ".gz") and file_format("a.jsonl") == (".jsonl", None)
    assert file_format("a") == ("", None) and file_format("a.gz") == ("", ".gz")
    assert looks_local("wiki.txt.gz") and not looks_local("wikitext")  # a missing local file is not a hub name
    fake = tmp_path / "fake.txt.gz"
    fake.write_text("not gzip at all\n")
    if importlib.util.find_spec("datasets"):
        with pytest.raises(DataError, match=r"--data .*fake.txt.gz: cannot be read as text data"):
            load_text(str(fake))
        pq = tmp_path / "rows.parquet.gz"
        pq.write_bytes(b"x")
        with pytest.raises(DataError, match=r"unknown file type '.parquet.gz'.*may be compressed: .gz, .bz2, .xz"):
            open_dataset(str(pq))
    _hide_datasets(monkeypatch)
    with pytest.raises(DataError, match=r"--data .*fake.txt.gz: cannot be read as a .gz compressed text file"):
        load_text(str(fake))
