"""Leader election with a PostgreSQL advisory lock: one sender of webhooks per database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import psycopg
import pytest
import structlog
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.config import DatabaseConfig
from relay.devtools.embedded import EmbeddedPostgres
from relay.source import election as leader
from relay.source import pg
from relay.source.election import LOCK_KEY, Leadership
from tests.scenarios.faults.proxy import SilentProxy
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


async def test_a_failing_callback_is_logged_and_repeated_until_it_succeeds(db_dsn: str) -> None:
    """A webhook sender that failed to start must not leave a leader that sends nothing."""
    calls: list[bool] = []

    async def flaky(leading: bool) -> None:
        calls.append(leading)
        if len(calls) == 1:
            raise RuntimeError("the webhook sender could not start")

    leadership = Leadership(relay_config(db_dsn).database, flaky, interval=INTERVAL)
    with structlog.testing.capture_logs() as logs:
        await leadership.start()
        try:
            await eventually(lambda: calls == [True, True], timeout=5)
            await asyncio.sleep(INTERVAL * 3)
            assert calls == [True, True], "once it succeeded, it is not called again"
            assert leadership.is_leader
        finally:
            await leadership.aclose()
    assert [line["event"] for line in logs].count("leader_change_failed") == 1
    with pytest.raises(RuntimeError):
        await leadership.start()


async def test_an_unexpected_error_in_a_session_is_logged_and_the_election_goes_on(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = leader.connect
    failed: list[bool] = []

    async def buggy_once(
        settings: DatabaseConfig, connector: pg.Connector = pg.DEFAULT_CONNECTOR
    ) -> psycopg.AsyncConnection[Any]:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug, not a database error")
        return await real_connect(settings, connector)

    monkeypatch.setattr(leader, "connect", buggy_once)
    with structlog.testing.capture_logs() as logs:
        async with candidates(db_dsn, 1) as (only,):
            await eventually(lambda: only.leading, timeout=5)
    assert "leader_session_failed" in [line["event"] for line in logs]


async def test_the_lock_connection_asks_the_server_for_keepalives(db_dsn: str) -> None:
    """The server side must notice a vanished leader in seconds (it holds the lock), not
    after the OS default of two hours: the settings come from the config."""
    database = {
        "keepalives_idle": "7s",
        "keepalives_interval": "3s",
        "keepalives_count": 4,
        "tcp_user_timeout": "12s",
    }
    settings = relay_config(db_dsn, database=database).database
    async with await leader.connect(settings) as conn:
        cursor = await conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle',"
            " 'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout')"
        )
        server_side = dict(await cursor.fetchall())
    assert server_side == {
        "tcp_keepalives_idle": "7",
        "tcp_keepalives_interval": "3",
        "tcp_keepalives_count": "4",
        "tcp_user_timeout": "12000",
    }


def via(proxy_port: int, dsn: str) -> str:
    return make_conninfo(dsn, host="127.0.0.1", port=proxy_port)


def server_port(dsn: str) -> int:
    return int(conninfo_to_dict(dsn)["port"])


async def lock_holder(dsn: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else None


async def backend_exists(dsn: str, pid: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        return await cursor.fetchone() is not None


async def test_a_leader_cut_off_half_open_ends_its_old_backend_and_keeps_leading(
    db_dsn: str,
) -> None:
    """Its old backend still holds the lock (the server has not noticed the cut): the
    leader ends it on reconnecting, instead of stepping down until the server gives up."""
    async with SilentProxy(server_port(db_dsn)) as proxy:
        async with candidates(via(proxy.port, db_dsn), 1) as (only,):
            await eventually(lambda: only.leading)
            old = await lock_holder(db_dsn)
            assert old is not None
            proxy.cut()

            async def relocked() -> bool:
                return (await lock_holder(db_dsn)) not in (None, old)

            await eventually(relocked, timeout=10)
            assert not await backend_exists(db_dsn, old)
            assert only.changes == [True], "it never stepped down"


async def test_closing_mid_query_leaves_no_query_running(db_dsn: str) -> None:
    async def ignore(_leading: bool) -> None:
        pass

    async with SilentProxy(server_port(db_dsn)) as proxy:
        settings = relay_config(via(proxy.port, db_dsn), database={"heartbeat_timeout": "30s"})
        leadership = Leadership(settings.database, ignore, interval=INTERVAL)
        await leadership.start()
        try:
            await eventually(lambda: leadership.is_leader)
            proxy.pause()
            await asyncio.sleep(INTERVAL * 3)  # a heartbeat is on the wire, unanswered
        finally:
            await leadership.aclose()
        proxy.resume()
        current = asyncio.current_task()
        running = [
            task
            for task in asyncio.all_tasks()
            if task is not current and not task.done() and task.get_name() != "proxy-pipe"
        ]
        assert running == []
