"""The river profile on a reproduction of River's job table (tests/fixtures/river.sql).

River is a Go library and cannot run here, so its work is simulated with the SQL its client
issues (riverdriver/riverpgxv5/internal/dbsqlc/river_job.sql, v0.43.0): inserts, fetches,
completions, errors with a backoff, discards, cancels, snoozes, the scheduler's staging, the
cleaner's deletes, retries by hand. At every settle point the relay, hinted by our statement
triggers alone (heartbeat and reconcile a minute away), must say what the table says: busy
exactly when some row is in an active state, overall and per activity.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from relay.app import Relay
from relay.source.activities.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests.support import (
    HINTS_ONLY,
    HintLog,
    eventually,
    fresh_database,
    hint_log,
    relay_config,
    running_relay,
    sample,
)

FIXTURE = Path(__file__).parent / "fixtures" / "river.sql"
PROFILE_YAML = (
    Path(__file__).parent.parent / "relay" / "source" / "activities" / "profiles" / "river.yaml"
)
ACTIVITIES = load_profile("river").activities
ENUM = [
    "available",
    "cancelled",
    "completed",
    "discarded",
    "pending",
    "retryable",
    "running",
    "scheduled",
]
ACTIVE = {"available", "pending", "retryable", "running", "scheduled"}
MAX_ATTEMPTS = 3  # what the tests insert with

Conn = psycopg.AsyncConnection[Any]
HINTED = 2.0  # seconds: a hinted change is seen well within it, an unhinted one is not


@pytest.fixture
async def river_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "river") as dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            async with conn.transaction():
                await conn.execute(FIXTURE.read_bytes())
        await install(dsn, activities=ACTIVITIES, profile="river")
        yield dsn


def config(dsn: str) -> Any:
    """The hint path alone: heartbeat and reconcile a minute away, and no hold (a hold polls,
    which would cover a statement our triggers missed)."""
    return relay_config(
        dsn,
        profile="river",
        database=HINTS_ONLY,
        stability={
            "reconcile_interval": "60s",
            "hold_when_busy": False,
            "hold_release_after": "0.2s",  # the poll every session starts with
        },
    )


# -- River's statements, as its client sends them ---------------------------------------------


async def insert(
    conn: Conn,
    *,
    state: str = "available",
    count: int = 1,
    queue: str = "default",
    delay: str = "0",
    notify: bool = True,
) -> None:
    """JobInsertFastMany: one INSERT ... SELECT over arrays; the client's insert notification in
    the same transaction (held back by its limiter when ``notify`` is false)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO public.river_job (args, kind, max_attempts, metadata, priority, queue,"
            " scheduled_at, state, tags)"
            " SELECT '{}'::jsonb, 'email', %(max_attempts)s, '{}'::jsonb, 1, %(queue)s,"
            "  now() + %(delay)s::interval, %(state)s::public.river_job_state, '{}'"
            " FROM generate_series(1, %(count)s)",
            {
                "queue": queue,
                "delay": f"{delay} seconds",
                "state": state,
                "count": count,
                "max_attempts": MAX_ATTEMPTS,
            },
        )
        if notify and state == "available":
            await conn.execute(
                "SELECT pg_notify(concat(current_schema(), '.', 'river_insert'), %s)",
                (f'{{"queue": "{queue}"}}',),
            )


async def fetch(conn: Conn, limit: int = 1, queue: str = "default") -> list[tuple[int, int]]:
    """JobGetAvailable: lock due available jobs (SKIP LOCKED), mark them running, attempt + 1."""
    cursor = await conn.execute(
        "WITH locked AS ("
        "  SELECT id FROM public.river_job"
        "  WHERE state = 'available' AND queue = %s AND scheduled_at <= now()"
        "  ORDER BY priority, scheduled_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE public.river_job AS j SET state = 'running', attempt = j.attempt + 1,"
        "  attempted_at = now(), attempted_by = array_append(j.attempted_by, 'client-1')"
        " FROM locked WHERE j.id = locked.id RETURNING j.id, j.attempt",
        (queue, limit),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def finish(conn: Conn, job_ids: list[int], state: str, retry_in: str = "0") -> None:
    """JobSetStateIfRunningMany, the completer's batch: only rows still running change; a
    running job whose cancel was asked becomes cancelled instead of retryable or scheduled."""
    finalized = state in ("cancelled", "completed", "discarded")
    await conn.execute(
        "UPDATE public.river_job AS j SET"
        " state = CASE WHEN %(state)s IN ('retryable', 'scheduled')"
        "   AND j.metadata ? 'cancel_attempted_at' THEN 'cancelled'"
        "   ELSE %(state)s::public.river_job_state END,"
        " finalized_at = CASE WHEN %(finalized)s OR (%(state)s IN ('retryable', 'scheduled')"
        "   AND j.metadata ? 'cancel_attempted_at') THEN now() END,"
        " scheduled_at = CASE WHEN %(state)s IN ('retryable', 'scheduled')"
        "   THEN now() + %(retry_in)s::interval ELSE j.scheduled_at END,"
        " attempt = CASE WHEN %(state)s = 'scheduled' THEN j.attempt - 1 ELSE j.attempt END,"
        " errors = CASE WHEN %(state)s IN ('retryable', 'discarded')"
        "   THEN array_append(j.errors, jsonb_build_object('attempt', j.attempt, 'error', 'boom'))"
        "   ELSE j.errors END"
        " WHERE j.id = ANY(%(ids)s) AND j.state = 'running'",
        {"state": state, "finalized": finalized, "retry_in": f"{retry_in} seconds", "ids": job_ids},
    )


async def cancel(conn: Conn, job_id: int) -> None:
    """JobCancel: a job not running is cancelled at once; a running one keeps running with
    cancel_attempted_at for its client to stop; the control notification either way."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE public.river_job SET"
            " state = CASE WHEN state = 'running' THEN state ELSE 'cancelled' END,"
            " finalized_at = CASE WHEN state = 'running' THEN finalized_at ELSE now() END,"
            " metadata = jsonb_set(metadata, '{cancel_attempted_at}', to_jsonb(now()), true)"
            " WHERE id = %s AND state NOT IN ('cancelled', 'completed', 'discarded')",
            (job_id,),
        )
        await conn.execute(
            "SELECT pg_notify(concat(current_schema(), '.', 'river_control'),"
            " json_build_object('action', 'cancel', 'job_id', %s::bigint,"
            " 'queue', 'default')::text)",
            (job_id,),
        )


async def schedule(conn: Conn) -> None:
    """JobSchedule, the leader's scheduler: due scheduled and retryable jobs become available."""
    await conn.execute(
        "WITH due AS (SELECT id FROM public.river_job"
        "  WHERE state IN ('retryable', 'scheduled') AND scheduled_at <= now()"
        "  ORDER BY priority, scheduled_at, id LIMIT 10000 FOR UPDATE)"
        " UPDATE public.river_job AS j SET state = 'available' FROM due WHERE j.id = due.id"
    )


async def release_pending(conn: Conn) -> None:
    """Code outside River moving parked jobs on (River Pro's workflows do it with an UPDATE)."""
    await conn.execute(
        "UPDATE public.river_job SET state = 'available', scheduled_at = now()"
        " WHERE id IN (SELECT id FROM public.river_job WHERE state = 'pending' LIMIT 3)"
        " AND state = 'pending'"
    )


async def retry(conn: Conn, job_id: int) -> None:
    """JobRetry: a job not running goes back to available (max_attempts raised if spent)."""
    await conn.execute(
        "UPDATE public.river_job SET state = 'available', finalized_at = NULL,"
        " max_attempts = CASE WHEN attempt = max_attempts THEN max_attempts + 1"
        "  ELSE max_attempts END, scheduled_at = now()"
        " WHERE id = %s AND state <> 'running'",
        (job_id,),
    )


async def clean(conn: Conn) -> None:
    """JobDeleteBefore, the cleaner: finalized jobs go."""
    await conn.execute(
        "DELETE FROM public.river_job WHERE id IN (SELECT id FROM public.river_job"
        " WHERE state IN ('cancelled', 'completed', 'discarded') AND finalized_at < now()"
        " ORDER BY id LIMIT 1000) AND state IN ('cancelled', 'completed', 'discarded')"
    )


# -- the truth and the relay ------------------------------------------------------------------


async def active_count(conn: Conn) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM public.river_job WHERE state::text = ANY(%s)", (sorted(ACTIVE),)
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def exact(relay: Relay, conn: Conn, log: HintLog | None = None) -> bool:
    """With the writers done: the relay comes to say what the rows say, overall and per
    activity, on the hints the writes sent. On the hint path (``hint_path``), with heartbeat,
    reconcile and hold out of the way, a hint is answered within a read (50 ms), and nothing
    else makes the relay read within the bounded wait (its other reads come about 5 s
    apart here), so a statement our triggers missed fails here.
    With ``log``, it still says so once every hint committed so far has been read (the log's
    marker makes it read once more)."""
    busy = await active_count(conn) > 0

    def agrees() -> bool:
        current = relay.stability.current
        return current.state is State.from_truth(not busy) and dict(current.activities) == {
            "jobs": busy
        }

    await eventually(agrees, timeout=HINTED)
    if log is not None:
        await log.caught_up()
        assert agrees(), relay.stability.current
    await hint_path(relay)  # the next writes are seen by their hints, not by a poll
    return busy


async def hint_path(relay: Relay) -> None:
    """Past any poll (every session starts with one, a hold is one: relay/source/hold.py):
    from now on only a hint makes the relay read."""
    await eventually(lambda: relay.listener.connected.is_set())
    await eventually(lambda: sample(relay, "relay_polling") == 0)


async def ids_in(conn: Conn, state: str) -> list[int]:
    cursor = await conn.execute(
        "SELECT id FROM public.river_job WHERE state = %s::public.river_job_state ORDER BY id",
        (state,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def started(relay: Relay) -> None:
    await eventually(lambda: relay.stability.current.state is State.STABLE)
    await hint_path(relay)


# -- the tests --------------------------------------------------------------------------------


async def test_the_fixture_has_rivers_facts_and_install_adds_one_statement_trigger(
    river_dsn: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(river_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT enumlabel::text FROM pg_enum"
            " WHERE enumtypid = 'public.river_job_state'::regtype ORDER BY enumsortorder"
        )
        assert [row[0] for row in await cursor.fetchall()] == ENUM
        cursor = await conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index AS i JOIN pg_attribute AS a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = 'public.river_job'::regclass AND a.attname = 'state'"
            " ORDER BY 1"
        )
        assert [row[0] for row in await cursor.fetchall()] == [
            "river_job_prioritized_fetching_index",
            "river_job_state_and_finalized_at_index",
        ]
        cursor = await conn.execute(
            "SELECT tgname, tgtype & 1 = 0 AS per_statement FROM pg_trigger"
            " WHERE tgrelid = 'public.river_job'::regclass AND NOT tgisinternal"
        )
        assert await cursor.fetchall() == [("system_stability_hint", True)]


def test_the_profile_counts_the_issues_states_and_comments_on_every_one() -> None:
    (activity,) = ACTIVITIES
    assert activity.table == "public.river_job"
    assert set(activity.active_states) == ACTIVE
    assert activity.hint_triggers == ("insert", "update", "delete", "truncate")
    assert activity.hint_channels == ()
    commented = set(re.findall(r"^\s*# - (\w+):", PROFILE_YAML.read_text(), re.MULTILINE))
    assert commented == set(ENUM)


async def test_each_step_of_a_jobs_life_is_followed(river_dsn: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(river_dsn, autocommit=True) as conn,
        running_relay(config(river_dsn)) as relay,
    ):
        await started(relay)
        await insert(conn)  # available
        assert await exact(relay, conn) is True
        [(job, attempt)] = await fetch(conn)
        assert attempt == 1
        assert await exact(relay, conn) is True  # running
        await finish(conn, [job], "completed")
        assert await exact(relay, conn) is False

        await insert(conn, state="scheduled", delay="3600")
        assert await exact(relay, conn) is True  # not due, still work declared
        (scheduled,) = await ids_in(conn, "scheduled")
        await cancel(conn, scheduled)
        assert await exact(relay, conn) is False

        await insert(conn, state="pending")
        assert await exact(relay, conn) is True
        await release_pending(conn)
        assert await exact(relay, conn) is True  # available now
        [(job, _)] = await fetch(conn)
        await finish(conn, [job], "retryable", retry_in="-1")  # backoff already over
        assert await exact(relay, conn) is True
        await schedule(conn)
        [(job, attempt)] = await fetch(conn)
        assert attempt == 2
        await finish(conn, [job], "discarded")
        assert await exact(relay, conn) is False

        await retry(conn, job)  # discarded -> available by hand
        assert await exact(relay, conn) is True
        [(job, _)] = await fetch(conn)
        await cancel(conn, job)  # running: River leaves it running for its client
        assert await exact(relay, conn) is True
        await finish(conn, [job], "retryable")  # the client stops it: cancelled
        assert await exact(relay, conn) is False

        await insert(conn)
        [(job, _)] = await fetch(conn)
        await finish(conn, [job], "scheduled", retry_in="60")  # snoozed
        assert await exact(relay, conn) is True
        await conn.execute("TRUNCATE public.river_job")
        assert await exact(relay, conn) is False

        await insert(conn, count=3)
        for job, _ in await fetch(conn, limit=3):
            await finish(conn, [job], "completed")
        assert await exact(relay, conn) is False
        await clean(conn)
        assert await exact(relay, conn) is False


async def test_an_insert_is_seen_with_or_without_rivers_own_notification(river_dsn: str) -> None:
    """River's client notifies '<schema>.river_insert' for available inserts, but at most once
    per queue per FetchCooldown and never for scheduled or pending ones: the profile does not
    listen to it, our insert trigger hints every insert."""
    async with (
        await psycopg.AsyncConnection.connect(river_dsn, autocommit=True) as conn,
        running_relay(config(river_dsn)) as relay,
    ):
        await started(relay)
        for notify in (True, False):
            await insert(conn, notify=notify)
            assert await exact(relay, conn) is True
            await conn.execute("DELETE FROM public.river_job")
            assert await exact(relay, conn) is False
        await insert(conn, state="scheduled", delay="60")  # River sends nothing for it
        assert await exact(relay, conn) is True


async def _writer(dsn: str, seed: int, steps: int) -> None:
    """One of River's processes: inserts, works, fails, cancels, stages, cleans, at random."""
    rng = random.Random(seed)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(steps):
            try:
                roll = rng.random()
                if roll < 0.3:
                    state = rng.choice(["available", "available", "scheduled", "pending"])
                    delay = "0.05" if state == "scheduled" else "0"
                    await insert(
                        conn,
                        state=state,
                        count=rng.randint(1, 3),
                        delay=delay,
                        notify=rng.random() < 0.5,
                    )
                elif roll < 0.65:
                    outcome = rng.choice(
                        [
                            "completed",
                            "completed",
                            "retryable",
                            "discarded",
                            "cancelled",
                            "scheduled",
                        ]
                    )
                    for job, attempt in await fetch(conn, limit=rng.randint(1, 3)):
                        # The completer discards a job that failed its last attempt.
                        spent = outcome == "retryable" and attempt >= MAX_ATTEMPTS
                        await finish(conn, [job], "discarded" if spent else outcome, "0.02")
                elif roll < 0.75:
                    await schedule(conn)
                elif roll < 0.82:
                    await release_pending(conn)
                elif roll < 0.9:
                    cursor = await conn.execute(
                        "SELECT id FROM public.river_job ORDER BY random() LIMIT 1"
                    )
                    row = await cursor.fetchone()
                    if row is not None:
                        await (cancel(conn, row[0]) if rng.random() < 0.6 else retry(conn, row[0]))
                else:
                    await clean(conn)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                pass  # rolled back: River's services retry on their next tick


async def _drain(conn: Conn) -> None:
    """Work everything off: stage what is due, release the parked, finish what runs."""
    for _ in range(200):
        await conn.execute(
            "UPDATE public.river_job SET scheduled_at = now() - interval '1s'"
            " WHERE state IN ('retryable', 'scheduled')"
        )
        await schedule(conn)
        await release_pending(conn)
        jobs = [job for job, _ in await fetch(conn, limit=50)]
        await conn.execute(
            "UPDATE public.river_job SET state = 'completed', finalized_at = now()"
            " WHERE state = 'running'"
        )
        if not jobs and await active_count(conn) == 0:
            return
    raise AssertionError("the queue did not drain")


async def test_concurrent_writers_settle_on_the_truth(river_dsn: str) -> None:
    seen: set[bool] = set()
    async with (
        await psycopg.AsyncConnection.connect(river_dsn, autocommit=True) as conn,
        running_relay(config(river_dsn)) as relay,
    ):
        await started(relay)
        async with hint_log(relay, river_dsn) as log:
            for round_ in range(6):
                await asyncio.gather(
                    *(_writer(river_dsn, seed=round_ * 10 + w, steps=25) for w in range(5))
                )
                seen.add(await exact(relay, conn, log))
                if round_ % 2:
                    await _drain(conn)
                    assert await exact(relay, conn, log) is False
    assert True in seen  # the writers left work behind at least once; each drain, none
