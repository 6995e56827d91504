"""relay/source/pg.py against a real PostgreSQL: what a relay connection is (its options, as the
server sees them), how connecting fails, and ``with_deadline`` severing a hung query."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import psycopg
import pytest

from relay.config import DatabaseConfig
from relay.errors import DatabaseReadOnly, DatabaseUnavailable
from relay.source import pg
from tests.support import eventually, execute

NAME = "tests-unit-pg"  # not the relay's application_name: the leftover check is for relays


def settings(dsn: str, **values: Any) -> DatabaseConfig:
    return DatabaseConfig(dsn=dsn, connect_timeout=2, **values)


async def server_setting(conn: psycopg.AsyncConnection[Any], name: str) -> str:
    cursor = await conn.execute("SELECT setting FROM pg_settings WHERE name = %s", (name,))
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


def test_connect_options_round_and_floor_what_libpq_takes_in_whole_units() -> None:
    options = pg.connect_options(
        DatabaseConfig(
            keepalives_idle=0.2,
            keepalives_interval=2.6,
            keepalives_count=4,
            tcp_user_timeout=1.5,
            connect_timeout=0.5,
        ),
        "name",
        server_options="-c statement_timeout=2000",
    )
    assert options["autocommit"] is True
    assert options["prepare_threshold"] is None
    assert options["application_name"] == "name"
    assert (options["keepalives"], options["keepalives_idle"]) == (1, 1)
    assert (options["keepalives_interval"], options["keepalives_count"]) == (3, 4)
    assert options["tcp_user_timeout"] == 1500
    assert options["connect_timeout"] == 2, "libpq's floor: below 2 s it means 2 s"
    words = options["options"].split()
    assert words[-2:] == ["-c", "statement_timeout=2000"], "the caller's come last"
    assert "tcp_keepalives_idle=1" in words and "tcp_user_timeout=1500" in words
    assert "synchronous_commit=local" in words
    assert "search_path=pg_catalog,pg_temp" in words


async def test_a_relay_connection_is_set_up_as_the_options_say(db_dsn: str) -> None:
    config = settings(
        db_dsn, keepalives_idle=7, keepalives_interval=3, keepalives_count=4, tcp_user_timeout=9
    )
    conn = await pg.connect(config, NAME, server_options="-c statement_timeout=1234")
    try:
        assert conn.autocommit
        assert conn.prepare_threshold is None
        assert conn.info.parameter_status("application_name") == NAME
        assert await server_setting(conn, "synchronous_commit") == "local"
        assert (await server_setting(conn, "search_path")).replace(" ", "") == "pg_catalog,pg_temp"
        assert await server_setting(conn, "statement_timeout") == "1234"
        # The server watches the peer too: a backend whose relay vanished goes in seconds.
        assert await server_setting(conn, "tcp_keepalives_idle") == "7"
        assert await server_setting(conn, "tcp_keepalives_interval") == "3"
        assert await server_setting(conn, "tcp_keepalives_count") == "4"
        assert await server_setting(conn, "tcp_user_timeout") == "9000"
        # Prepared statements stay off however often a query runs (a pooler may move us).
        for _ in range(8):
            await conn.execute("SELECT %s::int", (1,))
        cursor = await conn.execute("SELECT count(*) FROM pg_prepared_statements")
        assert await cursor.fetchone() == (0,)
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_nothing_listening_is_database_unavailable_at_once() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=x password=Unit-Pg-Secret-77"
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as raised:
        await pg.connect(settings(dsn), NAME)
    assert time.monotonic() - started < 2
    assert "Unit-Pg-Secret-77" not in str(raised.value)


async def test_an_unparsable_dsn_is_refused_without_repeating_it() -> None:
    # The config refuses such a DSN; connect() must not leak one that got past it.
    config = DatabaseConfig.model_construct(dsn="host=x password=Unit-Pg-Secret-88 = broken")
    with pytest.raises(DatabaseUnavailable) as raised:
        await pg.connect(config, NAME)
    assert "Unit-Pg-Secret-88" not in str(raised.value)
    assert "parsed" in str(raised.value)


async def test_a_read_only_server_is_told_apart(db_dsn: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    await execute(db_dsn, f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    dsn = psycopg.conninfo.make_conninfo(db_dsn, target_session_attrs="read-write")
    with pytest.raises(DatabaseReadOnly):
        await pg.connect(settings(dsn), NAME)
    # And a write refused by a read-only session reads as one, too.
    conn = await pg.connect(settings(db_dsn), NAME)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as raised:
            await conn.execute("CREATE TABLE t (x int)")
        assert pg.is_read_only(raised.value)
    finally:
        await conn.close()
    assert not pg.is_read_only(psycopg.OperationalError("connection refused"))


async def test_with_deadline_returns_what_a_quick_query_answers(db_dsn: str) -> None:
    conn = await pg.connect(settings(db_dsn), NAME)
    try:
        cursor = await pg.with_deadline(conn, conn.execute("SELECT 41 + 1"), 2.0, name="quick")
        assert await cursor.fetchone() == (42,)
        assert not conn.closed and not conn.broken
    finally:
        await conn.close()


async def backend_gone(admin_dsn: str, pid: int) -> bool:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        return await cursor.fetchone() is None


async def test_with_deadline_severs_a_hung_query_in_time(db_dsn: str) -> None:
    # The server checks every 100 ms whether its client is still there: severing shows.
    options = "-c client_connection_check_interval=100"
    conn = await pg.connect(settings(db_dsn), NAME, server_options=options)
    pid = conn.info.backend_pid
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"no answer within 0\.5s"):
            await pg.with_deadline(conn, conn.execute("SELECT pg_sleep(60)"), 0.5, name="hung")
        elapsed = time.monotonic() - started
        # The deadline, then at most the second the query gets to let go of the socket.
        assert 0.5 <= elapsed < 2.5, elapsed
        with pytest.raises(psycopg.OperationalError):
            await conn.execute("SELECT 1")
    finally:
        await conn.close()
    # Not merely given up on: the socket is shut, so the server ends the backend too.
    await eventually(lambda: backend_gone(db_dsn, pid), timeout=5)


async def test_a_cancelled_caller_is_not_swallowed_and_the_query_lets_go(db_dsn: str) -> None:
    conn = await pg.connect(settings(db_dsn), NAME)
    try:
        caller = asyncio.create_task(
            pg.with_deadline(conn, conn.execute("SELECT pg_sleep(60)"), 30.0, name="waited-on")
        )
        await asyncio.sleep(0.2)
        started = time.monotonic()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert time.monotonic() - started < 2.5
        assert caller.cancelled()
        # The query's own task is over too (the leftover-task fixture would say otherwise).
    finally:
        await conn.close()


async def test_sever_fails_whatever_is_pending_at_once(db_dsn: str) -> None:
    conn = await pg.connect(settings(db_dsn), NAME)
    try:
        query = asyncio.create_task(conn.execute("SELECT pg_sleep(60)"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        pg.sever(conn)
        with pytest.raises(psycopg.OperationalError):
            await query
        assert time.monotonic() - started < 1
    finally:
        await conn.close()
    pg.sever(conn)  # on a closed connection: nothing to do, no error


async def test_the_idle_limit_is_the_sessions_idle_session_timeout(db_dsn: str) -> None:
    conn = await pg.connect(settings(db_dsn), NAME)
    try:
        assert await pg.idle_limit(conn) is None
        await conn.execute("SET idle_session_timeout = '10s'")
        assert await pg.idle_limit(conn) == 10.0
        await conn.execute("SET idle_session_timeout = 2500")  # milliseconds
        assert await pg.idle_limit(conn) == 2.5
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("interval", "limit", "expected"),
    [(5.0, None, 5.0), (5.0, 10.0, 4.0), (5.0, 20.0, 5.0), (60.0, 1.0, 0.4)],
)
def test_an_interval_within_the_idle_limit(
    interval: float, limit: float | None, expected: float
) -> None:
    assert pg.within_idle_limit(interval, limit) == pytest.approx(expected)


def test_session_settings_leave_the_server_side_keepalives_to_a_pooler() -> None:
    options = pg.connect_options(DatabaseConfig(), "n", server_options="-c statement_timeout=7")
    assert pg.session_settings(options["options"]) == [
        ("synchronous_commit", "local"),
        ("search_path", "pg_catalog,pg_temp"),
        ("statement_timeout", "7"),
    ]
    assert pg.session_settings("") == []
    statement = pg.set_configs([("a", "1"), ("b", "2")])
    pair = "pg_catalog.set_config(%s::text, %s::text, false)"
    assert statement == f"SELECT {pair}, {pair}"


async def test_set_configs_sets_each_pair_for_the_session(db_dsn: str) -> None:
    pairs = pg.session_settings("-c statement_timeout=4321 -c synchronous_commit=local")
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
        await conn.execute(pg.set_configs(pairs), [v for pair in pairs for v in pair])
        assert await server_setting(conn, "statement_timeout") == "4321"
        assert await server_setting(conn, "synchronous_commit") == "local"


def test_a_poolers_refusal_of_options_is_recognised() -> None:
    refusal = psycopg.OperationalError(
        'connection to server at "127.0.0.1", port 6432 failed: FATAL:  '
        "unsupported startup parameter: options"
    )
    assert pg.refuses_options(refusal)
    assert not pg.refuses_options(psycopg.OperationalError("unsupported startup parameter: x"))
    assert not pg.refuses_options(psycopg.OperationalError("password authentication failed"))


def test_errors_are_described_by_their_first_line_or_each_attempt() -> None:
    assert pg.describe_error(TimeoutError()) == "timed out"
    assert pg.describe_error(OSError()) == "OSError"
    assert pg.describe_error(ValueError("first\nsecond")) == "first"
    multi = (
        f"{pg.MULTIPLE_ATTEMPTS}\n"
        "- host: 'a', port: None, hostaddr: '10.0.0.1': connection refused\n"
        "- host: 'b', port: None, hostaddr: '10.0.0.2': timeout expired\n"
    )
    described = pg.describe_error(psycopg.OperationalError(multi))
    assert described.count("; ") == 1
    assert "connection refused" in described and "timeout expired" in described


@pytest.mark.parametrize(
    ("dsn", "count"),
    [("host=a", 1), ("host=a,b,c port=1,2,3", 3), ("", 1), ("dbname=x", 1)],
)
def test_hosts_counts_what_libpq_will_try(dsn: str, count: int) -> None:
    assert pg.hosts(dsn) == count
