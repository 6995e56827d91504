"""The pg-boss profile: its schema created by pg-boss's own npm package, jobs sent and run by its
own workers (tests/queues/pgboss/worker.mjs), and the relay following them on the hint path alone
(heartbeat and reconcile a minute away: a missed hint fails the test), through queues in the
shared partition, in a partition of their own, and in one created after `db install`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from relay.app import Relay
from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import pgboss_support as pgb
from tests.support import (
    HINTS_ONLY,
    eventually,
    fresh_database,
    reads,
    relay_config,
    running_relay,
    sample,
    transitions,
    truth,
)

ACTIVITIES = load_profile("pgboss").activities
SETTLE = 5.0  # seconds for the relay to follow a hinted commit

# pg-boss's background passes pushed an hour away, so that none of their writes can hint the
# relay by chance in the scenario test: the flow resolver (an UPDATE of pgboss.job every 5 s by
# default), the supervisor (pgboss.queue's counts, expiry, every 60 s by default).
NO_BACKGROUND = {
    "flowIntervalSeconds": 3600,
    "superviseIntervalSeconds": 3600,
    "monitorIntervalSeconds": 3600,
}

SHARED = "shared"  # in pgboss.job_common, made before db install
OWN = "own"  # partition: true, made before db install
LATE = "late"  # partition: true, made after db install
FLAKY = "flaky"  # job_common; its handler fails the first attempt
FAILING = "failing"  # job_common; its handler always fails: retried once, then failed


@pytest.fixture
async def queue_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A database with pg-boss's schema (made by pg-boss's start()), two queues, then our
    install: the order a deployment has."""
    pgb.require_pgboss()
    async with fresh_database(pg_admin_dsn, "pgboss") as dsn:
        async with pgb.running_boss(dsn) as boss:
            await boss.call("createQueue", name=SHARED)
            await boss.call("createQueue", name=OWN, options={"partition": True})
        await install(dsn, activities=ACTIVITIES, profile="pgboss")
        yield dsn


def config(dsn: str) -> Any:
    return relay_config(
        dsn, profile="pgboss", database=HINTS_ONLY, stability={"reconcile_interval": "60s"}
    )


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def started(relay: Relay) -> None:
    """Stable, and past the session's first poll: from here only a hint makes it read."""
    await eventually(lambda: relay.stability.current.state is State.STABLE)
    await eventually(lambda: relay.listener.connected.is_set())
    await eventually(lambda: sample(relay, "relay_polling") == 0)


async def agreed(relay: Relay, dsn: str, conn: Any, boss: pgb.BossDriver, *, busy: bool) -> None:
    """A settle point: the relay says what pg-boss's own findJobs() and the rows say."""
    expected = State.PROCESSING if busy else State.STABLE
    try:
        await eventually(lambda: relay.stability.current.state is expected, timeout=SETTLE)
    except TimeoutError:
        rows = await pgb.states(conn)
        raise AssertionError(
            f"the relay says {relay.stability.current.state.value} {SETTLE:g} s after the"
            f" commit, pg-boss's rows say {'busy' if busy else 'idle'}: {rows}"
        ) from None
    assert await boss.busy() is busy
    assert pgb.busy_in(await pgb.states(conn)) is busy
    assert await truth(dsn) is not busy
    assert dict(relay.stability.current.activities) == {"jobs": busy}


async def quiet(relay: Relay) -> None:
    """Wait until the relay holds and polls no more (a hold ends once the state has held still
    for hold_release_after, 2 s): from then on only a hint makes it read."""
    await eventually(lambda: sample(relay, "relay_polling") == 0, timeout=10)


async def states_are(conn: Any, expected: dict[str, dict[str, int]]) -> bool:
    return await pgb.states(conn) == expected


async def test_queues_live_in_partitions_and_the_read_covers_them(queue_dsn: str) -> None:
    """The facts the profile rests on: job_common is the DEFAULT partition, a `partition: true`
    queue gets its own (also one created after db install), and the generated read, on the
    parent, sees a created job in each."""
    async with await connect(queue_dsn) as conn, pgb.running_boss(queue_dsn) as boss:
        before = await pgb.partitions(conn)
        assert before.pop("job_common") == "DEFAULT"
        assert list(before.values()) == [f"FOR VALUES IN ('{OWN}')"]
        await boss.call("createQueue", name=LATE, options={"partition": True})
        after = await pgb.partitions(conn)
        assert sorted(after.values()) == sorted(
            ["DEFAULT", f"FOR VALUES IN ('{OWN}')", f"FOR VALUES IN ('{LATE}')"]
        )
        for queue in (SHARED, OWN, LATE):
            job = await boss.send(queue, startAfter=3600)
            assert await truth(queue_dsn) is False
            await boss.call("cancel", name=queue, job=job)
            assert await truth(queue_dsn) is True
        assert await pgb.states(conn) == {q: {"cancelled": 1} for q in (LATE, OWN, SHARED)}


async def signals(conn: Any) -> dict[str, Any]:
    cur = await conn.execute("SELECT public.system_stability_signals(100)")
    row = await cur.fetchone()
    assert row is not None
    return dict(row[0]["jobs"])


async def test_a_job_whose_worker_died_is_stalled(queue_dsn: str) -> None:
    """The profile's stalled condition and age column on a real job: active, its worker killed
    (a live worker fails its own job once the handler runs past expireInSeconds), past its
    expireInSeconds (1 s here; pg-boss's supervisor, which would fail it, is not running)."""
    async with await connect(queue_dsn) as conn:
        async with pgb.running_boss(queue_dsn, **NO_BACKGROUND) as boss:
            await boss.call("work", name=OWN, kind="ok")
            await boss.call("gate", open=False)
            job = await boss.send(OWN, expireInSeconds=1)
            await eventually(lambda: settled_but(conn, OWN, "active"), timeout=20)
            boss.process.kill()
        read = await signals(conn)
        assert read["depth"] == 1
        assert read["oldest_age_s"] >= 0
        await eventually(lambda: stalled_count(conn, 1), timeout=10)
        assert await settled_but(conn, OWN, "active")
        async with pgb.running_boss(queue_dsn, **NO_BACKGROUND) as boss:
            await boss.call("cancel", name=OWN, job=job)
        read = await signals(conn)
        assert (read["depth"], read["stalled"], read["oldest_age_s"]) == (0, 0, None)


async def stalled_count(conn: Any, expected: int) -> bool:
    return (await signals(conn))["stalled"] == expected


async def test_the_relay_follows_real_workers_through_their_jobs(queue_dsn: str) -> None:
    """Real workers on five queues; each round ends with pg-boss having nothing left to do.
    Handlers wait for the driver's gate, so that each round has a settle point while busy.
    Before each change of state the relay is quiet (no hold, no poll): only a hint from that
    change's own statement can make it see it."""
    async with (
        await connect(queue_dsn) as conn,
        running_relay(config(queue_dsn)) as relay,
        pgb.running_boss(queue_dsn, **NO_BACKGROUND) as boss,
    ):
        await started(relay)
        # Made after db install: a new partition, and two queues in job_common.
        await boss.call("createQueue", name=LATE, options={"partition": True})
        await boss.call("createQueue", name=FLAKY, options={"retryLimit": 2})
        await boss.call("createQueue", name=FAILING, options={"retryLimit": 1})
        await agreed(relay, queue_dsn, conn, boss, busy=False)
        for queue in (SHARED, OWN, LATE):
            await boss.call("work", name=queue, kind="ok")
        await boss.call("work", name=FLAKY, kind="flaky")
        await boss.call("work", name=FAILING, kind="fail")
        with transitions(relay) as seen:
            # In each partition: a job sent (an INSERT), held active by the gate (fetched: an
            # UPDATE), then completed (an UPDATE).
            for queue in (SHARED, OWN, LATE):
                await boss.call("gate", open=False)
                await quiet(relay)
                await boss.send(queue)
                await agreed(relay, queue_dsn, conn, boss, busy=True)
                await eventually(lambda q=queue: settled_but(conn, q, "active"), timeout=20)
                await quiet(relay)
                await boss.call("gate", open=True)
                await eventually(lambda: not_busy(boss), timeout=20)
                await agreed(relay, queue_dsn, conn, boss, busy=False)
            done = {q: {"completed": 1} for q in (LATE, OWN, SHARED)}
            assert await pgb.states(conn) == done

            # Failures: pg-boss deletes the row and inserts it again as retry (one statement),
            # fetches it again, and the flaky one completes; the failing one ends failed.
            await boss.call("gate", open=False)
            flaky = await boss.send(FLAKY)
            failing = await boss.send(FAILING)
            held = {**done, FAILING: {"active": 1}, FLAKY: {"active": 1}}
            await eventually(lambda: states_are(conn, held), timeout=20)
            await agreed(relay, queue_dsn, conn, boss, busy=True)
            await quiet(relay)
            await boss.call("gate", open=True)
            await eventually(lambda: not_busy(boss), timeout=20)
            await agreed(relay, queue_dsn, conn, boss, busy=False)
            ran = await boss.ran()
            assert [n for q, i, n in ran if (q, i) == (FLAKY, flaky)] == [0, 1]
            assert [n for q, i, n in ran if (q, i) == (FAILING, failing)] == [0, 1]
            counts = await pgb.states(conn)
            assert (counts[FLAKY], counts[FAILING]) == ({"completed": 1}, {"failed": 1})

            # Scheduled: one due in a second (run then), one in an hour (created: busy, and
            # nothing writes it when the hour comes) until cancelled with pg-boss's API.
            await quiet(relay)
            soon = await boss.send(SHARED, startAfter=1)
            later = await boss.send(OWN, startAfter=3600)
            await agreed(relay, queue_dsn, conn, boss, busy=True)
            await eventually(lambda: ran_job(boss, SHARED, soon), timeout=20)
            await eventually(lambda: settled_but(conn, OWN, "created"), timeout=20)
            await agreed(relay, queue_dsn, conn, boss, busy=True)
            assert not await ran_job(boss, OWN, later)
            await quiet(relay)
            await boss.call("cancel", name=OWN, job=later)
            await agreed(relay, queue_dsn, conn, boss, busy=False)

            # deleteAllJobs of a queue with its own table TRUNCATEs that partition (no job row
            # trigger fires, nor one of the parent's), then zeroes its counts in pgboss.queue.
            await boss.send(OWN, startAfter=3600)
            await agreed(relay, queue_dsn, conn, boss, busy=True)
            await quiet(relay)
            await boss.call("deleteAllJobs", name=OWN)
            await agreed(relay, queue_dsn, conn, boss, busy=False)
            assert OWN not in await pgb.states(conn)

            # deleteQueue drops a `partition: true` queue's table, its active job with it: no
            # job row is written; pgboss.queue's row is deleted in the same transaction.
            await boss.call("gate", open=False)
            await boss.send(LATE)
            await eventually(lambda: settled_but(conn, LATE, "active"), timeout=20)
            await agreed(relay, queue_dsn, conn, boss, busy=True)
            await boss.call("offWork", name=LATE)
            await quiet(relay)
            await boss.call("deleteQueue", name=LATE)
            await agreed(relay, queue_dsn, conn, boss, busy=False)
            assert LATE not in (await boss.jobs())
            assert f"FOR VALUES IN ('{LATE}')" not in (await pgb.partitions(conn)).values()
            await boss.call("gate", open=True)
        busy, idle = State.PROCESSING, State.STABLE
        assert [snapshot.state for snapshot in seen] == [busy, idle] * 7


async def not_busy(boss: pgb.BossDriver) -> bool:
    return not await boss.busy()


async def ran_job(boss: pgb.BossDriver, queue: str, job: str) -> bool:
    return any((q, i) == (queue, job) for q, i, _ in await boss.ran())


async def settled_but(conn: Any, queue: str, state: str) -> bool:
    """Every job has ended but one of `queue`, which is in `state`."""
    counts = await pgb.states(conn)
    left = {(q, s): n for q, by in counts.items() for s, n in by.items() if s in pgb.ACTIVE_STATES}
    return left == {(queue, state): 1}


async def test_an_idle_worker_keeps_the_relay_idle(queue_dsn: str) -> None:
    """Workers with nothing to do poll (an UPDATE of no rows on their table every half second
    here) and pg-boss's flow resolver runs an UPDATE of no rows on pgboss.job every pass (every
    5 s by default, 1 s here). None changes a job, so none may make the relay read: a hint on a
    statement that changed no row would keep it reading (and holding) for as long as pg-boss
    runs. The supervisor's own pass (queue counts in pgboss.queue, every 60 s by default) may
    fall in the window once."""
    async with running_relay(config(queue_dsn)) as relay:
        await started(relay)
        with transitions(relay) as seen:
            started_at = reads(relay)
            async with pgb.running_boss(queue_dsn, flowIntervalSeconds=1) as boss:
                for queue in (SHARED, OWN):
                    await boss.call("work", name=queue, kind="ok")
                # Its start: the supervisor's first pass, and any hold it causes.
                await asyncio.sleep(2)
                await eventually(lambda: sample(relay, "relay_polling") == 0)
                at_start = reads(relay) - started_at
                steady = reads(relay)
                await asyncio.sleep(5)
                idle = reads(relay) - steady
                polling = sample(relay, "relay_polling")
        print(f"relay reads, idle pg-boss: {at_start:g} at its start, then {idle:g} in 5 s")
        assert seen == []
        assert relay.stability.current.state is State.STABLE
        assert idle <= 1, f"{idle:g} reads in 5 s of an idle pg-boss"
        assert polling == 0, "an idle pg-boss keeps the relay holding and polling"
