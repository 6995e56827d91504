"""The listener's connection: losing it, getting it back, and telling clients meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import psycopg

from relay.devtools.embedded import EmbeddedPostgres
from relay.source.listener import Listener
from relay.state.stability import State
from tests.support import (
    base_url,
    eventually,
    execute,
    relay_config,
    running_relay,
    sample,
    sse_connect,
)


async def _listener_pid(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'stability-relay'"
        )
        rows = await cursor.fetchall()
        assert len(rows) == 1, rows
        return int(rows[0][0])


async def test_reconnects_after_backend_terminated(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        await eventually(lambda: relay.listener.connected.is_set())
        old_pid = await _listener_pid(db_dsn)
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            assert (await client.next_event()).json["stable"] is True
            await execute(db_dsn, f"SELECT pg_terminate_backend({old_pid})")
            assert (await client.next_event()).json["stable"] is None
            back = await client.next_event()
            assert back.json["stable"] is True
        new_pid = await _listener_pid(db_dsn)
        assert new_pid != old_pid
        assert sample(relay, "relay_reconnects_total") >= 1
        # The re-established LISTEN works: a flip still arrives.
        await execute(
            db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('x', 'approved')"
        )
        await eventually(lambda: relay.stability.current.state is State.PROCESSING, timeout=5)


async def test_clients_see_null_during_outage_then_truth_and_readyz_follows(
    restartable_pg: EmbeddedPostgres, db_dsn: str
) -> None:
    async with running_relay(relay_config(db_dsn)) as relay, aiohttp.ClientSession() as http:
        url = base_url(relay)
        await eventually(lambda: relay.listener.connected.is_set())
        async with http.get(url + "/readyz") as ready:
            assert ready.status == 200
        async with sse_connect(url + "/api/system-status/live", session=http) as client:
            assert (await client.next_event()).json["stable"] is True
            restartable_pg.stop(mode="immediate")
            outage = await client.next_event(timeout=10)
            assert outage.json == {**outage.json, "stable": None, "state": "unknown"}
            async with http.get(url + "/readyz") as ready:
                assert ready.status == 503
            async with http.get(url + "/api/system-status") as snapshot:
                body = await snapshot.json()
                assert body["stable"] is None
                assert body["database_connected"] is False
            # A client connecting during the outage is served, and told "unknown".
            async with sse_connect(url + "/api/system-status/live", session=http) as late:
                assert (await late.next_event()).json["stable"] is None
                restartable_pg.start()
                await execute(
                    db_dsn, "INSERT INTO public.import_job (slug, state) VALUES ('y', 'approved')"
                )
                assert (await late.wait_for_state("processing", timeout=15)).json["stable"] is False
            assert (await client.wait_for_state("processing", timeout=15)).json["stable"] is False
        await eventually(lambda: relay.listener.connected.is_set())
        async with http.get(url + "/readyz") as ready:
            assert ready.status == 200


async def test_missing_schema_keeps_the_state_unknown_and_retries(pg_admin_dsn: str) -> None:
    async with running_relay(relay_config(pg_admin_dsn)) as relay:
        await eventually(lambda: sample(relay, "relay_reconnects_total") >= 1, timeout=5)
        assert relay.stability.current.state is State.UNKNOWN
        assert not relay.listener.connected.is_set()


class ForgetfulListener(Listener):
    """Fault injection: the first LISTEN of each session skips the extra channel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped = 0  # per listener: a rerun in the same process starts from 0

    async def _listen(self, conn: Any, channels: Sequence[str]) -> None:
        if "import_job_progress" in channels and len(channels) > 1:
            self.skipped += 1
            channels = [c for c in channels if c != "import_job_progress"]
        await super()._listen(conn, channels)


async def test_heartbeat_relistens_a_missing_channel(db_dsn: str) -> None:
    config = relay_config(db_dsn, channels=["import_job_progress"])
    async with running_relay(config) as relay:
        await relay.listener.aclose()
        relay.listener = forgetful = ForgetfulListener(
            config.database,
            config.stability,
            relay.metrics,
            activities=config.activities,
            extra_channels=config.channels,
        )
        forgetful.subscribe(relay.dispatch)
        await relay.listener.start()
        await eventually(lambda: relay.listener.connected.is_set())
        assert forgetful.skipped == 1
        async with sse_connect(base_url(relay) + "/api/system-status/live") as client:
            await client.next_event()

            # The heartbeat (1 s here) notices the missing channel and LISTENs again.
            async def progress_arrives() -> bool:
                await execute(db_dsn, "SELECT pg_notify('import_job_progress', '{\"n\":1}')")
                try:
                    event = await client.next_event(timeout=0.5)
                except TimeoutError:
                    return False
                return event.event == "import_job_progress"

            await eventually(progress_arrives, timeout=10, interval=0.1)
