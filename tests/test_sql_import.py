"""The SQL importer never changes a database (ktt_core.data.sql), on a real SQLite file.

Each refused statement is checked by the file's bytes (SHA-256), its modification time and
its folder's listing (no -journal, -wal, attached or created files) afterwards.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import assert_clean_error

from ktt_core.data.importers import read_table
from ktt_core.data.sql import _sqlite_engine, check_query
from ktt_core.errors import KttError
from ktt_core.files import sha256_file

ROWS = [(i, f"{w} product {i}", c) for i, (w, c) in enumerate(
    [("apple", "Food > Fruit"), ("pear", "Food > Fruit"), ("bread", "Food > Bakery"), ("rake", "Home > Garden"),
     ("hoe", "Home > Garden"), ("bun", "Food > Bakery")] * 4)]


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE products (id INTEGER, title TEXT, category TEXT)")
    con.executemany("INSERT INTO products VALUES (?, ?, ?)", ROWS)
    con.commit()
    con.close()
    return path


def state(db: Path):
    """What must not change: the file's bytes and time, and what its folder holds."""
    return sha256_file(db), db.stat().st_mtime_ns, sorted(p.name for p in db.parent.iterdir())


def error_of(**kwargs) -> str:
    with pytest.raises(KttError) as info:
        read_table(**kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def db(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return make_db(folder / "shop.db")


WRITES = {
    "DROP TABLE products": "got DROP",
    "delete from products": "got DELETE",
    "INSERT INTO products VALUES (99, 'x', 'y')": "got INSERT",
    "UPDATE products SET title = 'x'": "got UPDATE",
    "REPLACE INTO products VALUES (1, 'x', 'y')": "got REPLACE",
    "CREATE TABLE t (x)": "got CREATE",
    "ATTACH DATABASE 'attached.db' AS a": "got ATTACH",
    "PRAGMA journal_mode=WAL": "got PRAGMA",
    "VACUUM": "got VACUUM",
    "SELECT 1; DROP TABLE products": "a second statement after ';' (DROP)",
    "SELECT title, category FROM products;\n-- the rest\nDELETE FROM products;": "second statement after ';' (DELETE)",
    "/* a comment */ DROP TABLE products": "got DROP",
    "WITH old AS (SELECT id FROM products) DELETE FROM products WHERE id IN (SELECT id FROM old)": "got DELETE",
    "SELECT * INTO copy FROM products": "SELECT ... INTO, which writes",
    "": None,  # empty: --query is required
}


@pytest.mark.parametrize("query", list(WRITES), ids=range(len(WRITES)))
def test_writing_statements_are_refused_and_the_file_is_unchanged(db, query):
    before = state(db)
    message = error_of(sql_url=f"sqlite:///{db}", query=query)
    assert message.startswith(f"sql:sqlite:///{db}: "), message
    assert (WRITES[query] or "--query is required") in message, message
    assert state(db) == before
    assert sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute("SELECT count(*) FROM products").fetchone() == (24,)


def test_the_connection_itself_refuses_writes(db):
    """Read-only mode is the real guarantee: even a statement past the check cannot write,
    in autocommit mode where SQLite would commit each statement at once."""
    before = state(db)
    engine = _sqlite_engine(str(db))
    try:
        raw = engine.raw_connection()
        conn = raw.driver_connection
        conn.isolation_level = None  # autocommit
        for statement in ("DROP TABLE products", "INSERT INTO products VALUES (1, 'x', 'y')",
                          "CREATE TABLE t (x)", f"ATTACH DATABASE '{db.parent / 'new.db'}' AS a"):
            with pytest.raises(sqlite3.DatabaseError, match="readonly|not authorized"):
                conn.execute(statement)
        for statement in ("PRAGMA journal_mode=WAL", "PRAGMA query_only=OFF"):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                conn.execute(statement)
        assert conn.execute("PRAGMA query_only").fetchone() == (1,)
        raw.close()
    finally:
        engine.dispose()
    assert state(db) == before


def test_reading_queries_still_import(db, tmp_path):
    url = f"sqlite:///{db}"
    for query in ("SELECT title, category FROM products ORDER BY id",
                  "  -- leading comment\nSELECT title, category FROM products ORDER BY id;  ",
                  "WITH p AS (SELECT * FROM products) SELECT title, category FROM p ORDER BY id;;",
                  "SELECT title, category FROM products WHERE title != 'x; DROP TABLE products' ORDER BY id",
                  'SELECT title AS "into; drop", category FROM products ORDER BY id'):
        before = state(db)
        df = read_table(sql_url=url, query=query)
        assert len(df) == 24 and df.iloc[0, 0] == "apple product 0", query
        assert state(db) == before
    assert list(read_table(sql_url=url, query="VALUES ('rice', 'Food')").iloc[0]) == ["rice", "Food"]


def test_file_uri_forms(db, tmp_path, monkeypatch):
    spaced = make_db(db.parent / "my shop.db")
    before = state(db)
    for url in (f"sqlite:///file:{db}?uri=true", f"sqlite:///file://{quote(str(spaced))}?uri=true",
                f"sqlite:///file:{db}?mode=rwc&uri=true"):  # mode=rwc is overridden: read-only
        assert len(read_table(sql_url=url, query="SELECT title, category FROM products")) == 24
    assert state(db) == before
    monkeypatch.chdir(db.parent)
    assert len(read_table(sql_url="sqlite:///file:shop.db?uri=true", query="SELECT * FROM products")) == 24
    assert len(read_table(sql_url="sqlite:///shop.db", query="SELECT * FROM products")) == 24


def test_a_missing_database_is_never_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.db"
    for url in (f"sqlite:///{missing}", "sqlite:///missing.db", "sqlite:///file:missing.db?uri=true",
                f"sqlite:///file:{missing}?mode=rwc&uri=true", f"sqlite:///file://{missing}?uri=true"):
        message = error_of(sql_url=url, query="SELECT 1")
        assert "no such database file" in message and "missing.db" in message, message
    assert list(tmp_path.iterdir()) == []
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?uri=true",
                "sqlite:///file:x.db?mode=memory&uri=true"):
        assert "in-memory SQLite database holds nothing to read" in error_of(sql_url=url, query="SELECT 1")
    assert "is a directory" in error_of(sql_url=f"sqlite:///{tmp_path}", query="SELECT 1")
    assert list(tmp_path.iterdir()) == []


def test_a_wal_mode_database_is_read_without_leaving_files(tmp_path):
    db = make_db(tmp_path / "wal.db")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    con.close()
    before = state(db)
    assert before[2] == ["wal.db"]
    assert len(read_table(sql_url=f"sqlite:///{db}", query="SELECT title, category FROM products")) == 24
    assert state(db) == before  # no wal.db-wal, no wal.db-shm


def test_check_query_reads_past_strings_and_comments():
    for ok in ("SELECT ';' AS x", "SELECT 1 -- ; DROP TABLE t", "SELECT 1 /* ; DROP */", "select [a;b] from t",
               "SELECT `a;b` FROM t", "SELECT $$;drop$$", "SELECT 'it''s; fine'", "VALUES (1)"):
        check_query(ok, "sql:x")
    for bad, why in (("SELECT 'a'; DELETE FROM t", "(DELETE)"), ("EXPLAIN SELECT 1", "got EXPLAIN"),
                     ("-- only a comment", "got no statement"), ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO"),
                     ("WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a", "got INSERT")):
        with pytest.raises(KttError, match=why.replace("(", r"\(").replace(")", r"\)")):
            check_query(bad, "sql:x")


def test_cli_refuses_a_drop_and_writes_nothing(ktt, workspace, db):
    before = state(db)
    result = ktt("import", "x", "--sql-url", f"sqlite:///{db}", "--query", "DROP TABLE products",
                 "--text", "title", "--labels", "category", expect=None)
    assert result.exit_code == 1
    assert_clean_error(result, f"sql:sqlite:///{db}", "--query must be one SELECT statement; got DROP")
    assert state(db) == before
    assert not (workspace / "datasets" / "x").exists()
    ktt("import", "x", "--sql-url", f"sqlite:///{db}", "--query", "SELECT title, category FROM products",
        "--text", "title", "--labels", "category", "--sep", " > ")
    assert (workspace / "datasets" / "x" / "hierarchy.json").is_file()
    assert state(db) == before
