"""The read pool on a real PostgreSQL: one lifecycle, the details' statement timeout on every
connection, and failures worded as DatabaseUnavailable, never a psycopg error."""

from __future__ import annotations

import psycopg
import pytest

from relay.errors import DatabaseUnavailable
from relay.state.readpool import ReadPool
from tests.support import relay_config


async def test_the_read_pool_starts_once_and_closes_for_good(db_dsn: str) -> None:
    config = relay_config(db_dsn, details={"statement_timeout": "3s"})
    pool = ReadPool(config.database, config.details)
    with pytest.raises(DatabaseUnavailable, match="not running"):
        await pool.row("SELECT 1")
    await pool.start()
    await pool.start()  # a no-op: the same pool
    try:
        assert await pool.row("SELECT pg_catalog.current_setting('statement_timeout')") == ("3s",)
    finally:
        await pool.aclose(timeout=5)
    await pool.aclose()  # a no-op
    with pytest.raises(DatabaseUnavailable, match="not running"):
        pool.connection()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await pool.start()


async def test_a_round_trip_words_each_failure(db_dsn: str) -> None:
    config = relay_config(db_dsn)
    pool = ReadPool(config.database, config.details)
    await pool.start()
    try:
        with pytest.raises(DatabaseUnavailable) as missing:
            await pool.row("SELECT public.system_stability_no_such_function()")
        assert str(missing.value) == "details functions are missing: run `db install`"
        with pytest.raises(DatabaseUnavailable) as failed:
            await pool.row("SELECT 1 / 0")
        assert str(failed.value) == "details query failed: DivisionByZero"
        canceled = {psycopg.errors.QueryCanceled: "the test read ran past its timeout"}
        with pytest.raises(DatabaseUnavailable) as known:
            async with (
                pool.round_trip(30, "test read", "the test", canceled) as conn,
                conn.transaction(),
            ):
                await conn.execute("SET LOCAL statement_timeout = 1")
                await conn.execute("SELECT pg_catalog.pg_sleep(1)")
        assert str(known.value) == "the test read ran past its timeout"
        with pytest.raises(DatabaseUnavailable) as late:
            async with pool.round_trip(0.1, "test read", "the test") as conn:
                await conn.execute("SELECT pg_catalog.pg_sleep(5)")
        assert str(late.value) == "test read timed out"
        assert await pool.row("SELECT 2") == (2,)  # each failure gave its connection back
    finally:
        await pool.aclose()
