"""The graphile-worker profile: its schema created by graphile-worker's own migrations, jobs
added with its SQL API and run by its own worker pool (npm package, tests/queues/graphile_worker),
and the relay following them on our triggers alone: heartbeat, reconcile and hold out of the
way, so a missed hint fails. "Nothing left to do" is graphile-worker's own definition, counted
over its public view (tests/graphile_worker_support.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from relay.app import Relay
from relay.config.profiles import load_profile
from relay.source.activities.check import check_activities
from relay.source.install import install
from relay.state.stability import State
from tests import graphile_worker_support as gw
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

ACTIVITIES = load_profile("graphile_worker").activities
TABLE = "graphile_worker._private_jobs"
WAIT = 30  # seconds: a job's run (a flaky job's retry comes 2.7 s after its failure)

pytestmark = pytest.mark.skipif(gw.missing() is not None, reason=gw.missing() or "")


@pytest.fixture
async def gw_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "graphile") as dsn:
        await gw.migrate(dsn)
        await install(dsn, activities=ACTIVITIES, profile="graphile_worker")
        yield dsn


def config(dsn: str) -> Any:
    """The hint path alone: heartbeat and reconcile a minute away, and no hold (a hold polls,
    which would cover a statement our triggers missed)."""
    return relay_config(
        dsn,
        profile="graphile_worker",
        database=HINTS_ONLY,
        stability={
            "reconcile_interval": "60s",
            "hold_when_busy": False,
            "hold_release_after": "0.2s",
        },
    )


async def on_hint_path(relay: Relay) -> None:
    await eventually(lambda: relay.stability.current.state is State.STABLE)
    await eventually(lambda: sample(relay, "relay_polling") == 0)


async def agreed(relay: Relay, dsn: str, conn: gw.Conn, *, busy: bool) -> None:
    """A settle point: graphile-worker has (not) work left, and the relay comes to say so,
    overall and per activity, as does the installed function."""
    assert (await gw.undone(conn) > 0) is busy, await gw.jobs(conn)

    def agrees() -> bool:
        current = relay.stability.current
        expected = State.PROCESSING if busy else State.STABLE
        return current.state is expected and dict(current.activities) == {"jobs": busy}

    await eventually(agrees, timeout=5)
    assert await truth(dsn) is not busy


async def details(relay: Relay) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url(relay) + "/api/system-status/details") as response,
    ):
        assert response.status == 200
        group: dict[str, Any] = (await response.json())["activities"]["jobs"]
        return group


async def listed(relay: Relay, expected: set[int]) -> bool:
    return {item["id"] for item in (await details(relay))["items"]} == expected


async def test_install_adds_our_triggers_and_accepts_the_owner(gw_dsn: str) -> None:
    async with await gw.connect(gw_dsn) as conn:
        cursor = await conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
            [TABLE],
        )
        assert await cursor.fetchone() == (True, False)  # graphile's RLS, no policy
        cursor = await conn.execute(
            "SELECT DISTINCT tgname FROM pg_trigger WHERE tgrelid = %s::regclass"
            " AND NOT tgisinternal AND tgname LIKE 'system_stability%%'",
            [TABLE],
        )
        assert [row[0] for row in await cursor.fetchall()]  # ours, whatever their form
        assert await check_activities(conn, ACTIVITIES, role="postgres", snippets=True) == []


async def test_graphile_s_channel_announces_inserts_only(gw_dsn: str) -> None:
    """graphile-worker's "jobs:insert" (a name hints.channels cannot hold) comes from add_job;
    a job that runs, fails and is retried, or succeeds, sends nothing: hence our triggers.
    Notifications arrive in commit order, so the marker comes right after add_job's."""
    async with (
        await gw.connect(gw_dsn) as listener,
        await gw.connect(gw_dsn) as conn,
        gw.running_worker(gw_dsn) as worker,
    ):
        await listener.execute('LISTEN "jobs:insert"')
        job = await gw.add_job(conn, gw.FLAKY, max_attempts=2)
        await eventually(lambda: worker.completed(job, failed=False), timeout=WAIT)
        await conn.execute("SELECT pg_notify('jobs:insert', 'marker')")
        payloads: list[str] = []
        async with asyncio.timeout(10), aclosing(listener.notifies()) as notes:
            async for note in notes:
                payloads.append(note.payload)
                if note.payload == "marker":
                    break
        assert len(payloads) == 2, payloads
        assert json.loads(payloads[0])["count"] == 1
        assert worker.completed(job, failed=True)  # it did fail once, silently


async def test_the_relay_follows_a_real_worker_through_its_jobs(gw_dsn: str) -> None:
    async with (
        await gw.connect(gw_dsn) as conn,
        running_relay(config(gw_dsn)) as relay,
        gw.running_worker(gw_dsn) as worker,
    ):
        await on_hint_path(relay)
        with transitions(relay) as seen:
            # Round 1: held jobs run (one on its last attempt, one in a named queue), one
            # fails for good, one fails its first attempt and is retried 2.7 s later.
            await worker.close_gate()
            last = await gw.add_job(conn, gw.HOLD, max_attempts=1)
            queued = await gw.add_job(conn, gw.HOLD, queue="serial")
            held = await gw.add_job(conn, gw.HOLD)
            await eventually(async_equal(gw.locked, conn, {last, queued, held}), timeout=WAIT)
            await agreed(relay, gw_dsn, conn, busy=True)
            assert (await gw.jobs(conn))[last][1:] == (1, 1, True)  # attempts = max, locked
            await eventually(lambda: listed(relay, {last, queued, held}), timeout=5)
            item = (await details(relay))["items"][0]
            assert set(item) == {
                "id",
                "task_identifier",
                "queue_name",
                "priority",
                "run_at",
                "attempts",
                "max_attempts",
                "locked_at",
                "locked_by",
            }
            failing = await gw.add_job(conn, gw.FAIL, max_attempts=1)
            flaky = await gw.add_job(conn, gw.FLAKY, max_attempts=2)
            await eventually(lambda: worker.completed(flaky, failed=True), timeout=WAIT)
            await worker.open_gate()
            await eventually(lambda: worker.completed(held, failed=False), timeout=WAIT)
            # Nothing runs; the flaky job waits out its retry delay, unlocked: still work.
            if not worker.completed(flaky, failed=False):
                state = await gw.jobs(conn)
                if flaky in state and not state[flaky][3]:
                    await agreed(relay, gw_dsn, conn, busy=True)
            await eventually(lambda: worker.completed(flaky, failed=False), timeout=WAIT)
            await agreed(relay, gw_dsn, conn, busy=False)
            # Failed for good: the row stays, with no attempt left, and is not work.
            assert await gw.jobs(conn) == {failing: (gw.FAIL, 1, 1, False)}

            # Round 2, scheduled: one due in a second (run then), one in an hour (work not
            # done until permanently_fail_jobs, graphile's SQL API, gives up on it).
            soon = await gw.add_job(conn, gw.OK, run_at=timedelta(seconds=1))
            later = await gw.add_job(conn, gw.OK, run_at=timedelta(hours=1))
            await agreed(relay, gw_dsn, conn, busy=True)
            await eventually(lambda: worker.completed(soon, failed=False), timeout=WAIT)
            await agreed(relay, gw_dsn, conn, busy=True)
            assert not worker.seen("start", later)
            await conn.execute(
                "SELECT graphile_worker.permanently_fail_jobs(ARRAY[%s]::bigint[])", [later]
            )
            await agreed(relay, gw_dsn, conn, busy=False)
        busy, idle = State.PROCESSING, State.STABLE
        assert [snapshot.state for snapshot in seen] == [busy, idle] * 2


def async_equal(read: Any, conn: gw.Conn, expected: Any) -> Any:
    async def check() -> bool:
        return bool(await read(conn) == expected)

    return check


async def test_a_killed_worker_s_job_stays_work_until_unlocked(gw_dsn: str) -> None:
    """No heartbeat: a worker killed mid-job leaves its lock, honoured for 4 hours. The job is
    work not done (busy) until force_unlock_workers frees it and another worker runs it."""
    async with (
        await gw.connect(gw_dsn) as conn,
        running_relay(config(gw_dsn)) as relay,
    ):
        await on_hint_path(relay)
        async with gw.running_worker(gw_dsn) as doomed:
            await doomed.close_gate()
            job = await gw.add_job(conn, gw.HOLD, max_attempts=2)
            await eventually(async_equal(gw.locked, conn, {job}), timeout=WAIT)
            # Its "start" line names the pool; under load the lock can be seen before it is read.
            await eventually(lambda: bool(doomed.pools), timeout=WAIT)
            await gw.kill(doomed)
        await agreed(relay, gw_dsn, conn, busy=True)
        cursor = await conn.execute(f"SELECT locked_by FROM {TABLE} WHERE id = %s", [job])
        row = await cursor.fetchone()
        assert row is not None and row[0] in doomed.pools
        await conn.execute("SELECT graphile_worker.force_unlock_workers(%s)", [[row[0]]])
        assert await gw.locked(conn) == set()
        await agreed(relay, gw_dsn, conn, busy=True)  # unlocked, one attempt left
        async with gw.running_worker(gw_dsn) as rescuer:
            await eventually(lambda: rescuer.completed(job, failed=False), timeout=WAIT)
            await agreed(relay, gw_dsn, conn, busy=False)


async def test_an_idle_worker_costs_the_relay_no_read(gw_dsn: str) -> None:
    """A pool with nothing due polls with an UPDATE of no row (here every 100 ms): a
    statement that changed nothing the activity sees must not make the relay read."""
    async with running_relay(config(gw_dsn)) as relay:
        await on_hint_path(relay)
        with transitions(relay) as seen:
            async with gw.running_worker(gw_dsn, poll_interval=timedelta(milliseconds=100)):
                await asyncio.sleep(0.5)  # its start: migrations checked, LISTEN, first polls
                before = reads(relay)
                await asyncio.sleep(2)
                idle = reads(relay) - before
        print(f"relay reads, idle graphile-worker pool polling every 100 ms: {idle:g} in 2 s")
        assert seen == []
        assert idle == 0


# -- row-level security: the judgement against what PostgreSQL shows each role --------------


@asynccontextmanager
async def roles(admin_dsn: str, *names: str) -> AsyncIterator[dict[str, str]]:
    """LOGIN roles with these name prefixes (unique per test), dropped afterwards."""
    unique = {name: f"{name}_{uuid.uuid4().hex[:8]}" for name in names}
    async with await gw.connect(admin_dsn) as admin:
        for role in unique.values():
            await admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield unique
    finally:
        async with await gw.connect(admin_dsn) as admin:
            for role in unique.values():
                await admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def rows_seen(conn: gw.Conn, role: str) -> int:
    """How many jobs ``role`` reads (as a SECURITY DEFINER function it owns would)."""
    async with conn.transaction(force_rollback=True):
        await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        cursor = await conn.execute(f"SELECT count(*) FROM {TABLE}")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_rls_judgement_matches_what_each_role_would_count(pg_admin_dsn: str) -> None:
    """graphile-worker migrated by an ordinary role (its tables: RLS, no policy). For each
    would-be owner of the relay's functions, the check accepts exactly when the role reads
    every job, and otherwise names the table and the fixes."""
    async with (
        roles(pg_admin_dsn, "gw_owner", "gw_member", "gw_stranger", "gw_bypass") as r,
        fresh_database(pg_admin_dsn, "graphile_rls") as dsn,
    ):
        dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        async with await gw.connect(dsn) as admin:
            owner = sql.Identifier(r["gw_owner"])
            await admin.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname), owner)
            )
            await admin.execute(
                sql.SQL("GRANT {} TO {}").format(owner, sql.Identifier(r["gw_member"]))
            )
            await admin.execute(
                sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(r["gw_bypass"]))
            )
        owner_dsn = psycopg.conninfo.make_conninfo(dsn, user=r["gw_owner"])
        await gw.migrate(owner_dsn)
        async with await gw.connect(owner_dsn) as conn:
            for task in (gw.OK, gw.HOLD):
                await gw.add_job(conn, task)
            for role in ("gw_stranger", "gw_bypass"):
                await conn.execute(
                    sql.SQL(
                        "GRANT USAGE ON SCHEMA graphile_worker TO {0};"
                        "GRANT SELECT ON ALL TABLES IN SCHEMA graphile_worker TO {0}"
                    ).format(sql.Identifier(r[role]))
                )
        async with await gw.connect(dsn) as conn:  # a superuser's, to SET ROLE to each

            async def judged(role: str) -> tuple[list[str], int]:
                problems = await check_activities(conn, ACTIVITIES, role=role)
                return problems, await rows_seen(conn, role)

            for role in ("gw_owner", "gw_member", "gw_bypass"):
                assert await judged(r[role]) == ([], 2), role
            problems, seen = await judged(r["gw_stranger"])
            assert seen == 0
            [problem] = problems
            assert problem.startswith(f"activities[0].table: {TABLE} has row-level security")
            assert "neither owns the table nor has BYPASSRLS" in problem
            assert f'install as the table\'s owner "{r["gw_owner"]}"' in problem

            await conn.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
            problems, seen = await judged(r["gw_owner"])
            assert seen == 0
            [problem] = problems
            assert "FORCE ROW LEVEL SECURITY applies the policies to it too" in problem
            assert await judged(r["gw_bypass"]) == ([], 2)  # BYPASSRLS passes even FORCE
            await conn.execute(f"ALTER TABLE {TABLE} NO FORCE ROW LEVEL SECURITY")
