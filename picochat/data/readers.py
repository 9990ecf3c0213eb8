"""Streamed corpus readers: turn files on disk into an iterator of document strings.

Supported inputs (gzip variants end in `.gz`):
- `.txt` / `.txt.gz`: documents are separated by blank (whitespace-only) lines, or by a line
  that is exactly `<|endoftext|>` (the TinyStories convention). A document keeps its inner line
  endings ("\\n" or "\\r\\n"); the line ending after its last line is dropped.
- `.jsonl` / `.jsonl.gz` / `.json` / `.json.gz`: one JSON object per line, text in `text_field`;
  blank lines are skipped. A `.json` file whose first character is `[` is read as one JSON array
  of objects instead (loaded whole, so keep such files small).
- `.parquet`: column `text_field`, read one record batch at a time (needs pyarrow).
- a directory: every `.txt`, `.jsonl`, `.parquet` (and .gz) file inside it, recursively, in
  sorted path order. Hidden files, other extensions and plain `.json` files are skipped, since
  folders often hold config.json / tokenizer.json / meta.json; name a .json file directly.

Everything is streamed line by line or batch by batch, so corpora larger than memory are fine.
Problems raise `CorpusError` naming the file, the 1-based line (or row), and what was expected.
Empty documents (empty string or only whitespace) are skipped.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

TXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
# Directory scans skip plain .json: folders often hold config.json / tokenizer.json / meta.json.
DIRECTORY_SUFFIXES = TXT_SUFFIXES + (".jsonl", ".jsonl.gz") + PARQUET_SUFFIXES
TXT_DOC_SEPARATOR = "<|endoftext|>"


class CorpusError(ValueError):
    """A corpus file is missing, unreadable, or not in the expected format."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None,
                 unit: str = "line"):
        self.path = Path(path)
        self.line = line
        where = f"{path}" if line is None else f"{path}, {unit} {line}"
        super().__init__(f"{where}: {message}")


def _suffix_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(TXT_SUFFIXES):
        return "txt"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def files_in_directory(directory: Path, suffixes: tuple[str, ...],
                       exclude: Iterable[Path] = ()) -> list[Path]:
    """Files under `directory` (recursively) whose names end with one of `suffixes`, skipping
    hidden files and folders and anything inside an `exclude` folder, in a stable order."""
    excluded = [Path(e).resolve() for e in exclude]
    return sorted(
        (p for p in directory.rglob("*")
         if p.is_file() and p.name.lower().endswith(suffixes)
         and not any(part.startswith(".") for part in p.relative_to(directory).parts)
         and not any(p.resolve().is_relative_to(e) for e in excluded)),
        key=lambda p: p.relative_to(directory).as_posix(),
    )


def find_corpus_files(paths: str | os.PathLike | Iterable[str | os.PathLike],
                      exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Expand paths (files or directories) into the list of files that will be read, in order.

    Files inside a directory listed in `exclude` are skipped when scanning directories (used to
    keep an output folder that sits inside the corpus folder out of the corpus).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    exclude = list(exclude)
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise CorpusError(path, "no such file or directory")
        if path.is_dir():
            found = files_in_directory(path, DIRECTORY_SUFFIXES, exclude)
            if not found:
                raise CorpusError(
                    path, f"directory has no corpus files (expected {', '.join(DIRECTORY_SUFFIXES)})"
                )
            files.extend(found)
        elif _suffix_kind(path) is None:
            raise CorpusError(
                path, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
        else:
            files.append(path)
    return files


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line with its line ending) from a text/gzip file."""
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    # utf-8-sig on the first line drops a byte-order mark if there is one.
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(
                        path, f"invalid UTF-8 at byte {e.start} of the line; the corpus must be "
                        "UTF-8 text", lineno) from None
                yield lineno, line
    except (OSError, EOFError) as e:  # unreadable file, corrupt or truncated gzip
        raise CorpusError(path, f"cannot read file: {e}") from e


def iter_json_lines(path: Path, expected: str = "") -> Iterator[tuple[int, object]]:
    """Yield (1-based line number, parsed value) for every non-blank line of a JSONL file (text or
    gzip). Invalid JSON raises CorpusError naming the file, the line and, when given, the
    `expected` shape of a line (e.g. '{"text": "..."}')."""
    hint = f"; expected one object per line like {expected}" if expected else ""
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(path, f"invalid JSON ({e.msg} at column {e.colno}){hint}", lineno) from None


def _iter_txt(path: Path) -> Iterator[str]:
    lines: list[str] = []
    for _, line in _iter_lines(path):
        stripped = line.strip()
        if stripped and stripped != TXT_DOC_SEPARATOR:
            lines.append(line)
        elif lines:
            yield _join_doc(lines)
            lines = []
    if lines:
        yield _join_doc(lines)


def _join_doc(lines: list[str]) -> str:
    text = "".join(lines)
    return text.removesuffix("\n").removesuffix("\r")


def _text_from_record(path: Path, record, text_field: str, line: int, unit: str = "line") -> str:
    if not isinstance(record, dict):
        raise CorpusError(
            path, f"expected a JSON object like {{\"{text_field}\": \"...\"}}, "
            f"got {type(record).__name__}", line, unit)
    if text_field not in record:
        keys = ", ".join(repr(k) for k in list(record)[:10]) or "none"
        raise CorpusError(
            path, f"missing field {text_field!r} (fields present: {keys}); "
            "pass text_field=... to read another field", line, unit)
    text = record[text_field]
    if not isinstance(text, str):
        raise CorpusError(
            path, f"field {text_field!r} must be a string, got {type(text).__name__}", line, unit)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON allows "\ud800" escapes that are not valid Unicode
        raise CorpusError(path, f"field {text_field!r} contains an unpaired surrogate escape; "
                          "the text must be valid Unicode", line, unit) from None
    return text


def _first_char(path: Path) -> str:
    try:
        with _open_binary(path) as f:
            head = f.read(4096)
    except (OSError, EOFError) as e:
        raise CorpusError(path, f"cannot read file: {e}") from e
    return head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")[:1]


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    if _first_char(path) == "[":  # a .json file holding one array of objects
        try:
            with _open_binary(path) as f:
                records = json.loads(f.read().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorpusError(path, f"invalid JSON array: {e}") from None
        except (OSError, EOFError) as e:
            raise CorpusError(path, f"cannot read file: {e}") from e
        for i, record in enumerate(records, start=1):
            yield _text_from_record(path, record, text_field, i, unit="array element")
        return
    for lineno, record in iter_json_lines(path, f'{{"{text_field}": "..."}}'):
        yield _text_from_record(path, record, text_field, lineno)


def _iter_parquet(path: Path, text_field: str, batch_rows: int = 4096) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CorpusError(
            path, "reading parquet needs pyarrow: pip install 'picochat[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(path, f"not a readable parquet file: {e}") from e
    names = pf.schema_arrow.names
    if text_field not in names:
        raise CorpusError(
            path, f"no column {text_field!r} (columns: {', '.join(names)}); "
            "pass text_field=... to read another column")
    col_type = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise CorpusError(path, f"column {text_field!r} must hold strings, has type {col_type}")
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            if text is None:
                raise CorpusError(path, f"column {text_field!r} is null", row, unit="row")
            yield text


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    kind = _suffix_kind(path)
    if kind == "txt":
        docs = _iter_txt(path)
    elif kind == "jsonl":
        docs = _iter_jsonl(path, text_field)
    elif kind == "parquet":
        docs = _iter_parquet(path, text_field)
    else:
        raise CorpusError(
            path, f"unsupported file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    for doc in docs:
        if doc.strip():
            yield doc


def iter_documents(path: str | os.PathLike, text_field: str = "text",
                   exclude: Iterable[str | os.PathLike] = ()) -> Iterator[str]:
    """Stream the documents of one file or directory (see the module docstring for formats).

    Raises CorpusError if the path is missing, unsupported, malformed, or holds no documents.
    Inside a directory, an empty file is allowed as long as the directory as a whole is not.
    """
    n_docs = 0
    for file in find_corpus_files(path, exclude):
        for doc in _iter_file(file, text_field):
            n_docs += 1
            yield doc
    if n_docs == 0:
        raise CorpusError(path, "no documents found (the file or directory is empty)")


def iter_corpus(paths: str | os.PathLike | Iterable[str | os.PathLike],
                text_field: str = "text",
                exclude: Iterable[str | os.PathLike] = ()) -> Iterator[str]:
    """Stream the documents of several files/directories, in the order given."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise CorpusError("<no paths>", "no corpus paths given")
    for path in paths:
        yield from iter_documents(path, text_field, exclude)
