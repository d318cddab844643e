"""Reading the result of one query from a SQL database, without ever changing the database.

The importer only reads, so a query must never write, whatever the user typed:

* :func:`check_query` refuses anything but one query (``SELECT``, ``WITH ... SELECT``,
  ``VALUES``) before it runs, so a typo or a pasted script gets a clear message;
* :func:`read_query` opens SQLite read-only (``mode=ro``, ``PRAGMA query_only``), never
  creating a database file, and other databases in a read-only transaction where the
  dialect has one, always rolled back. This is the real guarantee; the check above only
  makes the message clear.

Every message names the source by its URL with any password masked (:func:`source_name`).
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote

import pandas as pd

from ktt_core.errors import KttError
from ktt_core.secrets import mask_url

QUERY_VERBS = ("SELECT", "VALUES")
# Statements a WITH clause may lead into; only SELECT and VALUES read.
_WITH_TARGETS = {"SELECT", "VALUES", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"}
# Statement openers of each dialect that start a read-only transaction.
_READ_ONLY_TRANSACTION = {
    "postgresql": "SET TRANSACTION READ ONLY",
    "oracle": "SET TRANSACTION READ ONLY",
    "mysql": "START TRANSACTION READ ONLY",
    "mariadb": "START TRANSACTION READ ONLY",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def source_name(sql_url: str) -> str:
    """How a SQL source is named in messages and in import.json: ``sql:`` and its URL,
    password masked."""
    return "sql:" + mask_url(str(sql_url))


def _tokens(query: str):
    """(kind, text, depth, start) of each word, ``;`` and other symbol of ``query``, outside
    comments and quoted strings or identifiers; ``depth`` is the parenthesis depth."""
    i, n, depth = 0, len(query), 0
    while i < n:
        ch = query[i]
        if ch.isspace():
            i += 1
        elif query.startswith("--", i):
            end = query.find("\n", i)
            i = n if end < 0 else end + 1
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif ch in "'\"`[":
            close = "]" if ch == "[" else ch
            j = i + 1
            while j < n:
                if query[j] == close:
                    if close != "]" and query.startswith(close * 2, j):  # '' inside a string
                        j += 2
                        continue
                    break
                j += 1
            yield ("quoted", query[i:j + 1], depth, i)
            i = j + 1
        elif ch == "$" and (m := re.match(r"\$([A-Za-z_]*)\$", query[i:])):  # PostgreSQL $tag$...$tag$
            end = query.find(m.group(0), i + len(m.group(0)))
            yield ("quoted", "$", depth, i)
            i = n if end < 0 else end + len(m.group(0))
        elif m := _WORD.match(query, i):
            yield ("word", m.group(0).upper(), depth, i)
            i = m.end()
        else:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth = max(depth - 1, 0)
            yield ("symbol", ch, depth, i)
            i += 1


def check_query(query: str, name: str) -> str:
    """Refuse ``query`` unless it is one statement that only reads (see the module doc);
    return it without its trailing ``;`` (drivers refuse more than one statement)."""
    tokens = list(_tokens(query))
    ends = [k for k, (kind, text, _, _) in enumerate(tokens) if kind == "symbol" and text == ";"]
    statement = query
    if ends:
        statement = query[:tokens[ends[0]][3]]
        rest = [t for t in tokens[ends[0] + 1:] if t[1] != ";"]
        if rest:
            raise KttError(f"{name}: --query must be one SELECT statement; got a second statement "
                           f"after ';' ({rest[0][1][:20]})")
        tokens = tokens[:ends[0]]
    words = [(text, depth) for kind, text, depth, _ in tokens if kind == "word"]
    if not words:
        raise KttError(f"{name}: --query must be one SELECT statement; got no statement")
    verb = words[0][0]
    if verb == "WITH":
        # The CTE bodies are in parentheses; the statement they lead into is the first
        # reading or writing verb outside them.
        verb = next((text for text, depth in words[1:] if depth == 0 and text in _WITH_TARGETS), "WITH")
    if verb not in QUERY_VERBS:
        raise KttError(f"{name}: --query must be one SELECT statement; got {verb}")
    if any(text == "INTO" for text, _ in words):
        # SELECT ... INTO creates a table (PostgreSQL, SQL Server) or a file (MySQL OUTFILE).
        raise KttError(f"{name}: --query must be one SELECT statement; got SELECT ... INTO, which writes")
    return statement


def _sqlite_path(url, name: str) -> str:
    """The absolute path of the SQLite database file ``url`` names; refuses in-memory and
    missing databases (SQLite would create an empty one, and there would be nothing to read)."""
    database = url.database or ""
    uri = str(url.query.get("uri", "")).lower() in ("true", "1", "yes")
    if uri and database.startswith("file:"):
        if str(url.query.get("mode", "")).lower() == "memory":
            database = ":memory:"
        else:
            path = database[len("file:"):].split("?", 1)[0].split("#", 1)[0]
            if path.startswith("//"):  # file://host/path: only an empty host or localhost
                host, _, rest = path[2:].partition("/")
                if host not in ("", "localhost"):
                    raise KttError(f"{name}: a SQLite file URI on host '{host}' cannot be opened")
                path = "/" + rest
            database = unquote(path)
    if database in ("", ":memory:"):
        raise KttError(f"{name}: an in-memory SQLite database holds nothing to read; "
                       "give a database file (sqlite:///path/to/file.db)")
    path = os.path.abspath(os.path.expanduser(database))
    if not os.path.exists(path):
        raise KttError(f"{name}: no such database file '{database}'")
    if os.path.isdir(path):
        raise KttError(f"{name}: '{database}' is a directory, not a database file")
    return path


def _sqlite_wal_idle(path: str) -> str:
    """``&immutable=1`` for a WAL-mode database that no connection has open (no -wal or
    -shm file beside it): even read-only, SQLite would otherwise leave those two files
    behind. A database in use, or in rollback-journal mode, is opened as it is."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(20)
    except OSError:
        return ""
    wal = header.startswith(b"SQLite format 3\x00") and header[18:20] == b"\x02\x02"
    if wal and not any(os.path.exists(path + suffix) for suffix in ("-wal", "-shm")):
        return "&immutable=1"
    return ""


def _sqlite_engine(path: str):
    import sqlite3

    import sqlalchemy as sa

    reading = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
               sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT}

    def authorize(action, arg1, arg2, database, trigger):
        # ATTACH of a missing file creates it even on a read-only connection; a PRAGMA with a
        # value may undo query_only. Only reading actions and PRAGMAs that only read pass.
        if action in reading or (action == sqlite3.SQLITE_PRAGMA and arg2 is None):
            return sqlite3.SQLITE_OK
        return sqlite3.SQLITE_DENY

    def connect():
        # mode=ro: SQLite refuses every write to the file and never creates it;
        # query_only and the authorizer refuse the rest.
        connection = sqlite3.connect(f"file:{quote(path)}?mode=ro{_sqlite_wal_idle(path)}", uri=True,
                                     check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")
        connection.set_authorizer(authorize)
        return connection

    return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.NullPool)


def read_query(sql_url: str | None, query: str | None) -> pd.DataFrame:
    """The rows ``query`` returns from the database at ``sql_url``, read without writing."""
    import sqlalchemy as sa

    if not sql_url:
        raise KttError("--query needs --sql-url (the database to run it on)")
    name = source_name(sql_url)
    try:
        url = sa.engine.make_url(sql_url)
    except sa.exc.ArgumentError as exc:
        raise KttError(f"--sql-url '{mask_url(sql_url)}': not a valid database URL "
                       f"(expected e.g. sqlite:///shop.db): {_one_line(exc)}") from exc
    if query is None or not str(query).strip():
        raise KttError(f"{name}: --query is required with --sql-url")
    statement = check_query(str(query), name)
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(_sqlite_path(url, name))
        else:
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise KttError(f"{name}: cannot open the database: {_one_line(exc)}") from exc
    try:
        conn = engine.connect()
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        engine.dispose()
        raise KttError(f"{name}: cannot connect to the database: "
                       f"{_one_line(getattr(exc, 'orig', None) or exc)}") from exc
    try:
        with conn:
            try:
                if backend in _READ_ONLY_TRANSACTION:
                    conn.exec_driver_sql(_READ_ONLY_TRANSACTION[backend])
                df = pd.read_sql_query(statement, conn)
            finally:
                conn.rollback()  # never commit: nothing the query did is kept
    except sa.exc.DBAPIError as exc:
        raise KttError(f"{name}: query failed: {_one_line(exc.orig)}") from exc
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError, ValueError, TypeError) as exc:
        raise KttError(f"{name}: query failed: {_one_line(exc)}") from exc
    finally:
        engine.dispose()
    if len(df) == 0:
        raise KttError(f"{name}: the query returned no rows")
    return df


def _one_line(value) -> str:
    """``str(value)`` on one line, any password in it masked (driver messages may quote the URL)."""
    text = " ".join(str(value).split()) or type(value).__name__
    return mask_url(text)
