"""Shared fixtures: a PostgreSQL server for the session and a fresh database per test.

Set RELAY_TEST_DSN (a superuser DSN) to test against an external server instead of the
embedded one; tests that must stop and start the server are then skipped.

Every test must clean up after itself: one that leaves asyncio tasks of its own running
(``no_tasks_left_behind``), or relay connections open in its database (``db_dsn``), fails.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from relay.devtools.embedded import EmbeddedPostgres
from relay.source.install import install

EXTERNAL_DSN = os.environ.get("RELAY_TEST_DSN")
# How long a task cancelled at the very end, or a backend whose client just closed, gets to go.
GRACE_SECONDS = 1.0


@pytest.fixture(autouse=True)
def no_tasks_left_behind(request: pytest.FixtureRequest) -> None:
    """Fail an async test that leaves asyncio tasks of its own pending: a relay never closed,
    a watcher never cancelled. Sync tests are left alone (no loop of pytest-asyncio's may run
    under them: Playwright's sync API runs its own)."""
    if inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        request.getfixturevalue("_no_tasks_left_behind")


@pytest.fixture
async def _no_tasks_left_behind() -> AsyncIterator[None]:
    """Tasks that existed before the test (the loop's, pytest-asyncio's and pytest-aiohttp's)
    are not its own; set up first, this is torn down after every other fixture of the test,
    so what their teardowns end is not counted either."""
    before = asyncio.all_tasks()
    yield
    this = asyncio.current_task()
    left = {t for t in asyncio.all_tasks() - before if t is not this and not t.done()}
    if left:
        # One short chance for tasks cancelled just now to finish.
        await asyncio.wait(left, timeout=GRACE_SECONDS)
        left = {t for t in left if not t.done()}
    if not left:
        return
    for task in left:
        task.cancel()
    await asyncio.wait(left, timeout=GRACE_SECONDS)
    names = sorted(_describe(t) for t in left)
    pytest.fail(f"the test left {len(names)} asyncio task(s) pending: {names}", pytrace=False)


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", None) or repr(coro)
    return f"{task.get_name()} ({where})"


RELAY_BACKENDS = (
    "SELECT pid, application_name, state, left(query, 60) FROM pg_stat_activity "
    "WHERE datname = %s AND backend_type = 'client backend' "
    "AND application_name LIKE 'stability-relay%%' AND pid <> pg_backend_pid()"
)


async def _relay_backends_left(
    admin: psycopg.AsyncConnection[tuple[Any, ...]], dbname: str
) -> list[tuple[Any, ...]]:
    """The relay's sessions still in ``dbname``, once closing ones have had time to go."""
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        cursor = await admin.execute(RELAY_BACKENDS, (dbname,))
        rows = list(await cursor.fetchall())
        if not rows or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


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
    # the hint path (tests/source/test_hold.py covers starting on a parked flag).
    await install(dsn, demo_schema=True, park=False)
    yield dsn
    if pg_server is not None:
        pg_server.start()  # in case the test stopped it
    async with await psycopg.AsyncConnection.connect(pg_admin_dsn, autocommit=True) as admin:
        # Any session of the relay's still there is a leak, one that only the garbage
        # collector would end included (a connection dropped unclosed).
        left = await _relay_backends_left(admin, dbname)
        await admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
    if left:
        pytest.fail(f"the test left relay sessions in its database: {left}", pytrace=False)


@pytest.fixture
def restartable_pg(pg_server: EmbeddedPostgres | None) -> Iterator[EmbeddedPostgres]:
    """The embedded server, for tests that stop and start it; left running afterwards."""
    if pg_server is None:
        pytest.skip("RELAY_TEST_DSN is set: the tests cannot stop and start an external server")
    yield pg_server
    pg_server.start()
