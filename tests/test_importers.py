"""Tests for ktt_core.data.importers: real files in every format and a real SQLite file."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktt_core.data.importers import FORMATS, ImportResult, detect_format, extract_records, read_table
from ktt_core.errors import KttError

TEXTS = ["Basmati rice 1kg", "Spaghetti 500g", "Oat milk", "Gouda, aged"]
PATHS = [
    ("Food", "Meal Solutions, Grains & Pasta", "Rice"),
    ("Food", "Meal Solutions, Grains & Pasta", "Pasta"),
    ("Drinks", "Plant milk"),
    ("Food", "Dairy", "Cheese"),
]
JOINED = [" > ".join(p) for p in PATHS]


def import_file(path, **options) -> ImportResult:
    """read_table + extract_records, the way the CLI chains them."""
    fmt = options.pop("fmt", None)
    encoding = options.pop("encoding", "utf-8")
    df = read_table(path, fmt=fmt, encoding=encoding)
    return extract_records(df, source=str(path), **options)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(KttError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def write_sqlite(path, rows, table="products") -> str:
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table} (id INTEGER, title TEXT, category TEXT)")
    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()
    return f"sqlite:///{path}"


# -- formats -----------------------------------------------------------------------------

def _write(fmt, tmp_path, df):
    if fmt == "csv":
        path = tmp_path / "products.csv"
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        path = tmp_path / "products.tsv"
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        path = tmp_path / "products.json"
        df.to_json(path, orient="records", force_ascii=False)
    elif fmt == "json-columns":
        path = tmp_path / "products.json"
        df.to_json(path, orient="columns", force_ascii=False)
    elif fmt == "json-split":
        path = tmp_path / "products.json"
        df.to_json(path, orient="split", index=False, force_ascii=False)
    elif fmt == "jsonl":
        path = tmp_path / "products.jsonl"
        df.to_json(path, orient="records", lines=True, force_ascii=False)
    elif fmt == "parquet":
        path = tmp_path / "products.parquet"
        pq.write_table(pa.Table.from_pandas(df), path)
    elif fmt == "feather":
        path = tmp_path / "products.feather"
        feather.write_feather(df, path)
    elif fmt == "arrow-stream":
        path = tmp_path / "products.arrow"
        table = pa.Table.from_pandas(df)
        with pa.ipc.new_stream(path, table.schema) as writer:
            writer.write_table(table)
    else:
        raise AssertionError(fmt)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "json-columns", "json-split", "jsonl",
                                 "parquet", "feather", "arrow-stream"])
def test_every_format_reads_back_the_same_records(tmp_path, fmt):
    df = pd.DataFrame({"id": range(len(TEXTS)), "title": TEXTS, "category": JOINED})
    path = _write(fmt, tmp_path, df)
    result = import_file(path, text_column="title", label_columns=["category"], sep=" > ")
    assert result.texts == TEXTS
    assert result.paths == PATHS
    assert result.source_rows == [1, 2, 3, 4]
    assert result.total_rows == 4
    assert result.source == str(path)
    assert result.dropped == {}


def test_sqlite_database_reads_back_the_same_records(tmp_path):
    url = write_sqlite(tmp_path / "shop.db", [(i, t, c) for i, (t, c) in enumerate(zip(TEXTS, JOINED))])
    df = read_table(sql_url=url, query="SELECT title, category FROM products ORDER BY id")
    result = extract_records(df, text_column="title", label_columns=["category"], sep=" > ",
                             source=f"sql:{url}")
    assert result.texts == TEXTS
    assert result.paths == PATHS


def test_fmt_overrides_the_extension(tmp_path):
    path = tmp_path / "export.txt"
    pd.DataFrame({"title": TEXTS, "category": JOINED}).to_csv(path, sep="\t", index=False)
    result = import_file(path, fmt="tsv", text_column="title", label_columns=["category"], sep=" > ")
    assert result.paths == PATHS


@pytest.mark.parametrize("name, fmt", [
    ("a.csv", "csv"), ("a.CSV", "csv"), ("a.tsv", "tsv"), ("a.tab", "tsv"), ("a.json", "json"),
    ("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.parquet", "parquet"), ("a.pq", "parquet"),
    ("a.arrow", "arrow"), ("a.feather", "arrow"), ("a.ipc", "arrow"), ("dir.v2/a.Parquet", "parquet"),
])
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt
    assert fmt in FORMATS


def test_commas_in_labels_survive_csv(tmp_path):
    path = tmp_path / "products.csv"
    pd.DataFrame({"title": ["Rice, long grain"], "l1": ["Food"],
                  "l2": ["Meal Solutions, Grains & Pasta"]}).to_csv(path, index=False)
    assert '"Meal Solutions, Grains & Pasta"' in path.read_text()
    result = import_file(path, text_column="title", label_columns=["l1", "l2"])
    assert result.texts == ["Rice, long grain"]
    assert result.paths == [("Food", "Meal Solutions, Grains & Pasta")]


def test_na_like_strings_are_labels_not_missing(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,category\nNone,NA > null\nnan,N/A\n")
    result = import_file(path, text_column="title", label_columns=["category"], sep=" > ")
    assert result.texts == ["None", "nan"]
    assert result.paths == [("NA", "null"), ("N/A",)]


def test_utf8_bom_and_other_encodings(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_text("title,category\nCrème brûlée,Desserts\n", encoding="utf-8-sig")
    assert import_file(bom, text_column="title", label_columns=["category"]).texts == ["Crème brûlée"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("title,category\nCrème brûlée,Desserts\n".encode("latin-1"))
    result = import_file(latin, encoding="latin-1", text_column="title", label_columns=["category"])
    assert result.texts == ["Crème brûlée"]
    bom_json = tmp_path / "bom.json"
    bom_json.write_text('[{"title": "x", "category": "y"}]', encoding="utf-8-sig")
    assert import_file(bom_json, text_column="title", label_columns=["category"]).paths == [("y",)]


# -- label shapes ------------------------------------------------------------------------

def test_sep_splitting_strips_levels():
    df = pd.DataFrame({"t": ["a", "b"], "c": ["  Food >Dairy > Cheese ", "Food"]})
    result = extract_records(df, text_column="t", label_columns=["c"], sep=">")
    assert result.paths == [("Food", "Dairy", "Cheese"), ("Food",)]


def test_without_sep_the_whole_string_is_one_level():
    df = pd.DataFrame({"t": ["a"], "c": [" Food > Dairy "]})
    assert extract_records(df, text_column="t", label_columns=["c"]).paths == [("Food > Dairy",)]


def test_list_column_from_parquet(tmp_path):
    path = tmp_path / "products.parquet"
    table = pa.table({"title": TEXTS, "path": pa.array([list(p) for p in PATHS], pa.list_(pa.string()))})
    pq.write_table(table, path)
    result = import_file(path, text_column="title", label_columns=["path"])
    assert result.paths == PATHS


def test_list_column_from_json_and_jsonl(tmp_path):
    records = [{"title": t, "path": list(p)} for t, p in zip(TEXTS, PATHS)]
    json_path = tmp_path / "products.json"
    json_path.write_text(json.dumps(records))
    jsonl_path = tmp_path / "products.jsonl"
    jsonl_path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    for path in (json_path, jsonl_path):
        result = import_file(path, text_column="title", label_columns=["path"])
        assert result.paths == PATHS


def test_json_list_strings_in_csv(tmp_path):
    path = tmp_path / "products.csv"
    pd.DataFrame({"title": TEXTS, "path": [json.dumps(list(p)) for p in PATHS]}).to_csv(path, index=False)
    assert import_file(path, text_column="title", label_columns=["path"], sep=" > ").paths == PATHS


def test_multi_column_levels_with_variable_depth(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,l1,l2,l3\n"
                    "Rice,Food,Grains,Rice\n"
                    "Oat milk,Drinks,Plant milk,\n"
                    "Water,Drinks,,\n"
                    "Soap,  Household  , Cleaning ,\n")
    result = import_file(path, text_column="title", label_columns=["l1", "l2", "l3"])
    assert result.paths == [("Food", "Grains", "Rice"), ("Drinks", "Plant milk"), ("Drinks",),
                            ("Household", "Cleaning")]


def test_numeric_labels_and_texts_become_strings():
    df = pd.DataFrame({"t": pd.Series([101, 102.5], dtype=object), "l1": [1, 2], "l2": [3.0, np.nan]})
    result = extract_records(df, text_column="t", label_columns=["l1", "l2"])
    assert result.texts == ["101", "102.5"]
    assert result.paths == [("1", "3"), ("2",)]


def test_no_deduplication():
    df = pd.DataFrame({"t": ["x", "x", "x"], "c": ["a", "a", "b"]})
    result = extract_records(df, text_column="t", label_columns=["c"])
    assert result.texts == ["x", "x", "x"]
    assert result.paths == [("a",), ("a",), ("b",)]


# -- depth -------------------------------------------------------------------------------

def test_depth_truncates_longer_paths():
    df = pd.DataFrame({"t": TEXTS, "c": JOINED})
    result = extract_records(df, text_column="t", label_columns=["c"], sep=" > ", depth=2)
    assert result.paths == [("Food", "Meal Solutions, Grains & Pasta"),
                            ("Food", "Meal Solutions, Grains & Pasta"),
                            ("Drinks", "Plant milk"), ("Food", "Dairy")]
    same = extract_records(df, text_column="t", label_columns=["c"], sep=" > ", depth=3)
    assert same.paths == PATHS


def test_depth_deeper_than_the_data():
    df = pd.DataFrame({"t": TEXTS, "c": JOINED})
    message = error_of(extract_records, df, text_column="t", label_columns=["c"], sep=" > ",
                       depth=4, source="products.csv")
    assert message == ("products.csv: --depth 4 is deeper than the data "
                       "(deepest label path has 3 levels)")


def test_depth_below_one():
    df = pd.DataFrame({"t": TEXTS, "c": JOINED})
    message = error_of(extract_records, df, text_column="t", label_columns=["c"], depth=0,
                       source="products.csv")
    assert "products.csv" in message and "--depth" in message


# -- bad input ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    message = error_of(read_table, tmp_path / "products.csv")
    assert message == f"{tmp_path / 'products.csv'}: no such file"


def test_unknown_extension():
    assert error_of(detect_format, "products.xlsx") == (
        "products.xlsx: unknown format '.xlsx'; use one of csv, tsv, json, jsonl, parquet, arrow "
        "or pass --format")


def test_unknown_extension_in_read_table(tmp_path):
    path = tmp_path / "products.xlsx"
    path.write_bytes(b"PK\x03\x04")
    assert "products.xlsx: unknown format '.xlsx'" in error_of(read_table, path)


def test_missing_column(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("id,title,category\n1,Rice,Food\n")
    message = error_of(import_file, path, text_column="titel", label_columns=["category"])
    assert message == f"{path}: no column 'titel'; columns are: id, title, category"
    message = error_of(import_file, path, text_column="title", label_columns=["cat"])
    assert "products.csv: no column 'cat'" in message


def test_semicolon_file_hints_at_separator(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title;category\nRice;Food\n")
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert "no column 'title'" in message and "separator" in message


@pytest.mark.parametrize("cell", ["", "   ", None])
def test_empty_text_in_csv(tmp_path, cell):
    path = tmp_path / "products.csv"
    pd.DataFrame({"title": ["Rice", "Pasta", cell], "category": ["a", "b", "c"]}).to_csv(path, index=False)
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert message == f"{path}: row 3, column 'title': empty text"


def test_nan_text_in_parquet(tmp_path):
    path = tmp_path / "products.parquet"
    pq.write_table(pa.table({"title": ["Rice", None], "category": ["a", "b"]}), path)
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert message == f"{path}: row 2, column 'title': empty text"
    df = pd.DataFrame({"title": ["Rice", np.nan], "category": ["a", "b"]})
    assert "row 2, column 'title': empty text" in error_of(
        extract_records, df, text_column="title", label_columns=["category"])


def test_missing_label(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,category\nRice,Food\nPasta,\n")
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert message == f"{path}: row 2, column 'category': missing label"


def test_empty_level_in_the_middle_of_columns(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,l1,l2,l3\nRice,Food,Grains,Rice\nPasta,Food,,Pasta\n")
    message = error_of(import_file, path, text_column="title", label_columns=["l1", "l2", "l3"])
    assert message == f"{path}: row 2, column 'l2': empty label at level 2"


def test_empty_level_in_a_separated_string(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,category\nRice,Food >  > Rice\n")
    message = error_of(import_file, path, text_column="title", label_columns=["category"], sep=" > ")
    assert message == f"{path}: row 1, column 'category': empty label at level 2"


def test_empty_level_in_a_list(tmp_path):
    path = tmp_path / "products.jsonl"
    path.write_text('{"title": "Rice", "path": ["Food", "Grains"]}\n'
                    '{"title": "Pasta", "path": ["Food", " ", "Pasta"]}\n')
    message = error_of(import_file, path, text_column="title", label_columns=["path"])
    assert message == f"{path}: row 2, column 'path': empty label at level 2"


def test_malformed_json_list_label(tmp_path):
    path = tmp_path / "products.csv"
    pd.DataFrame({"title": ["Rice", "Pasta"],
                  "path": ['["Food", "Grains"]', '["Food", "Pasta"']}).to_csv(path, index=False)
    message = error_of(import_file, path, text_column="title", label_columns=["path"])
    assert message.startswith(f"{path}: row 2, column 'path': malformed label")


def test_empty_file(tmp_path):
    for name in ("products.csv", "products.json", "products.jsonl", "products.parquet"):
        path = tmp_path / name
        path.write_bytes(b"")
        assert error_of(read_table, path) == f"{path}: the file is empty"
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    assert error_of(read_table, blank) == f"{blank}: the file is empty"


def test_file_without_rows(tmp_path):
    header_only = tmp_path / "products.csv"
    header_only.write_text("title,category\n")
    assert "products.csv: the file has no rows" in error_of(read_table, header_only)
    empty_list = tmp_path / "products.json"
    empty_list.write_text("[]")
    assert "products.json: the file has no rows" in error_of(read_table, empty_list)


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(b"title,category\nRice,Food\nCr\xe8me,Desserts\n")
    message = error_of(read_table, path)
    assert str(path) in message
    assert "byte 27" in message and "line 3" in message
    assert "--encoding" in message


def test_non_utf8_far_into_a_large_csv(tmp_path):
    path = tmp_path / "products.csv"
    body = b"".join(b"item %d,Food\n" % i for i in range(200_000))
    path.write_bytes(b"title,category\n" + body + b"Cr\xe8me,Desserts\n")
    message = error_of(read_table, path)
    assert f"byte {15 + len(body) + 2}" in message and "line 200002" in message


def test_unknown_encoding(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,category\nRice,Food\n")
    assert "--encoding 'klingon'" in error_of(read_table, path, encoding="klingon")


def test_malformed_csv(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("title,category\nRice,Food\nPasta,Food,extra\n")
    message = error_of(read_table, path)
    assert message.startswith(f"{path}: cannot read as CSV") and "line 3" in message


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "products.jsonl"
    path.write_text('{"title": "Rice", "category": "Food"}\n{"title": "Pasta", \n')
    message = error_of(read_table, path)
    assert message.startswith(f"{path}: line 2: malformed JSON")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "products.jsonl"
    path.write_text('{"title": "Rice"}\n["Pasta"]\n')
    assert error_of(read_table, path) == f"{path}: line 2: expected a JSON object, got a list"


def test_malformed_json(tmp_path):
    path = tmp_path / "products.json"
    path.write_text('[{"title": "Rice"},\n {"title": }]')
    assert error_of(read_table, path).startswith(f"{path}: malformed JSON at line 2")
    path.write_text('[{"title": "Rice"}, "Pasta"]')
    assert error_of(read_table, path) == f"{path}: item 2 of the JSON list is a string, not an object"
    path.write_text('"Rice"')
    assert "expected a JSON list of records" in error_of(read_table, path)


@pytest.mark.parametrize("name", ["products.parquet", "products.arrow", "products.feather"])
def test_corrupt_binary_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a columnar file at all\n" * 10)
    message = error_of(read_table, path)
    assert message.startswith(f"{path}: cannot read as")


def test_bad_sql_query(tmp_path):
    url = write_sqlite(tmp_path / "shop.db", [(1, "Rice", "Food")])
    message = error_of(read_table, sql_url=url, query="SELECT title FROM produkts")
    assert message == f"sql:{url}: query failed: no such table: produkts"
    message = error_of(read_table, sql_url=url, query="SELEC title FROM products")
    assert message == f"sql:{url}: --query must be one SELECT statement; got SELEC"
    message = error_of(read_table, sql_url=url, query="SELECT title FROM products WHERE WHERE")
    assert "query failed" in message and "syntax error" in message


def test_sql_missing_query(tmp_path):
    url = write_sqlite(tmp_path / "shop.db", [(1, "Rice", "Food")])
    assert error_of(read_table, sql_url=url) == f"sql:{url}: --query is required with --sql-url"
    assert "--sql-url" in error_of(read_table, query="SELECT 1")


def test_sql_bad_urls(tmp_path):
    assert "not a valid database URL" in error_of(read_table, sql_url="not a url", query="SELECT 1")
    message = error_of(read_table, sql_url="nosuchdb://host/db", query="SELECT 1")
    assert message.startswith("sql:nosuchdb://host/db: cannot open the database")
    missing = tmp_path / "missing.db"
    message = error_of(read_table, sql_url=f"sqlite:///{missing}", query="SELECT 1")
    assert "no such database file" in message
    assert not missing.exists()


def test_sql_password_is_hidden():
    message = error_of(read_table, sql_url="nosuchdb://user:secret@host/db", query="SELECT 1")
    assert "secret" not in message


def test_sql_no_rows_and_row_numbers_in_errors(tmp_path):
    url = write_sqlite(tmp_path / "shop.db", [(1, "Rice", "Food"), (2, None, "Food")])
    assert "returned no rows" in error_of(read_table, sql_url=url,
                                          query="SELECT * FROM products WHERE id > 5")
    df = read_table(sql_url=url, query="SELECT title, category FROM products ORDER BY id")
    message = error_of(extract_records, df, text_column="title", label_columns=["category"],
                       source=f"sql:{url}")
    assert message == f"sql:{url}: row 2, column 'title': empty text"


def test_option_conflicts():
    df = pd.DataFrame({"t": ["a"], "l1": ["x"], "l2": ["y"]})
    assert "--sep" in error_of(extract_records, df, text_column="t", label_columns=["l1", "l2"], sep=">")
    assert "--sep" in error_of(extract_records, df, text_column="t", label_columns=["l1"], sep="")
    assert "label column" in error_of(extract_records, df, text_column="t", label_columns=[])
    assert "both" in error_of(extract_records, df, text_column="t", label_columns=["t"])


# -- drop_invalid ------------------------------------------------------------------------

def test_drop_invalid_counts_reasons(tmp_path):
    path = tmp_path / "products.csv"
    pd.DataFrame({
        "title": ["Rice", "", "Pasta", "Milk", None, "Tea", "Bread", "Salt"],
        "path": ['["Food", "Rice"]', '["Food"]', None, '["Drinks", "", "Milk"]', '["x"]',
                 '["Drinks", "Tea"', '["Food", "Bakery"]', "   "],
    }).to_csv(path, index=False)
    result = import_file(path, text_column="title", label_columns=["path"], drop_invalid=True)
    assert result.texts == ["Rice", "Bread"]
    assert result.paths == [("Food", "Rice"), ("Food", "Bakery")]
    assert result.source_rows == [1, 7]
    assert result.total_rows == 8
    assert result.dropped == {"empty text": 2, "missing label": 2, "empty label level": 1,
                              "malformed label": 1}


def test_drop_invalid_with_depth_uses_kept_rows():
    df = pd.DataFrame({"t": ["a", "", "c"], "c": ["x > y", "x > y > z", "x"]})
    result = extract_records(df, text_column="t", label_columns=["c"], sep=" > ", drop_invalid=True, depth=2)
    assert result.paths == [("x", "y"), ("x",)]
    with pytest.raises(KttError, match="deepest label path has 2 levels"):
        extract_records(df, text_column="t", label_columns=["c"], sep=" > ", drop_invalid=True, depth=3)


def test_first_invalid_row_is_reported():
    df = pd.DataFrame({"t": ["a", "b", ""], "c": ["x", None, "y"]})
    message = error_of(extract_records, df, text_column="t", label_columns=["c"], source="in.csv")
    assert message == "in.csv: row 2, column 'c': missing label"


def test_unpaired_surrogates_are_refused_or_dropped():
    df = pd.DataFrame({"t": ["ok", "bad \ud800", "fine"], "c": ["x", "y", "z \udfff"]})
    message = error_of(extract_records, df, text_column="t", label_columns=["c"], source="in.json")
    assert message.startswith("in.json: row 2, column 't': text holds an unpaired surrogate")
    result = extract_records(df, text_column="t", label_columns=["c"], drop_invalid=True)
    assert result.texts == ["ok"] and result.dropped == {"invalid Unicode": 2}


def test_long_texts_are_kept_and_counted():
    from ktt_core.data.importers import LONG_TEXT_CHARS

    df = pd.DataFrame({"t": ["short", "y" * (LONG_TEXT_CHARS + 1)], "c": ["x", "x"]})
    result = extract_records(df, text_column="t", label_columns=["c"])
    assert len(result.texts[1]) == LONG_TEXT_CHARS + 1
    assert result.long_texts == 1 and result.longest_text == (2, LONG_TEXT_CHARS + 1)


def test_utf16_file_read_as_utf8_suggests_the_encoding(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("title,category\nrice,Food\n", encoding="utf-16")
    assert error_of(import_file, path, text_column="title", label_columns=["category"]).endswith(
        "the file starts with a UTF-16 byte-order mark: pass --encoding utf-16")


def test_json_nested_too_deeply(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 5000 + "]" * 5000)
    assert error_of(import_file, path, text_column="t", label_columns=["c"]) == \
        f"{path}: cannot read the JSON: nested too deeply"


# -- speed and round trip ----------------------------------------------------------------

def test_100k_rows_import(tmp_path):
    """Speed is measured by benchmarks/import_speed.py, not here (a time limit fails on a loaded machine)."""
    n = 100_000
    path = tmp_path / "big.csv"
    pd.DataFrame({"title": [f"product {i}" for i in range(n)],
                  "category": [f"A{i % 7} > B{i % 70} > C{i % 700}" for i in range(n)]}).to_csv(path, index=False)
    result = import_file(path, text_column="title", label_columns=["category"], sep=" > ")
    assert len(result.texts) == n and result.paths[-1] == ("A4", "B39", "C599")


SEP = " > "
_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff") | st.sampled_from(
    ',"\'\n\t;[]')
_label = (st.text(_chars, min_size=1, max_size=12)
          .map(str.strip)
          .filter(lambda s: s and SEP.strip() not in s and not s.startswith("[")))
_text_value = st.text(_chars, min_size=1, max_size=40).map(str.strip).filter(bool)
_record = st.tuples(_text_value, st.lists(_label, min_size=1, max_size=4).map(tuple))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=20))
def test_csv_round_trip_property(tmp_path, records):
    path = tmp_path / "roundtrip.csv"
    texts = [t for t, _ in records]
    paths = [p for _, p in records]
    pd.DataFrame({"text": texts, "path": [SEP.join(p) for p in paths]}).to_csv(path, index=False)
    result = import_file(path, text_column="text", label_columns=["path"], sep=SEP)
    assert result.texts == texts
    assert result.paths == paths


# -- values that are not text (issue 11, family 7) -----------------------------------------

NOT_TEXT_CELLS = [({"name": "rice"}, "text is a JSON object, not text"), (["rice", "1kg"], "text is a list, not text"),
                  (True, "text is a boolean (True), not text")]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("cell, why", NOT_TEXT_CELLS, ids=["object", "list", "bool"])
def test_json_text_cells_that_are_not_text_are_refused(tmp_path, fmt, cell, why):
    records = [{"title": "Oat milk", "category": "Drinks"}, {"title": cell, "category": "Food"},
               {"title": "Gouda", "category": "Food"}]
    path = tmp_path / f"products.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert message == f"{path}: row 2, column 'title': {why}"
    result = import_file(path, text_column="title", label_columns=["category"], drop_invalid=True)
    assert result.texts == ["Oat milk", "Gouda"] and result.source_rows == [1, 3]
    assert result.dropped == {"value that is not text": 1}


@pytest.mark.parametrize("column, why", [
    (pa.array([["rice"], ["oat", "milk"], ["gouda"]]), "a list"),
    (pa.array([{"n": "rice"}, {"n": "oat milk"}, {"n": "gouda"}]), "a JSON object"),
    (pa.array([b"rice", b"oat milk", b"gouda"], pa.binary()), "bytes"),
    (pa.array([True, False, True]), "a boolean (True)"),
], ids=["list", "struct", "binary", "bool"])
def test_parquet_text_columns_that_are_not_text_are_refused(tmp_path, column, why):
    path = tmp_path / "products.parquet"
    pq.write_table(pa.table({"title": column, "category": ["Food", "Drinks", "Food"]}), path)
    message = error_of(import_file, path, text_column="title", label_columns=["category"])
    assert message == f"{path}: row 1, column 'title': text is {why}, not text"


def test_label_cells_that_are_not_labels_are_refused(tmp_path):
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"title": ["rice", "milk"], "category": pa.array([b"Food", b"Drinks"], pa.binary())}), path)
    assert error_of(import_file, path, text_column="title", label_columns=["category"]) == \
        f"{path}: row 1, column 'category': label at level 1 is bytes, not a label"
    path = tmp_path / "labels.jsonl"
    path.write_text('{"title": "rice", "l1": "Food", "l2": "Grains"}\n{"title": "milk", "l1": "Drinks", "l2": false}\n'
                    '{"title": "tea", "path": ["Drinks", true]}\n')
    assert error_of(import_file, path, text_column="title", label_columns=["l1", "l2"]) == \
        f"{path}: row 2, column 'l2': label at level 2 is a boolean (False), not a label"
    df = pd.DataFrame({"title": ["tea"], "path": [["Drinks", True]]})
    assert error_of(extract_records, df, text_column="title", label_columns=["path"]) == \
        "input: row 1, column 'path': label at level 2 is a boolean (True), not a label"


@pytest.mark.parametrize("cell, label", [("Food >", "'Food >'"), ("> Food", "'> Food'"),
                                         ("Food > > Fruit", "'> Fruit' at level 2"),
                                         ("Food > Fruit >", "'Fruit >' at level 2")])
def test_separator_at_a_label_edge_is_refused(tmp_path, cell, label):
    path = tmp_path / "edges.csv"
    pd.DataFrame({"title": ["rice", "apple", "pear"], "category": ["Food > Grains", cell, "Food > Fruit"]}).to_csv(
        path, index=False)
    message = error_of(import_file, path, text_column="title", label_columns=["category"], sep=" > ")
    assert message == f"{path}: row 2, column 'category': label {label} has the separator ' > ' at its edge"
    result = import_file(path, text_column="title", label_columns=["category"], sep=" > ", drop_invalid=True)
    assert result.paths == [("Food", "Grains"), ("Food", "Fruit")] and result.dropped == {"malformed label": 1}
    # The same cell is one plain label when there is no separator, and ">" inside a label is fine.
    assert import_file(path, text_column="title", label_columns=["category"]).paths[1] == (cell,)
    assert extract_records(pd.DataFrame({"t": ["x"], "c": ["A>B > C"]}), text_column="t", label_columns=["c"],
                           sep=" > ").paths == [("A>B", "C")]
