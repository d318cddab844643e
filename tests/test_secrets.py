"""Secrets never echoed: passwords in --sql-url and --storage URLs appear in no output and no file.

The CLI cases run real commands against a real SQLite file, and against a PostgreSQL URL
on 127.0.0.1 port 1, where nothing listens (or whose driver is missing): either way the
command fails, and the password must appear nowhere.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from helpers import assert_clean_error

from ktt_core.secrets import mask_secrets, mask_url

SECRET = "hunter2"


@pytest.mark.parametrize("text, masked", [
    ("postgresql://user:hunter2@h:5432/db", "postgresql://user:***@h:5432/db"),
    ("postgresql://user:hun@ter2@h/db", "postgresql://user:***@h/db"),             # '@' in the password
    ("postgresql://user:hun:ter2@h/db", "postgresql://user:***@h/db"),             # ':' in the password
    ("postgresql://user:hun%40ter2@h/db", "postgresql://user:***@h/db"),           # percent-encoded '@'
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),        # no user
    ("postgresql://h/db?user=u&password=hunter2&sslmode=require",
     "postgresql://h/db?user=u&password=***&sslmode=require"),                     # query-string password
    ("mysql+pymysql://u:hunter2@h/db?charset=utf8&PWD=hunter2", "mysql+pymysql://u:***@h/db?charset=utf8&PWD=***"),
    ("Error: --storage postgresql+psycopg2://u:hunter2@127.0.0.1:1/db: cannot open it (refused)",
     "Error: --storage postgresql+psycopg2://u:***@127.0.0.1:1/db: cannot open it (refused)"),  # inside a message
    ('connection to "host=h user=u password=hunter2" failed',
     'connection to "host=h user=u password=***" failed'),                         # libpq DSN in a driver message
])
def test_mask_secrets_on_tricky_urls(text, masked):
    assert mask_secrets(text) == masked
    assert mask_url(text) == masked
    assert SECRET not in masked and "ter2" not in masked
    assert mask_secrets(masked) == masked  # masking twice changes nothing


@pytest.mark.parametrize("text", ["sqlite:///shop.db", "sqlite:////tmp/a:b.db", "sqlite:///file:x.db?mode=ro&uri=true",
                                  "postgresql://user@h/db", "http://127.0.0.1:8080/ingest", "C:\\data\\x.csv",
                                  "sqlite:///:memory:", ""])
def test_texts_without_a_secret_are_unchanged(text):
    assert mask_secrets(text) == text
    assert mask_url(text) == text


def test_mask_url_reads_a_password_with_a_slash_as_sqlalchemy_does():
    import sqlalchemy as sa

    url = "postgresql://user:hun/ter2@h/db"
    assert sa.engine.make_url(url).password == "hun/ter2"
    assert mask_url(url) == "postgresql://user:***@h/db"
    assert mask_url("sqlite://user:hunter2@//tmp/x.db") == "sqlite://user:***@//tmp/x.db"
    assert mask_url(None) is None


def _nowhere(result, root: Path) -> None:
    """The secret is in neither the output nor any file under ``root``."""
    assert SECRET not in result.output
    assert "ter2" not in result.output
    if root.exists():
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def _shop(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE products (title TEXT, category TEXT)")
    con.executemany("INSERT INTO products VALUES (?, ?)",
                    [(f"{w} {i}", c) for i, (w, c) in enumerate([("apple", "Food > Fruit"), ("rake", "Home > Garden")] * 10)])
    con.commit()
    con.close()
    return path


def test_import_never_echoes_a_password(ktt, workspace, tmp_path):
    db = _shop(tmp_path / "shop.db")
    args = ["--text", "title", "--labels", "category", "--sep", " > "]
    # A server nobody listens on: the import fails, naming the source without its password.
    result = ktt("import", "pg", "--sql-url", f"postgresql://user:{SECRET}@127.0.0.1:1/db", "--query", "SELECT 1",
                 *args, expect=1)
    assert_clean_error(result, "sql:postgresql://user:***@127.0.0.1:1/db")
    _nowhere(result, workspace)
    # A refused statement, and a missing file, on URLs that carry a password.
    for url, query, needle in ((f"sqlite://user:{SECRET}@/{db}", "DROP TABLE products", "got DROP"),
                               (f"sqlite://user:{SECRET}@/{db}.missing", "SELECT 1", "no such database file"),
                               (f"sqlite:///{db}?password={SECRET}", "DELETE FROM products", "got DELETE")):
        result = ktt("import", "x", "--sql-url", url, "--query", query, *args, expect=1)
        assert_clean_error(result, needle, "***")
        _nowhere(result, workspace)
    # A successful import stores and prints the source masked (import.json, stdout).
    for name, url in (("a", f"sqlite://user:{SECRET}@/{db}"), ("b", f"sqlite:///{db}?password={SECRET}")):
        result = ktt("import", name, "--sql-url", url, "--query", "SELECT title, category FROM products", *args)
        assert "***" in result.output
        record = json.loads((workspace / "datasets" / name / "import.json").read_text())
        assert record["source"] == "sql:" + url.replace(SECRET, "***")
    _nowhere(result, workspace)


def test_tune_never_echoes_a_storage_password(ktt, workspace, synthetic_csv, tmp_path):
    ktt("import", synthetic_csv, "shop", "--text", "title", "--labels", "category", "--sep", " > ")
    for storage in (f"postgresql://user:{SECRET}@127.0.0.1:1/db",
                    f"sqlite://user:{SECRET}@/{tmp_path / 'no-such-folder' / 'tuning.db'}"):
        result = ktt("tune", "db_linear", "shop", "--trials", "1", "--storage", storage, expect=1)
        assert_clean_error(result, "--storage", "user:***@", "cannot open it")
        _nowhere(result, workspace)
    assert not (tmp_path / "no-such-folder").exists()
