"""`ColumnArrays`: a batch inserted as column arrays on the real PostgreSQL stores what a Core insert stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa

from shinchoku_runtime.db import ColumnArrays, make_engine

JST = timezone(timedelta(hours=9))

metadata = sa.MetaData()
table = sa.Table(
    "sample",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(16)),
    sa.Column("note", sa.Text),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("raw", sa.LargeBinary),
)
COLUMNS = ("seq", "code", "note", "at", "raw")

ROWS = [
    (1, "mof", "順調に進捗（第２四半期）", datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=JST), b"\x00\xff{}"),
    (2, None, None, None, None),
    (3, "digital", 'quote " comma , brace { } backslash \\ tab \t newline \n', datetime(2025, 4, 1, tzinfo=UTC), b""),
    (4, "x" * 16, "", datetime(1999, 12, 31, 15, tzinfo=UTC), bytes(range(256))),
]


def stored(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(table).order_by(table.c.seq))]


def test_column_arrays_store_what_core_stores_and_count_conflicts(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        metadata.create_all(engine)
        insert = ColumnArrays(table, COLUMNS)
        with engine.begin() as conn:
            assert insert.insert(conn, ROWS) == len(ROWS)
            assert insert.insert(conn, []) == 0
        by_arrays = stored(engine)
        with engine.begin() as conn:
            conn.execute(table.delete())
            conn.execute(table.insert(), [dict(zip(COLUMNS, row, strict=True)) for row in ROWS])
        assert by_arrays == stored(engine)
        assert by_arrays[0][3] == ROWS[0][3]  # the same instant, whatever the offset it came with

        # Two rows already there, one new, one repeated within the batch: only the new one goes in.
        again = [ROWS[0], (5, "new", None, None, None), ROWS[3], (5, "twice", None, None, None)]
        with engine.begin() as conn:
            assert insert.insert(conn, again) == 1
        assert [row[:2] for row in stored(engine)][-1] == (5, "new")

        # Rolled back with the transaction it ran in.
        try:
            with engine.begin() as conn:
                insert.insert(conn, [(6, None, None, None, None)])
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        assert [row[0] for row in stored(engine)] == [1, 2, 3, 4, 5]
    finally:
        engine.dispose()
