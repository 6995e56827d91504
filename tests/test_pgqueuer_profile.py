"""The pgqueuer profile: its schema created by pgqueuer's own package, jobs enqueued and run by
its own worker, and the relay following them through pgqueuer's channel plus our UPDATE
trigger, with heartbeat and reconcile a minute away (a missed hint would fail the test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from pgqueuer import PsycopgDriver, Queries

from relay.app import Relay
from relay.source.activities.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import pgqueuer_support as pgq
from tests.support import (
    base_url,
    eventually,
    fresh_database,
    reads,
    relay_config,
    running_relay,
    sample,
    transitions,
    truth,
)

ACTIVITIES = load_profile("pgqueuer").activities
# The hint path alone: heartbeat and reconcile a minute away.
HINTS_ONLY = {"heartbeat_interval": "60s", "heartbeat_timeout": "5s"}


@pytest.fixture
async def queue_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "pgqueuer") as dsn:
        await pgq.install_schema(dsn)
        await install(dsn, activities=ACTIVITIES, profile="pgqueuer")
        yield dsn


def config(dsn: str) -> Any:
    return relay_config(
        dsn, profile="pgqueuer", database=HINTS_ONLY, stability={"reconcile_interval": "60s"}
    )


async def agreed(relay: Relay, dsn: str, queries: Queries, conn: Any, *, busy: bool) -> None:
    """A settle point: the relay says what pgqueuer's own queue_size() and the rows say."""
    expected = State.PROCESSING if busy else State.STABLE
    await eventually(lambda: relay.stability.current.state is expected, timeout=5)
    assert await pgq.pgqueuer_idle(queries) is not busy
    assert await pgq.busy_truth(conn) is busy
    assert await truth(dsn) is not busy
    assert dict(relay.stability.current.activities) == {"jobs": busy}


async def details(relay: Relay) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url(relay) + "/api/system-status/details") as response,
    ):
        assert response.status == 200
        return await response.json()


async def detailed(relay: Relay, expected: list[tuple[int, str, str]]) -> bool:
    items = (await details(relay))["activities"]["jobs"]["items"]
    return [(i["id"], i["entrypoint"], i["status"]) for i in items] == expected


def polling(relay: Relay) -> bool:
    return bool(sample(relay, "relay_polling"))


async def rows_are(conn: Any, expected: dict[int, str]) -> bool:
    return await pgq.statuses(conn) == expected


async def test_install_hints_updates_only_beside_pgqueuer_s_own_trigger(queue_dsn: str) -> None:
    async with await pgq.connect(queue_dsn) as conn:
        cursor = await conn.execute(
            "SELECT trigger_name, event_manipulation, action_orientation"
            " FROM information_schema.triggers WHERE event_object_table = 'pgqueuer'"
            " ORDER BY trigger_name, event_manipulation"
        )
        assert await cursor.fetchall() == [
            ("system_stability_hint", "UPDATE", "STATEMENT"),
            ("tg_pgqueuer_changed", "DELETE", "STATEMENT"),
            ("tg_pgqueuer_changed", "INSERT", "STATEMENT"),
            ("tg_pgqueuer_changed", "UPDATE", "STATEMENT"),
        ]
        # pgqueuer's own check sees nothing to converge: our trigger is no drift to it.
        plan = await Queries(PsycopgDriver(conn)).plan_upgrade()
        assert list(plan.statements) == []


async def test_pgqueuer_s_channel_is_silent_on_updates(queue_dsn: str) -> None:
    """Why the profile adds our UPDATE trigger: pgqueuer's statement trigger notifies on an
    insert and a delete, never on an update (a hold, a re-queue). Notifications arrive in
    commit order, so a marker sent after the update must come right after the insert's."""
    async with await pgq.connect(queue_dsn) as listener, await pgq.connect(queue_dsn) as conn:
        await listener.execute(f"LISTEN {pgq.CHANNEL}")
        queries = Queries(PsycopgDriver(conn))
        job = await pgq.enqueue(queries, pgq.HOLD)
        await conn.execute("UPDATE public.pgqueuer SET status = 'failed' WHERE id = %s", [job])
        await queries.requeue_jobs([job])  # failed -> queued, pgqueuer's own statement
        await conn.execute("SELECT pg_notify(%s, 'marker')", [pgq.CHANNEL])
        await queries.clear_queue(pgq.HOLD)  # a DELETE
        await conn.execute("SELECT pg_notify(%s, 'end')", [pgq.CHANNEL])
        payloads: list[str] = []
        async with asyncio.timeout(10), aclosing(listener.notifies()) as notes:
            async for note in notes:
                payloads.append(note.payload)
                if note.payload == "end":
                    break
        operations = [p if p in ("marker", "end") else pgq.operation(p) for p in payloads]
        assert operations == ["insert", "marker", "delete", "end"]


async def test_the_relay_follows_a_real_worker_through_its_jobs(queue_dsn: str) -> None:
    """One worker; each round ends with pgqueuer having nothing left to do. OK and HOLD jobs
    wait for the worker's gate, so that each round has a settle point while busy. The held
    job's failure (picked -> failed) and its re-queue (failed -> queued) are UPDATEs: only our
    trigger hints them."""
    async with (
        await pgq.connect(queue_dsn) as conn,
        running_relay(config(queue_dsn)) as relay,
        # A re-queue is an UPDATE, which pgqueuer's channel does not announce to its workers
        # either: they find the job at their next poll, here every second (default 30 s).
        pgq.running_worker(queue_dsn, dequeue_timeout=timedelta(seconds=1)) as worker,
    ):
        queries = Queries(PsycopgDriver(conn))
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        gate = worker.gate
        with transitions(relay) as seen:
            # Jobs that succeed, one that fails (deleted as 'exception'), one that fails once
            # and is retried by pgqueuer (back to queued, 200 ms ahead), then succeeds.
            gate.clear()
            oks = [await pgq.enqueue(queries, pgq.OK) for _ in range(3)]
            failing = await pgq.enqueue(queries, pgq.FAIL)
            flaky = await pgq.enqueue(queries, pgq.FLAKY)
            await eventually(lambda: rows_are(conn, dict.fromkeys(oks, "picked")), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=True)
            # The details of this state (one round of queries per state and cache window: an
            # earlier round of it may still list the jobs that have ended since).
            picked = [(job, pgq.OK, "picked") for job in oks]
            await eventually(lambda: detailed(relay, picked), timeout=5)
            group = (await details(relay))["activities"]["jobs"]
            assert (group["active"], group["total"]) == (True, 3)
            assert set(group["items"][0]) == {
                "id",
                "entrypoint",
                "status",
                "priority",
                "execute_after",
                "attempts",
                "heartbeat",
                "queue_manager_id",
            }
            gate.set()
            await eventually(lambda: pgq.pgqueuer_idle(queries), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=False)
            assert (pgq.FAIL, failing) in worker.ran
            assert worker.ran.count((pgq.FLAKY, flaky)) == 2
            assert await pgq.statuses(conn) == {}

            # Held: fails for good and stays in the table as 'failed'.
            gate.clear()
            held = await pgq.enqueue(queries, pgq.HOLD)
            await eventually(lambda: rows_are(conn, {held: "picked"}), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=True)
            gate.set()
            await eventually(lambda: rows_are(conn, {held: "failed"}), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=False)

            # Re-queued by pgqueuer's own API: picked again at the worker's next poll, and it
            # succeeds this time.
            gate.clear()
            await queries.requeue_jobs([held])
            await agreed(relay, queue_dsn, queries, conn, busy=True)
            await eventually(lambda: rows_are(conn, {held: "picked"}), timeout=20)
            gate.set()
            await eventually(lambda: pgq.pgqueuer_idle(queries), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=False)
            assert worker.ran.count((pgq.HOLD, held)) == 2
            assert await pgq.statuses(conn) == {}

            # Scheduled: one due in a second (the worker takes it then), one in an hour (not
            # taken: queued, so busy, until cancelled with pgqueuer's own API).
            gate.clear()
            soon = await pgq.enqueue(queries, pgq.OK, after=timedelta(seconds=1))
            later = await pgq.enqueue(queries, pgq.OK, after=timedelta(hours=1))
            await agreed(relay, queue_dsn, queries, conn, busy=True)
            expected = {soon: "picked", later: "queued"}
            await eventually(lambda: rows_are(conn, expected), timeout=20)
            gate.set()
            await eventually(lambda: rows_are(conn, {later: "queued"}), timeout=20)
            await agreed(relay, queue_dsn, queries, conn, busy=True)
            assert (pgq.OK, later) not in worker.ran
            await queries.mark_job_as_cancelled([later])  # deleted into the log as 'canceled'
            await agreed(relay, queue_dsn, queries, conn, busy=False)
        busy, idle = State.PROCESSING, State.STABLE
        assert [snapshot.state for snapshot in seen] == [busy, idle] * 4


async def test_an_idle_worker_keeps_it_stable(queue_dsn: str) -> None:
    """A worker with nothing to do (pgqueuer's defaults) sends its health check on ch_pgqueuer
    every 10 s and runs an empty dequeue (an UPDATE of no rows: our hint) as it starts and
    then every 30 s: a read each, never a state change. Its start sends both at once, which
    makes the relay hold and poll for its quiet period; then it waits for hints again."""
    async with running_relay(config(queue_dsn)) as relay:
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: not polling(relay))  # past the session's start-up hold
        with transitions(relay) as seen:
            started = reads(relay)
            async with pgq.running_worker(queue_dsn):
                # Its start: the first hints, and the hold they may cause (released once the
                # state has held still for hold_release_after, 2 s).
                await eventually(lambda: reads(relay) > started)
                await asyncio.sleep(0.5)
                await eventually(lambda: not polling(relay))
                at_start = reads(relay) - started
                steady = reads(relay)
                await asyncio.sleep(2)
                idle = reads(relay) - steady
                assert not polling(relay)
        print(f"relay reads, idle pgqueuer worker: {at_start:g} at its start, then {idle:g} in 2 s")
        assert seen == []
        assert relay.stability.current.state is State.STABLE
        # At most a health check (every 10 s) and a dequeue (every 30 s) fall in 2 s.
        assert idle <= 2
