"""Fixtures of the tests of the relay's SQL (tests/source/test_sql_*.py): a connection to a
database with the relay's SQL installed, and runners that return the hints a statement sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, LiteralString

import psycopg
import pytest

from tests.source.sql_support import (
    CHANNEL,
    Conn,
    HintsAfter,
    RowsAndHintsAfter,
    received_before_sentinel,
)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[Conn]:
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
async def rows_and_hints_after(db_dsn: str, conn: Conn) -> AsyncIterator[RowsAndHintsAfter]:
    """Run a statement (one transaction) on ``conn``, or ``on`` another connection; return
    the rows it returned and the hints its commit sent."""
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")

        async def run(
            query: LiteralString, params: Sequence[object] | None = None, *, on: Conn | None = None
        ) -> tuple[list[tuple[Any, ...]], list[str]]:
            await received_before_sentinel(conn, listener)  # discard the test's set-up hints
            cursor = await (on or conn).execute(query, params)
            rows = await cursor.fetchall() if cursor.description is not None else []
            return rows, await received_before_sentinel(conn, listener)

        yield run


@pytest.fixture
def hints_after(rows_and_hints_after: RowsAndHintsAfter) -> HintsAfter:
    """Run a statement (one transaction) on ``conn``, or ``on`` another connection; return
    the hints its commit sent."""

    async def run(*args: Any, **kwargs: Any) -> list[str]:
        _, hints = await rows_and_hints_after(*args, **kwargs)
        return hints

    return run
