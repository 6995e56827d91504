"""Leader election with a PostgreSQL advisory lock: one sender of webhooks per database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import psycopg
import pytest

from relay.config import DatabaseConfig
from relay.embedded import EmbeddedPostgres
from relay.leader import LOCK_KEY, Leadership
from tests.support import eventually, relay_config

INTERVAL = 0.2


class Candidate:
    """One relay's leadership, recording every change it was told about."""

    def __init__(self, settings: DatabaseConfig, name: str) -> None:
        self.name = name
        self.changes: list[bool] = []
        self.leadership = Leadership(settings, self._changed, interval=INTERVAL)

    async def _changed(self, leading: bool) -> None:
        self.changes.append(leading)

    @property
    def leading(self) -> bool:
        return self.leadership.is_leader


@asynccontextmanager
async def candidates(dsn: str, count: int) -> AsyncIterator[list[Candidate]]:
    settings = relay_config(dsn).database
    async with AsyncExitStack() as stack:
        found = []
        for index in range(count):
            candidate = Candidate(settings, f"relay-{index}")
            await candidate.leadership.start()
            stack.push_async_callback(candidate.leadership.aclose)
            found.append(candidate)
        yield found


def leaders(group: list[Candidate]) -> list[Candidate]:
    return [c for c in group if c.leading]


async def test_one_of_three_leads_and_another_takes_over_when_it_stops(db_dsn: str) -> None:
    async with candidates(db_dsn, 3) as group:
        await eventually(lambda: len(leaders(group)) == 1)
        first = leaders(group)[0]
        assert first.changes == [True]
        await first.leadership.aclose()  # its connection closes: PostgreSQL frees the lock
        rest = [c for c in group if c is not first]
        await eventually(lambda: len(leaders(rest)) == 1, timeout=5)
        # Never two at once among those still running.
        for _ in range(10):
            assert len(leaders(rest)) == 1
            await asyncio.sleep(INTERVAL / 2)


async def test_a_leader_that_finds_the_lock_taken_steps_down(db_dsn: str) -> None:
    """Its connection is cut, and meanwhile someone else holds the lock: it must yield."""
    async with candidates(db_dsn, 1) as (only,):
        await eventually(lambda: only.leading)
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as other:
            await other.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE '%(leader election)'"
            )
            await other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            await eventually(lambda: not only.leading, timeout=10)
            assert only.changes == [True, False]
        # The other holder is gone: it leads again.
        await eventually(lambda: only.leading, timeout=10)
        assert only.changes == [True, False, True]


async def test_leader_keeps_leading_through_a_database_outage(
    restartable_pg: EmbeddedPostgres, db_dsn: str
) -> None:
    """A lone relay must go on sending (an `unknown` webhook) while PostgreSQL is down."""
    async with candidates(db_dsn, 1) as (only,):
        await eventually(lambda: only.leading)
        restartable_pg.stop(mode="immediate")
        try:
            for _ in range(10):
                assert only.leading
                await asyncio.sleep(0.1)
        finally:
            restartable_pg.start()
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:

            async def holds_lock() -> bool:
                cursor = await conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                )
                row = await cursor.fetchone()
                return row is not None and row[0] == 1

            await eventually(holds_lock, timeout=15)
        assert only.changes == [True]


async def test_a_failing_callback_is_logged_and_leadership_goes_on(db_dsn: str) -> None:
    calls: list[bool] = []

    async def broken(leading: bool) -> None:
        calls.append(leading)
        raise RuntimeError("the webhook sender could not start")

    leadership = Leadership(relay_config(db_dsn).database, broken, interval=INTERVAL)
    await leadership.start()
    try:
        await eventually(lambda: leadership.is_leader)
        assert calls == [True]
    finally:
        await leadership.aclose()
    with pytest.raises(RuntimeError):
        await leadership.start()
