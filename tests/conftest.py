"""Shared fixtures: a PostgreSQL server for the session and a fresh database per test.

Set RELAY_TEST_DSN (a superuser DSN) to test against an external server instead of the
embedded one; tests that must stop and start the server are then skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from relay.dbinstall import install
from relay.embedded import EmbeddedPostgres

EXTERNAL_DSN = os.environ.get("RELAY_TEST_DSN")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    if EXTERNAL_DSN:
        yield None
        return
    with EmbeddedPostgres() as server:
        yield server


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server: EmbeddedPostgres | None) -> str:
    if pg_server is None:
        assert EXTERNAL_DSN
        return EXTERNAL_DSN
    return pg_server.dsn()


@pytest.fixture
async def db_dsn(pg_server: EmbeddedPostgres | None, pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database with the demo schema, the relay's SQL and its role; dropped afterwards."""
    dbname = f"test_{uuid.uuid4().hex}"
    name = sql.Identifier(dbname)
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    dsn = psycopg.conninfo.make_conninfo(pg_admin_dsn, dbname=dbname)
    # Unparked, as a relay that ran and released its hold leaves it: a test's relay starts on
    # the hint path (tests/test_hold.py covers starting on a parked flag).
    await install(dsn, demo_schema=True, park=False)
    yield dsn
    if pg_server is not None:
        pg_server.start()  # in case the test stopped it
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


@pytest.fixture
def restartable_pg(pg_server: EmbeddedPostgres | None) -> Iterator[EmbeddedPostgres]:
    """The embedded server, for tests that stop and start it; left running afterwards."""
    if pg_server is None:
        pytest.skip("RELAY_TEST_DSN is set: the tests cannot stop and start an external server")
    yield pg_server
    pg_server.start()
