"""Database engines: a SQLite file by default, PostgreSQL by URL. Same code on both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlmodel import create_engine


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
