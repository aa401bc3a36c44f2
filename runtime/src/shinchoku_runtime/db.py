"""Database engines: a SQLite file by default, PostgreSQL by URL. Same code on both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, String, Table, event, text
from sqlalchemy.dialects import postgresql
from sqlmodel import create_engine

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def in_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`asyncio.to_thread` for database work, except that a cancelled caller waits for the thread to finish
    before its CancelledError goes on.

    A thread cannot be interrupted: with `to_thread` the caller's task ends at once while its statement runs on,
    and whoever cancelled it goes on too (a service stopping disposes of its engine, a test drops the database).
    The thread then returns its connection to a pool already disposed of (left open, idle), or keeps what it took
    (a lock, a connection idle in transaction) with nobody left to release it. Waiting costs at most one
    statement's time; a second cancellation does not wait.
    """
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: the caller is cancelled, the thread's outcome is nobody's now
        raise


def sqlite_url(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def normalise_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for the service's workload: WAL and full fsync on SQLite, pre-ping on PostgreSQL."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # Acks follow commits: a committed decision must survive a crash of the machine too.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, **kwargs)


def size_sqlite_cache(engine: Engine, *, cache_kib: int, mmap_bytes: int) -> Engine:
    """Give a SQLite engine a page cache and memory-mapped reads sized for its store (no-op on PostgreSQL).

    A store keyed by random UUIDs touches index pages all over the file on every insert; with SQLite's
    default 2 MB cache, once the indexes outgrow it each insert goes to the file for its pages.
    """
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _cache(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
            cursor.execute(f"PRAGMA mmap_size={int(mmap_bytes)}")
            cursor.execute("PRAGMA temp_store=MEMORY")
            cursor.close()

    return engine


def serialize_schema_changes(conn: Connection, store: str) -> None:
    """Inside a transaction: let one process at a time create or change `store`'s tables (PostgreSQL).

    Replicas of a service start together; each finds the tables missing and creates them, and on PostgreSQL
    the second `CREATE TABLE` fails (or collides in the catalog) while the first is uncommitted. A
    transaction-level advisory lock makes the others wait and then find the tables. SQLite serialises
    writers itself.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"shinchoku schema {store}"})


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


class ColumnArrays:
    """`INSERT … SELECT * FROM unnest(…) ON CONFLICT DO NOTHING` on PostgreSQL: a whole batch in one statement.

    Each column's values go as one array in PostgreSQL's binary format. An `executemany` through SQLAlchemy
    (insertmanyvalues, RETURNING to count what went in) cost ~200 µs of client CPU per row in psycopg's text
    adaptation and ~275 ms per 1,000 rows; this costs ~13 µs and ~50 ms (measured on the ingest decision
    table, PostgreSQL on the same 2-core machine). One statement, so its row count is exact: the rows that
    did not go in because of a conflict are `len(rows) - inserted`.
    """

    def __init__(self, table: Table, columns: Sequence[str], *, conflict: str = "ON CONFLICT DO NOTHING") -> None:
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        self.columns = tuple(columns)
        arrays = ", ".join(f"%b::{_array_element(table.c[name].type, dialect)}[]" for name in self.columns)
        self.sql = (
            f'INSERT INTO "{table.name}" ({", ".join(self.columns)}) SELECT * FROM unnest({arrays}) {conflict}'.strip()
        )

    def insert(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> int:
        """Insert `rows` (tuples in `columns` order) in the connection's transaction; the number inserted."""
        if not rows:
            return 0
        arrays = [list(values) for values in zip(*rows, strict=True)]
        cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, arrays)
            return int(cursor.rowcount)
        finally:
            cursor.close()


def _array_element(column_type: Any, dialect: Any) -> str:
    """The SQL type of a column's values in the array: text for any string (the column's own length and
    collation apply when the row goes in; `VARCHAR(36) COLLATE "C"[]` is no type)."""
    impl = column_type.dialect_impl(dialect)
    if isinstance(impl, String) or isinstance(getattr(impl, "impl", None), String):  # TypeDecorators included
        return "TEXT"
    return str(impl.compile(dialect=dialect))
