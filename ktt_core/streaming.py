"""Predicting a large file chunk by chunk: read texts, predict, write, in constant memory.

Input formats (from the extension): CSV, TSV, JSONL, Parquet and Arrow IPC (file or stream).
A single JSON document cannot be read piece by piece, so JSON (non-lines) input is refused
with a hint to convert it to JSONL. Output formats: CSV, TSV, JSONL, Parquet.

At most one chunk of texts and predictions is held at a time. The output is written to a
temporary file beside the target and renamed when every row is done, so a failure leaves
no partial output and never touches an existing file.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ktt_core.data.importers import detect_format, iter_jsonl
from ktt_core.errors import KttError
from ktt_core.files import atomic_path
from ktt_core.interrupts import keep_interrupts

INPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet", "arrow")
OUTPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet")
DEFAULT_CHUNK_SIZE = 2048
_MAX_LISTED_COLUMNS = 50


def _one_line(value) -> str:
    text = " ".join(str(value).split())
    return text or type(value).__name__


# -- reading -----------------------------------------------------------------------------

class TextSource:
    """The texts of one column of a file, checked up front and read lazily in chunks."""

    def __init__(self, path, column: str = "text", chunk_size: int = DEFAULT_CHUNK_SIZE, keep=()):
        self.path, self.column, self.chunk_size = Path(path), column, chunk_size
        # Input columns copied to the output beside each prediction (an id to join back on).
        self.keep = [c for c in dict.fromkeys(keep) if c != column]
        if chunk_size < 1:
            raise KttError(f"--chunk-size {chunk_size}: must be at least 1")
        self.format = input_format(self.path)
        _check_file(self.path)
        columns = _columns(self.path, self.format)
        if not columns:
            raise KttError(f"{self.path}: the file is empty")
        if column not in columns:
            listed = ", ".join(map(repr, columns[:_MAX_LISTED_COLUMNS]))
            more = f" and {len(columns) - _MAX_LISTED_COLUMNS} more" if len(columns) > _MAX_LISTED_COLUMNS else ""
            raise KttError(f"{self.path}: no column '{column}' (use --text COL); columns: {listed or '(none)'}{more}")
        for name in self.keep:
            if name not in columns and self.format != "jsonl":  # a JSON line may leave a key out
                raise KttError(f"{self.path}: --keep {name}: no such column; columns: {', '.join(columns)}")
            if name in PREDICTION_COLUMNS or re.fullmatch(r"level_\d+(_score)?", name):
                raise KttError(f"--keep {name}: the output has a column of that name (a prediction); "
                               "rename the input column")

    def kept_types(self) -> dict:
        """Arrow types of the kept columns where the input has a schema (Parquet, Arrow)."""
        if not self.keep or self.format not in ("parquet", "arrow"):
            return {}
        if self.format == "parquet":
            import pyarrow.parquet as pq

            schema = pq.ParquetFile(self.path).schema_arrow
        else:
            with _arrow_reader(self.path) as reader:
                schema = reader.schema
        return {name: schema.field(name).type for name in self.keep}

    @property
    def total(self) -> int | None:
        """The row count when the file says it without being read (Parquet), else None."""
        if self.format != "parquet":
            return None
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path).metadata.num_rows

    def chunks(self) -> Iterator[list[str]]:
        """Lists of at most ``chunk_size`` texts, in file order; empty texts are refused."""
        for texts, _ in self.chunks_with_kept():
            yield texts

    def chunks_with_kept(self) -> Iterator[tuple[list[str], list[dict]]]:
        """:meth:`chunks`, each with the values of the ``keep`` columns of its rows."""
        texts: list[str] = []
        kept: list[dict] = []
        columns = [self.column, *self.keep]
        for row, values in enumerate(_values(self.path, self.format, columns, self.chunk_size), 1):
            texts.append(self._text(values[0], row))
            kept.append({name: _missing_as_none(v) for name, v in zip(self.keep, values[1:])})
            if len(texts) == self.chunk_size:
                yield texts, kept
                texts, kept = [], []
        if texts:
            yield texts, kept

    def _text(self, value, row: int) -> str:
        if isinstance(value, float) and math.isnan(value):
            value = None
        if isinstance(value, (dict, list)):
            raise KttError(f"{self.path}: row {row}: column '{self.column}' holds a JSON "
                           f"{type(value).__name__}, not a text")
        text = None if value is None else (value if isinstance(value, str) else str(value))
        if text is None or not text.strip():
            raise KttError(f"{self.path}: row {row}: empty text in column '{self.column}'")
        return text


def _missing_as_none(value):
    """pandas reads an empty CSV cell as NaN; a kept column writes it as empty (null)."""
    return None if isinstance(value, float) and math.isnan(value) else value


def input_format(path) -> str:
    fmt = detect_format(path)
    if fmt == "json":
        raise KttError(f"{path}: a JSON document cannot be streamed; convert it to JSON Lines "
                       f"(.jsonl, one object per line), CSV or Parquet")
    if fmt not in INPUT_FORMATS:
        raise KttError(f"{path}: cannot predict from {fmt} input; use one of {', '.join(INPUT_FORMATS)}")
    return fmt


def _check_file(path: Path) -> None:
    if not path.exists():
        raise KttError(f"{path}: no such file")
    if path.is_dir():
        raise KttError(f"{path}: is a directory, not a file")


def _columns(path: Path, fmt: str) -> list[str]:
    """Column names, from the header, schema or first JSON line only."""
    try:
        if fmt in ("csv", "tsv"):
            import pandas as pd

            try:
                return list(pd.read_csv(path, sep=_SEPARATORS[fmt], nrows=0, dtype=str,
                                        encoding="utf-8-sig").columns)
            except pd.errors.EmptyDataError:
                return []
        if fmt == "jsonl":
            for _, item in iter_jsonl(path):
                return list(item)
            return []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(path).schema_arrow.names)
        with _arrow_reader(path) as reader:
            return list(reader.schema.names)
    except KttError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library raises its own types for bad files
        raise KttError(f"{path}: cannot read as {fmt.upper()}: {_one_line(exc)}") from exc


def _values(path: Path, fmt: str, columns: list[str], chunk_size: int) -> Iterator[tuple]:
    """Each row's cells of ``columns`` (the text first), one row at a time; the reader
    underneath reads ``chunk_size`` rows at a time."""
    readers = {"csv": _csv_values, "tsv": _csv_values, "jsonl": _jsonl_values,
               "parquet": _parquet_values, "arrow": _arrow_values}
    with keep_interrupts():  # pandas' C parser would turn a Ctrl-C into a read error
        try:
            yield from readers[fmt](path, fmt, columns, chunk_size)
        except KttError:
            raise
        except UnicodeDecodeError as exc:
            raise KttError(f"{path}: not UTF-8 text: {_one_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - each library raises its own types for bad files
            raise KttError(f"{path}: cannot read as {fmt.upper()}: {_one_line(exc)}") from exc


_SEPARATORS = {"csv": ",", "tsv": "\t"}


def _csv_values(path, fmt, columns, chunk_size) -> Iterator[tuple]:
    import pandas as pd

    # Only truly empty cells are missing: "NA", "null" or "None" may be real product names.
    with pd.read_csv(path, sep=_SEPARATORS[fmt], usecols=columns, chunksize=chunk_size, dtype=str,
                     keep_default_na=False, na_values=[""], encoding="utf-8-sig") as reader:
        for frame in reader:
            yield from zip(*(frame[c].tolist() for c in columns))


def _jsonl_values(path, fmt, columns, chunk_size) -> Iterator[tuple]:
    for lineno, item in iter_jsonl(path):
        if columns[0] not in item:
            raise KttError(f"{path}: line {lineno}: no key '{columns[0]}'")
        yield tuple(item.get(c) for c in columns)


def _parquet_values(path, fmt, columns, chunk_size) -> Iterator[tuple]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=chunk_size):
        yield from zip(*(batch.column(batch.schema.get_field_index(c)).to_pylist() for c in columns))


def _arrow_reader(path):
    """A reader of record batches: memory-mapped for an IPC file, sequential for a stream."""
    import pyarrow as pa

    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.OSFile(str(path)))


def _arrow_values(path, fmt, columns, chunk_size) -> Iterator[tuple]:
    with _arrow_reader(path) as reader:
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
            if hasattr(reader, "get_batch") else reader
        for batch in batches:
            values = [batch.column(batch.schema.get_field_index(c)) for c in columns]
            # A batch may be large; convert it slice by slice (slices of a mapped file are free).
            for start in range(0, batch.num_rows, chunk_size):
                yield from zip(*(v.slice(start, chunk_size).to_pylist() for v in values))


# -- predictions as rows ---------------------------------------------------------------------

def output_format(path) -> str:
    fmt = detect_format(path)
    if fmt not in OUTPUT_FORMATS:
        raise KttError(f"{path}: cannot write predictions as {fmt}; use .csv, .tsv, .jsonl or .parquet")
    return fmt


def check_output(output, source: TextSource) -> str:
    """The output format, after checking that writing ``output`` cannot replace the input."""
    from ktt_core.environment import require_writable

    fmt = output_format(output)
    if Path(output).resolve() == source.path.resolve():
        raise KttError(f"{output}: the output would replace the input file; choose another --output")
    require_writable(Path(output).parent, f"--output {output}")  # before the model loads
    return fmt


PREDICTION_COLUMNS = ("text", "path", "score", "top_k")


def output_columns(depth: int, top_k: int, keep=()) -> list[str]:
    levels = [name for d in range(1, depth + 1) for name in (f"level_{d}", f"level_{d}_score")]
    return [*keep, "text", "path", "score", *levels] + (["top_k"] if top_k > 1 else [])


def prediction_row(text: str, result: dict, depth: int, top_k: int) -> dict:
    """One output row from :func:`ktt_core.decoding.describe`'s result.

    Levels below a short path's leaf (placeholders) are left empty.
    """
    row = {"text": text, "path": list(result["path"]), "score": result["score"]}
    for d in range(1, depth + 1):
        row[f"level_{d}"] = row[f"level_{d}_score"] = None
    for level in result["levels"]:
        row[f"level_{level['level']}"] = level["label"]
        row[f"level_{level['level']}_score"] = level["score"]
    if top_k > 1:
        row["top_k"] = [{"path": list(alt["path"]), "score": alt["score"]} for alt in result["top_k"]]
    return row


# -- writing ---------------------------------------------------------------------------------

class _CsvWriter:
    """Appends rows to a CSV/TSV file: path joined by " > ", top_k as a JSON string."""

    def __init__(self, path: Path, columns: list[str], sep: str):
        self.fh = open(path, "w", encoding="utf-8", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=columns, delimiter=sep)
        self.writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            flat = {**row, "path": " > ".join(row["path"])}
            if "top_k" in row:
                flat["top_k"] = json.dumps(row["top_k"], ensure_ascii=False)
            self.writer.writerow(flat)

    def close(self) -> None:
        self.fh.close()


class _JsonlWriter:
    def __init__(self, path: Path, columns: list[str]):
        self.fh = open(path, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self.fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)

    def close(self) -> None:
        self.fh.close()


class _ParquetWriter:
    """Writes each chunk as a row group, with a fixed schema so empty levels keep their type."""

    def __init__(self, path: Path, columns: list[str], kept_types: dict | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"text": pa.string(), "path": pa.list_(pa.string()), "score": pa.float64(),
                 "top_k": pa.list_(pa.struct([("path", pa.list_(pa.string())), ("score", pa.float64())])),
                 **(kept_types or {})}
        self.as_text = [c for c in columns if c not in types and not c.endswith("_score")
                        and not c.startswith("level_")]
        self.schema = pa.schema([(c, types.get(c, pa.float64() if c.endswith("_score") else pa.string()))
                                 for c in columns])
        self.writer = pq.ParquetWriter(str(path), self.schema)

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa

        if self.as_text:  # kept columns of a schemaless input: their text (None stays null)
            rows = [{**r, **{c: None if r[c] is None else r[c] if isinstance(r[c], str) else json.dumps(r[c])
                             for c in self.as_text}} for r in rows]
        self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self.writer.close()


def _open_writer(path: Path, fmt: str, columns: list[str], kept_types: dict):
    if fmt in _SEPARATORS:
        return _CsvWriter(path, columns, _SEPARATORS[fmt])
    if fmt == "parquet":
        return _ParquetWriter(path, columns, kept_types)
    return _JsonlWriter(path, columns)


def write_predictions(source: TextSource, output, predict_chunk: Callable[[list[str]], Iterable[dict]],
                      depth: int, top_k: int = 1, progress: bool = True) -> int:
    """Predict every text of ``source`` and write the rows to ``output``; returns the row count.

    ``predict_chunk`` maps a list of texts to one :func:`~ktt_core.decoding.describe` result each.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    fmt = check_output(output, source)
    columns = output_columns(depth, top_k, source.keep)
    written = 0
    with atomic_path(output) as tmp, \
            tqdm(total=source.total, unit=" rows", desc="predict", disable=None if progress else True) as bar:
        writer = _open_writer(tmp, fmt, columns, source.kept_types())
        try:
            for texts, kept in source.chunks_with_kept():
                results = predict_chunk(texts)
                writer.write([{**k, **prediction_row(t, r, depth, top_k)} for t, r, k in zip(texts, results, kept)])
                written += len(texts)
                bar.update(len(texts))
        finally:
            writer.close()
    return written
