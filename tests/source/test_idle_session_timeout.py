"""A DBA's idle_session_timeout (issue 14, item 3): the relay speaks often enough to keep its
sessions, instead of losing them every few seconds and reporting unknown."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from psycopg import sql

from relay.state.stability import State
from tests.support import eventually, execute, relay_config, running_relay, sample


@pytest.fixture
async def impatient_login(db_dsn: str) -> AsyncIterator[str]:
    """A relay login whose sessions the server ends after 1 s idle."""
    name = f"relay_idle_{uuid.uuid4().hex[:10]}"
    role = sql.Identifier(name)
    await execute(
        db_dsn,
        sql.SQL("CREATE ROLE {} LOGIN IN ROLE stability_relay").format(role).as_string(None),
        sql.SQL("ALTER ROLE {} SET idle_session_timeout = '1s'").format(role).as_string(None),
    )
    try:
        yield f"{db_dsn} user={name}"
    finally:
        await execute(db_dsn, sql.SQL("DROP ROLE {}").format(role).as_string(None))


async def test_sessions_outlive_a_short_idle_session_timeout(
    db_dsn: str, impatient_login: str
) -> None:
    config = relay_config(impatient_login, database={"heartbeat_interval": "5s"})
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: sample(relay, "relay_webhook_leader") == 1)
        await asyncio.sleep(4)  # four idle limits: without shorter heartbeats, 1 or 2 losses
        assert sample(relay, "relay_reconnects_total") == 0
        assert relay.stability.current.state is State.STABLE
        assert sample(relay, "relay_webhook_leader") == 1
        await execute(
            db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('a', 'approved')"
        )
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
