"""The river profile on a reproduction of River's job table (tests/fixtures/river.sql).

River is a Go library and cannot run here, so its work is simulated with the SQL its client
issues (riverdriver/riverpgxv5/internal/dbsqlc/river_job.sql, v0.43.0): inserts, fetches,
completions, errors with a backoff, discards, cancels, snoozes, the scheduler's staging, the
cleaner's deletes, retries by hand. At every settle point the relay, hinted by our statement
triggers alone (heartbeat and reconcile a minute away), must say what the table says: busy
exactly when some row is in an active state, overall and per activity.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.queue_profiles import Conn, QueueProfile

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

RIVER = QueueProfile(
    "river",
    table="public.river_job",
    enum_type="public.river_job_state",
    active=frozenset(ACTIVE),
)
exact = RIVER.exact
ids_in = RIVER.ids_in


@pytest.fixture
async def river_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with RIVER.database(pg_admin_dsn) as dsn:
        yield dsn


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


# -- the tests --------------------------------------------------------------------------------


async def test_the_fixture_has_rivers_facts_and_install_adds_our_statement_triggers(
    river_dsn: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(river_dsn, autocommit=True) as conn:
        assert await RIVER.enum_labels(conn) == ENUM
        assert await RIVER.state_indexes(conn) == [
            "river_job_prioritized_fetching_index",
            "river_job_state_and_finalized_at_index",
        ]
        # One statement trigger per event (transition tables allow one event each).
        assert await RIVER.triggers(conn) == [
            ("system_stability_hint_delete", True),
            ("system_stability_hint_insert", True),
            ("system_stability_hint_truncate", True),
            ("system_stability_hint_update", True),
        ]


def test_the_profile_counts_the_issues_states_and_comments_on_every_one() -> None:
    (activity,) = RIVER.activities
    assert activity.table == "public.river_job"
    assert set(activity.active_states) == ACTIVE
    assert activity.hint_triggers == ("insert", "update", "delete", "truncate")
    assert activity.hint_channels == ()
    assert RIVER.commented_states() == set(ENUM)


async def test_each_step_of_a_jobs_life_is_followed(river_dsn: str) -> None:
    async with RIVER.session(river_dsn) as (conn, relay):
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
    async with RIVER.session(river_dsn) as (conn, relay):
        for notify in (True, False):
            await insert(conn, notify=notify)
            assert await exact(relay, conn) is True
            await conn.execute("DELETE FROM public.river_job")
            assert await exact(relay, conn) is False
        await insert(conn, state="scheduled", delay="60")  # River sends nothing for it
        assert await exact(relay, conn) is True


async def _step(conn: Conn, rng: random.Random) -> None:
    """One of River's processes (rolled back by a deadlock or a serialization failure, River's
    services retry on their next tick): inserts, works, fails, cancels, stages, cleans, at
    random."""
    roll = rng.random()
    if roll < 0.3:
        state = rng.choice(["available", "available", "scheduled", "pending"])
        delay = "0.05" if state == "scheduled" else "0"
        await insert(
            conn, state=state, count=rng.randint(1, 3), delay=delay, notify=rng.random() < 0.5
        )
    elif roll < 0.65:
        outcome = rng.choice(
            ["completed", "completed", "retryable", "discarded", "cancelled", "scheduled"]
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
        picked = await RIVER.random_id(conn)
        if picked is not None:
            await (cancel(conn, picked) if rng.random() < 0.6 else retry(conn, picked))
    else:
        await clean(conn)


async def _drain_step(conn: Conn) -> bool:
    """Work everything off: stage what is due, release the parked, finish what runs."""
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
    return bool(jobs)


async def test_concurrent_writers_settle_on_the_truth(river_dsn: str) -> None:
    seen = await RIVER.writers_settle(river_dsn, _step, _drain_step)
    assert True in seen  # the writers left work behind at least once; each drain, none
