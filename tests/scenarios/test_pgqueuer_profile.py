"""The pgqueuer profile: its schema created by pgqueuer's own package, jobs enqueued and run by
its own worker, and the relay following them through our triggers alone (pgqueuer's channel
is not listened to), with heartbeat and reconcile a minute away (a missed hint would fail the
test)."""

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
from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import pgqueuer_support as pgq
from tests.support import (
    HINTS_ONLY,
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


async def test_install_hints_every_statement_beside_pgqueuer_s_own_trigger(queue_dsn: str) -> None:
    async with await pgq.connect(queue_dsn) as conn:
        cursor = await conn.execute(
            "SELECT tgname, tgtype & 1 = 1 AS per_row FROM pg_trigger"
            " WHERE tgrelid = 'public.pgqueuer'::regclass AND NOT tgisinternal ORDER BY tgname"
        )
        assert await cursor.fetchall() == [
            ("system_stability_hint_delete", False),
            ("system_stability_hint_insert", False),
            ("system_stability_hint_truncate", False),
            ("system_stability_hint_update", False),
            ("tg_pgqueuer_changed", False),
        ]
        # pgqueuer's own check sees nothing to converge: our triggers are no drift to it.
        plan = await Queries(PsycopgDriver(conn)).plan_upgrade()
        assert list(plan.statements) == []


async def test_pgqueuer_s_channel_is_silent_on_updates(queue_dsn: str) -> None:
    """Why pgqueuer's channel alone would not do: its statement trigger notifies on an insert
    and a delete, never on an update (a hold, a re-queue). Notifications arrive in
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
    job's failure (picked -> failed) and its re-queue (failed -> queued) are UPDATEs, which
    pgqueuer's own channel never announces."""
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


async def hint_calls(dsn: str) -> int:
    """How many statements on the pgqueuer table have run our hint function, per PostgreSQL's
    function statistics (the test cluster tracks functions; a backend reports its counts
    within a second or so of its transaction's end)."""
    async with await pgq.connect(dsn) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
            " WHERE funcname LIKE 'system\\_stability\\_hint\\_pgqueuer\\_%'"
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def test_an_idle_worker_costs_the_relay_no_read(queue_dsn: str) -> None:
    """A worker with nothing to do runs an empty dequeue (an UPDATE of no rows) now and then
    (at most every dequeue_timeout: 1 s asked here, 30 s by default; measured here about every
    4 s) and sends its health check on ch_pgqueuer every 10 s. Our UPDATE trigger runs for
    each dequeue and sends nothing (no row changed); the relay does not listen on ch_pgqueuer.
    Over three dequeues and a health check, counted by PostgreSQL's function statistics and a
    listener of pgqueuer's channel, the relay's read count does not move and its state does
    not change. (Before, each was a read: about 8 a minute with the defaults.)"""
    async with (
        running_relay(config(queue_dsn)) as relay,
        await pgq.connect(queue_dsn) as listener,
    ):
        await listener.execute(f"LISTEN {pgq.CHANNEL}")
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        await eventually(lambda: not polling(relay))  # past the session's start-up hold
        health_checks = 0

        async def health_checked() -> bool:
            nonlocal health_checks
            async for note in listener.notifies(timeout=0.1):
                health_checks += pgq.operation(note.payload) == "health_check_event"
            return health_checks >= 1

        async def dequeued(before: int, count: int) -> bool:
            return await hint_calls(queue_dsn) >= before + count

        with transitions(relay) as seen:
            started, calls = reads(relay), await hint_calls(queue_dsn)
            async with pgq.running_worker(queue_dsn, dequeue_timeout=timedelta(seconds=1)):
                await eventually(health_checked, timeout=30)
                await eventually(lambda: dequeued(calls, 3), timeout=30)
            idle = reads(relay) - started
        dequeues = await hint_calls(queue_dsn) - calls
        print(f"idle pgqueuer worker: {dequeues} empty dequeues, {health_checks} health checks")
        assert idle == 0
        assert seen == []
        assert relay.stability.current.state is State.STABLE
