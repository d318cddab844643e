"""Reading labelled records from files and SQL databases.

Importing takes two steps:

* :func:`read_table` loads a whole source (CSV, TSV, JSON, JSONL, Parquet, Arrow/Feather,
  or the result of an SQL query) into a :class:`pandas.DataFrame`;
* :func:`extract_records` picks the text and label columns, checks every row and returns
  the texts with their label paths (coarse to fine) as an :class:`ImportResult`.

Every problem with the user's input raises :class:`~ktt_core.errors.KttError` with a
one-line message that names the file (or SQL source), the 1-based data row (header
excluded) and the column where it applies.
"""
from __future__ import annotations

import codecs
import decimal
import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ktt_core.errors import KttError
from ktt_core.interrupts import keep_interrupts

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet", "arrow", "sql")

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv", ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}
_FILE_FORMATS = "csv, tsv, json, jsonl, parquet, arrow"
_SEQUENCES = (list, tuple, np.ndarray)
_NUMBERS = (numbers.Real, decimal.Decimal)  # numpy's too; bool is refused before
_MAX_LISTED_COLUMNS = 50

#: Texts longer than this are kept but counted in the import report: models read only
#: their first ``max_length`` tokens, and such a cell often means a broken quote in a CSV.
LONG_TEXT_CHARS = 100_000

# Reason categories used as keys of ImportResult.dropped.
EMPTY_TEXT = "empty text"
MISSING_LABEL = "missing label"
EMPTY_LEVEL = "empty label level"
MALFORMED_LABEL = "malformed label"
INVALID_UNICODE = "invalid Unicode"
NOT_TEXT = "value that is not text"

# Unpaired UTF-16 surrogates: JSON's "\ud800" escapes decode to them, and no file (UTF-8
# Parquet included) can store them.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ImportResult:
    """Texts and label paths extracted from one source."""

    texts: list[str]                 # kept records, in source order
    paths: list[tuple[str, ...]]     # label path per kept record, coarse to fine
    source_rows: list[int]           # 1-based source row number of each kept record
    source: str                      # a human name of the source: file path or "sql:<url>"
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count, only with drop_invalid=True
    total_rows: int = 0              # rows read from the source
    long_texts: int = 0              # kept texts over LONG_TEXT_CHARS characters
    longest_text: tuple[int, int] = (0, 0)  # (source row, characters) of the longest kept text


# -- reading -----------------------------------------------------------------------------

def detect_format(path) -> str:
    """Return the format name for ``path`` from its extension (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        what = f"'{suffix}'" if suffix else "(no file extension)"
        raise KttError(f"{path}: unknown format {what}; use one of {_FILE_FORMATS} or pass --format")
    return fmt


def read_table(path=None, *, fmt=None, encoding="utf-8", sql_url=None, query=None) -> pd.DataFrame:
    """Read a whole file, or the result of ``query`` on ``sql_url``, into a DataFrame.

    ``fmt`` overrides detection from the file extension. CSV/TSV cells are read as strings,
    with empty cells as NaN. ``encoding`` applies to CSV, TSV, JSON and JSONL. A Ctrl-C
    while reading raises KeyboardInterrupt, never a read error (see ktt_core.interrupts).
    """
    with keep_interrupts():
        return _read_table(path, fmt=fmt, encoding=encoding, sql_url=sql_url, query=query)


def _read_table(path, *, fmt, encoding, sql_url, query) -> pd.DataFrame:
    if sql_url is not None or query is not None or fmt == "sql":
        if path is not None:
            if sql_url is None and query is None:
                raise KttError(f"{path}: --format sql reads from --sql-url with --query, not from a file")
            raise KttError(f"{path}: give either a file or --sql-url with --query, not both")
        return _read_sql(sql_url, query)
    if path is None:
        raise KttError("no input: give a file, or --sql-url with --query")
    if fmt is None:
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise KttError(f"--format {fmt!r}: unknown format; use one of {_FILE_FORMATS}")

    p = Path(path)
    if not p.exists():
        raise KttError(f"{path}: no such file")
    if p.is_dir():
        raise KttError(f"{path}: is a directory, not a file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise KttError(f"{path}: cannot read: {_one_line(exc)}") from exc
    if size == 0:
        raise KttError(f"{path}: the file is empty")

    if fmt in ("csv", "tsv", "json", "jsonl"):
        encoding = _text_encoding(encoding)
    if fmt == "csv":
        df = _read_delimited(path, ",", encoding, "CSV")
    elif fmt == "tsv":
        df = _read_delimited(path, "\t", encoding, "TSV")
    elif fmt == "json":
        df = _read_json(path, encoding)
    elif fmt == "jsonl":
        df = _read_jsonl(path, encoding)
    elif fmt == "parquet":
        df = _read_parquet(path)
    else:
        df = _read_arrow(path)
    if len(df) == 0:
        raise KttError(f"{path}: the file has no rows")
    return df


def _text_encoding(encoding: str) -> str:
    """Validate ``encoding``; UTF-8 is read as utf-8-sig so a leading BOM is ignored."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise KttError(f"--encoding {encoding!r}: unknown encoding") from None
    return "utf-8-sig" if name == "utf-8" else encoding


def _read_delimited(path, sep: str, encoding: str, kind: str) -> pd.DataFrame:
    # Only truly empty cells become NaN: pandas' default NA strings ("NA", "null", "None",
    # "nan", ...) are plausible product names and category labels.
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                           encoding=encoding)
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise KttError(f"{path}: the file is empty") from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise KttError(f"{path}: cannot read as {kind}: {_one_line(exc)}") from exc


def _read_text(path, encoding: str) -> str:
    try:
        with open(path, encoding=encoding) as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from exc
    except OSError as exc:
        raise KttError(f"{path}: cannot read: {_one_line(exc)}") from exc


def _read_json(path, encoding: str) -> pd.DataFrame:
    """A list of record objects, ``{"columns": [...], "data": [[...], ...]}`` or
    column-oriented ``{"col": [...]}`` / ``{"col": {"row": value}}``."""
    text = _read_text(path, encoding)
    if not text.strip():
        raise KttError(f"{path}: the file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KttError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    except (RecursionError, ValueError) as exc:  # nested too deeply; an integer of thousands of digits
        raise KttError(f"{path}: cannot read the JSON: {_json_limit(exc)}") from None
    if isinstance(data, list):
        for i, item in enumerate(data, 1):
            if not isinstance(item, dict):
                raise KttError(f"{path}: item {i} of the JSON list is {_json_kind(item)}, not an object")
        return pd.DataFrame(data)
    if isinstance(data, dict):
        try:
            if set(data) >= {"columns", "data"} and set(data) <= {"columns", "data", "index"}:
                return pd.DataFrame(data["data"], columns=data["columns"])
            return pd.DataFrame(data)
        except (ValueError, TypeError) as exc:
            raise KttError(f"{path}: cannot read the JSON object as a table: {_one_line(exc)}") from exc
    raise KttError(f"{path}: expected a JSON list of records or an object of columns, "
                   f"got {_json_kind(data)}")


def iter_jsonl(path, encoding: str = "utf-8-sig") -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line of a JSONL file, read lazily."""
    try:
        with open(path, encoding=encoding) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise KttError(f"{path}: line {lineno}: malformed JSON at column {exc.colno}: {exc.msg}") from exc
                except (RecursionError, ValueError) as exc:
                    raise KttError(f"{path}: line {lineno}: cannot read the JSON: {_json_limit(exc)}") from None
                if not isinstance(item, dict):
                    raise KttError(f"{path}: line {lineno}: expected a JSON object, got {_json_kind(item)}")
                yield lineno, item
    except UnicodeDecodeError as exc:
        raise _decode_error(path, encoding, exc) from exc
    except OSError as exc:
        raise KttError(f"{path}: cannot read: {_one_line(exc)}") from exc


def _read_jsonl(path, encoding: str) -> pd.DataFrame:
    records = [item for _, item in iter_jsonl(path, encoding)]
    if not records:
        raise KttError(f"{path}: the file is empty")
    return pd.DataFrame(records)


def _read_parquet(path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise KttError(f"{path}: cannot read as Parquet: {_one_line(exc)}") from exc


def _read_arrow(path) -> pd.DataFrame:
    """An Arrow IPC file (Feather v1 or v2), or an Arrow IPC stream."""
    import pyarrow as pa
    import pyarrow.feather as feather

    try:
        return feather.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = exc
    try:
        with pa.ipc.open_stream(path) as reader:
            return reader.read_all().to_pandas()
    except (pa.ArrowException, OSError, ValueError):
        raise KttError(f"{path}: cannot read as Arrow/Feather: {_one_line(first)}") from first


def sql_source_name(sql_url: str) -> str:
    """How a SQL source is named in messages: its URL with any password hidden."""
    from ktt_core.data.sql import source_name

    return source_name(sql_url)


def _read_sql(sql_url, query) -> pd.DataFrame:
    # Read-only by construction (ktt_core.data.sql): one query, never a write.
    from ktt_core.data.sql import read_query

    return read_query(sql_url, query)


def _decode_error(path, encoding: str, exc: UnicodeDecodeError) -> KttError:
    """A KttError naming the byte offset and line of the first undecodable byte."""
    where = ""
    location = _find_undecodable(path, encoding)
    if location is not None:
        where = f" at byte {location[0]} (line {location[1]})"
    shown = "utf-8" if encoding == "utf-8-sig" else encoding
    guess = _bom_encoding(path)
    if guess and codecs.lookup(guess).name != codecs.lookup(encoding).name:
        hint = f"the file starts with a {guess.upper()} byte-order mark: pass --encoding {guess}"
    else:
        hint = "pass --encoding with the file's encoding (e.g. --encoding cp1252)"
    return KttError(f"{path}: not valid {shown} text{where}: {exc.reason}; {hint}")


def _bom_encoding(path) -> str | None:
    """The encoding a byte-order mark at the start of ``path`` announces, if any."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return None
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _find_undecodable(path, encoding: str, chunk_size: int = 1 << 20) -> tuple[int, int] | None:
    """(byte offset, 1-based line) of the first byte ``encoding`` cannot decode, if any.

    The reader's own error position is relative to an internal buffer, so the file is
    scanned again in chunks to report a position the user can find.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    fed = newlines = 0
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(chunk_size)
                pending = decoder.getstate()[0]
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as exc:
                    data = pending + chunk
                    offset = fed - len(pending) + exc.start
                    line = newlines - pending.count(b"\n") + data[:exc.start].count(b"\n") + 1
                    return offset, line
                if not chunk:
                    return None
                fed += len(chunk)
                newlines += chunk.count(b"\n")
    except OSError:
        return None


def _json_limit(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return _one_line(exc).split(";")[0]  # "Exceeds the limit (4300 digits) for integer string conversion"


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _one_line(value) -> str:
    """``str(value)`` with all whitespace runs collapsed, so a message stays on one line."""
    text = " ".join(str(value).split())
    if not text and isinstance(value, BaseException):
        return type(value).__name__
    return text


# -- extracting --------------------------------------------------------------------------

class _Invalid(Exception):
    """A row that cannot be imported: ``category`` keys the drop counts."""

    def __init__(self, category: str, reason: str, column=None):
        super().__init__(reason)
        self.category, self.reason, self.column = category, reason, column


def extract_records(df, *, text_column: str, label_columns: list[str], sep: str | None = None,
                    depth: int | None = None, drop_invalid: bool = False, source: str = "input") -> ImportResult:
    """Take texts and label paths from ``df``, checking every row.

    With one label column a cell may hold a list (each element one level), a JSON list
    string (any string starting with ``[``), a string split on ``sep``, or a single label.
    With several label columns (one per level, coarse to fine) trailing empty cells make
    the path shorter. Paths longer than ``depth`` are truncated. Invalid rows raise
    KttError, or with ``drop_invalid`` are skipped and counted in ``dropped``.
    """
    label_columns = list(label_columns)
    if depth is not None and depth < 1:
        raise KttError(f"{source}: --depth must be at least 1, got {depth}")
    if not label_columns:
        raise KttError(f"{source}: no label column given")
    if len(set(label_columns)) != len(label_columns):
        raise KttError(f"{source}: a label column is given more than once: {', '.join(map(str, label_columns))}")
    if text_column in label_columns:
        raise KttError(f"{source}: column '{text_column}' is given as both the text and a label column")
    if sep is not None and sep == "":
        raise KttError(f"{source}: --sep must not be empty")
    if sep is not None and len(label_columns) > 1:
        raise KttError(f"{source}: --sep applies to a single label column, "
                       f"not to {len(label_columns)} columns (one per level)")

    texts_in = _column(df, text_column, source).tolist()
    labels_in = [_column(df, col, source).tolist() for col in label_columns]
    single = len(label_columns) == 1

    texts: list[str] = []
    paths: list[tuple[str, ...]] = []
    rows: list[int] = []
    dropped: dict[str, int] = {}
    long_texts, longest = 0, (0, 0)
    for row, (text, cells) in enumerate(zip(texts_in, zip(*labels_in)), 1):
        try:
            text = _text(text, text_column)
            if single:
                path = _levels_from_value(cells[0], sep, label_columns[0])
            else:
                path = _levels_from_cells(cells, label_columns)
        except _Invalid as bad:
            if not drop_invalid:
                raise KttError(f"{source}: row {row}, column '{bad.column}': {bad.reason}") from None
            dropped[bad.category] = dropped.get(bad.category, 0) + 1
            continue
        if len(text) > LONG_TEXT_CHARS:
            long_texts += 1
        if len(text) > longest[1]:
            longest = (row, len(text))
        texts.append(text)
        paths.append(path)
        rows.append(row)

    if depth is not None and paths:
        deepest = max(map(len, paths))
        if depth > deepest:
            raise KttError(f"{source}: --depth {depth} is deeper than the data "
                           f"(deepest label path has {deepest} levels)")
        paths = [p[:depth] if len(p) > depth else p for p in paths]
    return ImportResult(texts=texts, paths=paths, source_rows=rows, source=source,
                        dropped=dropped, total_rows=len(texts_in), long_texts=long_texts,
                        longest_text=longest)


def _column(df: pd.DataFrame, name, source: str) -> pd.Series:
    if name not in df.columns:
        names = [str(c) for c in df.columns]
        listed = ", ".join(names[:_MAX_LISTED_COLUMNS])
        if len(names) > _MAX_LISTED_COLUMNS:
            listed += f", ... ({len(names) - _MAX_LISTED_COLUMNS} more)"
        hint = ""
        if len(names) == 1 and any(ch in names[0] for ch in ";|\t,"):
            hint = " (only one column was found: is the separator or --format right?)"
        raise KttError(f"{source}: no column '{name}'; columns are: {listed}{hint}")
    column = df[name]
    if isinstance(column, pd.DataFrame):
        raise KttError(f"{source}: column '{name}' appears {column.shape[1]} times")
    return column


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float):  # includes np.float64
        return value != value
    if isinstance(value, np.floating):
        return bool(np.isnan(value))
    return False


def _kind_of(value) -> str:
    """What a cell holds, for messages: "a JSON object", "a boolean (True)", "bytes", ..."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, _SEQUENCES):
        return "a list"
    if isinstance(value, (bool, np.bool_)):
        return f"a boolean ({bool(value)})"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, _NUMBERS):
        return f"a number ({value})"
    return f"a {type(value).__name__} value"


def _text(value, column) -> str:
    if _is_missing(value):
        raise _Invalid(EMPTY_TEXT, "empty text", column)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, *_NUMBERS)):
        # A JSON object, a list, a boolean or bytes in the text column (from JSON, Parquet,
        # Arrow or SQL) is a wrong column or a broken export; its Python printout is not the
        # text. A number is kept as its decimal text, as a CSV file reads it.
        raise _Invalid(NOT_TEXT, f"text is {_kind_of(value)}, not text", column)
    text = (value if isinstance(value, str) else str(value)).strip()
    if not text:
        raise _Invalid(EMPTY_TEXT, "empty text", column)
    _check_unicode(text, column, "text")
    return text


def _check_unicode(value: str, column, what: str) -> None:
    bad = _SURROGATE.search(value)
    if bad:
        raise _Invalid(INVALID_UNICODE, f"{what} holds an unpaired surrogate {bad.group()!r} at character "
                                        f"{bad.start() + 1}, which is not valid Unicode", column)


def _label_str(value, column=None, level: int = 1) -> str:
    """One label as text; integral floats lose their ``.0``.

    Integer ids read from a column with gaps come back as floats (3.0), and must name the
    same class as the "3" read from a CSV file. Strings and numbers are labels; a boolean,
    bytes or any other value is refused (its Python printout is not a label).
    """
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, _NUMBERS):
        raise _Invalid(NOT_TEXT, f"label at level {level} is {_kind_of(value)}, not a label", column)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _levels_from_value(value, sep, column) -> tuple[str, ...]:
    """The label path held in a single cell."""
    if _is_missing(value):
        raise _Invalid(MISSING_LABEL, "missing label", column)
    if isinstance(value, _SEQUENCES):
        items = list(value)
    elif isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise _Invalid(MISSING_LABEL, "missing label", column)
        if stripped.startswith("["):
            items = _json_list(stripped, column)
        elif sep is not None:
            items = value.split(sep)
            _check_separator_edges(items, sep, column)
        else:
            items = [stripped]
    elif isinstance(value, dict):
        raise _Invalid(MALFORMED_LABEL, "malformed label: an object, not a label or a list of labels", column)
    else:
        items = [value]
    if not items:
        raise _Invalid(MISSING_LABEL, "missing label", column)
    path = []
    for level, item in enumerate(items, 1):
        if isinstance(item, (*_SEQUENCES, dict)):
            raise _Invalid(MALFORMED_LABEL, f"malformed label: level {level} is not a single label", column)
        label = "" if _is_missing(item) else _label_str(item, column, level)
        if not label:
            raise _Invalid(EMPTY_LEVEL, f"empty label at level {level}", column)
        _check_unicode(label, column, f"label at level {level}")
        path.append(label)
    return tuple(path)


def _check_separator_edges(items: list[str], sep: str, column) -> None:
    """Refuse a label with the separator's visible part at an edge.

    Split on " > ", "Food >" stays whole and "Food > > Fruit" gives "> Fruit": a label
    that holds the separator, which no path written with it can name again.
    """
    core = sep.strip()
    if not core:
        return
    for level, item in enumerate(items, 1):
        label = item.strip()
        if label.startswith(core) or label.endswith(core):
            where = "" if len(items) == 1 else f" at level {level}"
            raise _Invalid(MALFORMED_LABEL, f"label '{label}'{where} has the separator '{sep}' at its edge", column)


def _json_list(text: str, column) -> list:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(MALFORMED_LABEL, f"malformed label: starts with '[' but is not a JSON list "
                                        f"({exc.msg} at character {exc.pos + 1})", column) from None
    except (RecursionError, ValueError) as exc:
        raise _Invalid(MALFORMED_LABEL, f"malformed label: {_json_limit(exc)}", column) from None
    if not isinstance(items, list):
        raise _Invalid(MALFORMED_LABEL, "malformed label: starts with '[' but is not a JSON list", column)
    return items


def _levels_from_cells(cells, columns) -> tuple[str, ...]:
    """The label path spread over one column per level; trailing empty cells shorten it."""
    labels = []
    for cell, column in zip(cells, columns):
        if isinstance(cell, (*_SEQUENCES, dict)):
            raise _Invalid(MALFORMED_LABEL, "malformed label: a list; with one column per level "
                                            "each cell must hold a single label", column)
        labels.append("" if _is_missing(cell) else _label_str(cell, column, len(labels) + 1))
    end = len(labels)
    while end and not labels[end - 1]:
        end -= 1
    if end == 0:
        raise _Invalid(MISSING_LABEL, "missing label", columns[0])
    for level in range(end):
        if not labels[level]:
            raise _Invalid(EMPTY_LEVEL, f"empty label at level {level + 1}", columns[level])
        _check_unicode(labels[level], columns[level], f"label at level {level + 1}")
    return tuple(labels[:end])
