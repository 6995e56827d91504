"""Server-side terminations (issue 14, item 3, the remainder): the disconnect log names the
server's own reason, and sessions that never last long enough to reset the backoff are
detected and reported once, with the likely causes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog

from relay.backoff import STUCK_AFTER
from relay.devtools.embedded import EmbeddedPostgres
from relay.source.install import install
from relay.state.stability import State
from tests.support import events, eventually, relay_config, running_relay


@pytest.fixture
def own_server() -> Iterator[EmbeddedPostgres]:
    """A server of this test's own: it changes a server-wide setting."""
    with EmbeddedPostgres() as server:
        yield server


async def test_the_disconnect_log_names_the_servers_reason(own_server: EmbeddedPostgres) -> None:
    """A DBA sets idle_session_timeout server-wide while the relay runs: the sessions it has
    were timed for no limit, and the server ends the listener's after 1 s idle. The FATAL
    arrives while no query runs; the log must carry it, not just `connection is bad`."""
    dsn = own_server.create_database("stuck")
    await install(dsn, demo_schema=True, park=False)
    config = relay_config(dsn, database={"heartbeat_interval": "5s"})
    with structlog.testing.capture_logs() as logs:
        async with running_relay(config) as relay:
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
                await admin.execute("ALTER SYSTEM SET idle_session_timeout = '1s'")
                await admin.execute("SELECT pg_reload_conf()")

            def lost() -> list[dict[str, Any]]:
                return [e for e in events(logs, "database_disconnected") if e["attempt"]]

            await eventually(lambda: bool(lost()), 10)
            assert "terminating connection due to idle-session timeout" in lost()[0]["reason"]
            # The next session reads the limit and speaks often enough (0.4 x 1 s).
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            assert events(logs, "heartbeat_shortened")


async def test_sessions_that_never_last_are_reported_once_with_the_likely_causes(
    db_dsn: str,
) -> None:
    """A DBA's job ends the relay's session half a second after it starts, each time: every
    session ends long before reconnect_reset_after, so the backoff never resets."""

    async def reaper() -> None:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as admin:
            while True:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'stability-relay' "
                    "AND backend_start < now() - interval '0.5 s'"
                )
                await asyncio.sleep(0.1)

    config = relay_config(db_dsn)
    with structlog.testing.capture_logs() as logs:
        async with running_relay(config) as relay:
            job = asyncio.create_task(reaper(), name="test-reaper")
            try:
                listener = relay.listener
                await eventually(lambda: listener.short_sessions >= STUCK_AFTER, 30)
                assert listener.backoff_stuck
                registry = relay.metrics.registry
                assert registry.get_sample_value("relay_reconnect_backoff_stuck") == 1
                # Reported once per streak, however long it lasts.
                await eventually(lambda: listener.short_sessions >= STUCK_AFTER + 2, 30)
                assert listener.backoff_stuck_total == 1
                assert registry.get_sample_value("relay_reconnect_backoff_stuck_streaks_total") == 1
            finally:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
    (stuck,) = events(logs, "reconnect_backoff_stuck")
    assert stuck["short_sessions"] == STUCK_AFTER
    assert stuck["last_session_s"] < config.database.reconnect_reset_after
    for cause in ("idle_session_timeout", "server_idle_timeout", "proxy", "terminating"):
        assert cause in stuck["likely_causes"]
    # And the disconnect says who ended it: the server's own message.
    assert "terminating connection due to administrator command" in stuck["last_reason"]
