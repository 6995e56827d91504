"""The oban profile on a reproduction of Oban's job table (tests/fixtures/oban.sql).

Oban is an Elixir library and cannot run here, so its work is simulated with the SQL its Basic
engine issues (lib/oban/engines/basic.ex, 2.23): inserts, fetches, completions, errors with a
backoff, discards, cancels, snoozes, the Stager's staging, the Lifeline's rescues, the Pruner's
deletes, retries by hand, and Pro's suspended jobs resumed. At every settle point the relay,
hinted by our statement triggers alone (heartbeat and reconcile a minute away), must say what
the table says: busy exactly when some row is in an active state, overall and per activity.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator

import psycopg
import pytest

from tests.queue_profiles import Conn, QueueProfile

ENUM = [
    "available",
    "suspended",
    "scheduled",
    "executing",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
]
ACTIVE = {"available", "suspended", "scheduled", "executing", "retryable"}
MAX_ATTEMPTS = 3  # what the tests insert with
NOW = "timezone('UTC', now())"  # Oban's timestamps: UTC, without a time zone

OBAN = QueueProfile(
    "oban",
    table="public.oban_jobs",
    enum_type="public.oban_job_state",
    active=frozenset(ACTIVE),
)
exact = OBAN.exact
ids_in = OBAN.ids_in


@pytest.fixture
async def oban_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with OBAN.database(pg_admin_dsn) as dsn:
        yield dsn


# -- Oban's statements, as its Basic engine and notifier send them ----------------------------


async def insert(
    conn: Conn,
    *,
    state: str = "available",
    count: int = 1,
    queue: str = "default",
    delay: str = "0",
    notify: bool = True,
) -> None:
    """insert_job / insert_all_jobs: the rows (the changeset picks scheduled for a future
    scheduled_at), then, after the insert, the engine's notify_trigger through
    Oban.Notifiers.Postgres: one pg_notify per queue of the available jobs on
    '<prefix>.oban_insert' (not sent with insert_trigger: false, nor by Oban.Notifiers.PG)."""
    await conn.execute(
        "INSERT INTO public.oban_jobs (args, meta, state, queue, worker, attempt,"
        " max_attempts, priority, scheduled_at, tags, errors)"
        f" SELECT '{{}}'::jsonb, '{{}}'::jsonb, %(state)s::public.oban_job_state, %(queue)s,"
        f"  'MyApp.Mailer', 0, {MAX_ATTEMPTS}, 0, {NOW} + %(delay)s::interval, '{{}}', '{{}}'"
        " FROM generate_series(1, %(count)s)",
        {"queue": queue, "delay": f"{delay} seconds", "state": state, "count": count},
    )
    if notify and state == "available":
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM json_array_elements_text(%s::json) AS payload",
            ("public.oban_insert", json.dumps([json.dumps({"queue": queue})])),
        )


async def fetch(conn: Conn, limit: int = 1, queue: str = "default") -> list[tuple[int, int]]:
    """fetch_jobs: a CTE of due available ids (FOR UPDATE SKIP LOCKED), set executing,
    attempt + 1, attempted_at and attempted_by, as long as attempts are left."""
    cursor = await conn.execute(
        "WITH subset AS ("
        "  SELECT id FROM public.oban_jobs WHERE state = 'available' AND queue = %s"
        "  ORDER BY priority, scheduled_at, id LIMIT %s FOR UPDATE SKIP LOCKED)"
        f" UPDATE public.oban_jobs AS j SET state = 'executing', attempted_at = {NOW},"
        "  attempted_by = ARRAY['node-1', 'producer-1'], attempt = j.attempt + 1"
        " FROM subset WHERE j.id = subset.id AND j.attempt < j.max_attempts"
        " RETURNING j.id, j.attempt",
        (queue, limit),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def complete(conn: Conn, job_id: int) -> None:
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'completed', completed_at = {NOW} WHERE id = %s",
        (job_id,),
    )


async def error(conn: Conn, job_id: int, backoff: str = "15") -> None:
    """error_job: retryable, scheduled_at pushed back by the backoff, the error recorded."""
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'retryable',"
        f" scheduled_at = {NOW} + %s::interval,"
        " errors = array_append(errors, jsonb_build_object('attempt', attempt, 'error', 'boom'))"
        " WHERE id = %s",
        (f"{backoff} seconds", job_id),
    )


async def discard(conn: Conn, job_id: int) -> None:
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'discarded', discarded_at = {NOW},"
        " errors = array_append(errors, jsonb_build_object('attempt', attempt, 'error', 'boom'))"
        " WHERE id = %s",
        (job_id,),
    )


async def snooze(conn: Conn, job_id: int, seconds: str = "60") -> None:
    """snooze_job: scheduled again, the attempt given back, meta.snoozed counted."""
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'scheduled', scheduled_at = {NOW} + %s::interval,"
        " meta = meta || jsonb_build_object('snoozed', coalesce((meta->>'snoozed')::int, 0) + 1),"
        " attempt = attempt - 1 WHERE id = %s",
        (f"{seconds} seconds", job_id),
    )


async def cancel(conn: Conn, job_id: int) -> None:
    """Oban.cancel_job (cancel_all_jobs): cancelled at once, executing jobs included; a pkill
    signal for the producer of an executing one."""
    async with conn.transaction():
        cursor = await conn.execute(
            "WITH x AS (SELECT id, state FROM public.oban_jobs WHERE id = %s"
            "  AND state NOT IN ('cancelled', 'completed', 'discarded'))"
            f" UPDATE public.oban_jobs AS j SET state = 'cancelled', cancelled_at = {NOW}"
            " FROM x WHERE j.id = x.id RETURNING x.state::text",
            (job_id,),
        )
        row = await cursor.fetchone()
    if row is not None and row[0] == "executing":
        payload = json.dumps([json.dumps({"action": "pkill", "job_id": job_id})])
        await conn.execute(
            "SELECT pg_notify(%s, payload) FROM json_array_elements_text(%s::json) AS payload",
            ("public.oban_signal", payload),
        )


async def stage(conn: Conn) -> None:
    """The Stager (leader): due scheduled and retryable jobs become available, then an insert
    notification for the queues that have available jobs."""
    await conn.execute(
        "UPDATE public.oban_jobs AS j SET state = 'available' FROM ("
        "  SELECT id FROM public.oban_jobs WHERE state IN ('scheduled', 'retryable')"
        f"  AND scheduled_at <= {NOW} ORDER BY scheduled_at DESC, id DESC LIMIT 5000) AS x"
        " WHERE j.id = x.id"
    )


async def resume(conn: Conn) -> None:
    """Oban Pro resuming suspended jobs (a workflow's dependencies done): an UPDATE."""
    await conn.execute(
        "UPDATE public.oban_jobs SET state = 'available' WHERE id IN"
        " (SELECT id FROM public.oban_jobs WHERE state = 'suspended' LIMIT 3)"
        " AND state = 'suspended'"
    )


async def rescue(conn: Conn) -> None:
    """The Lifeline plugin: executing jobs orphaned (attempted before the cut) go back to
    available with attempts left, else discarded."""
    await conn.execute(
        "UPDATE public.oban_jobs SET state = 'available'"
        f" WHERE state = 'executing' AND attempted_at < {NOW} AND attempt < max_attempts"
    )
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'discarded', discarded_at = {NOW}"
        f" WHERE state = 'executing' AND attempted_at < {NOW} AND attempt >= max_attempts"
    )


async def retry(conn: Conn, job_id: int) -> None:
    """retry_job: anything but available or executing goes back to available."""
    await conn.execute(
        "UPDATE public.oban_jobs SET state = 'available',"
        f" max_attempts = GREATEST(max_attempts, attempt + 1), scheduled_at = {NOW},"
        " completed_at = NULL, cancelled_at = NULL, discarded_at = NULL"
        " WHERE id = %s AND state NOT IN ('available', 'executing')",
        (job_id,),
    )


async def prune(conn: Conn) -> None:
    """The Pruner: ended jobs older than max_age (here: any) go."""
    await conn.execute(
        "DELETE FROM public.oban_jobs WHERE id IN (SELECT id FROM public.oban_jobs"
        f" WHERE (state = 'completed' AND scheduled_at < {NOW})"
        f"  OR (state = 'cancelled' AND cancelled_at < {NOW})"
        f"  OR (state = 'discarded' AND discarded_at < {NOW}) LIMIT 10000)"
    )


# -- the tests --------------------------------------------------------------------------------


async def test_the_fixture_has_obans_facts_and_install_adds_our_statement_triggers(
    oban_dsn: str,
) -> None:
    async with await psycopg.AsyncConnection.connect(oban_dsn, autocommit=True) as conn:
        assert await OBAN.enum_labels(conn) == ENUM
        assert await OBAN.state_indexes(conn) == [
            "oban_jobs_state_cancelled_at_index",
            "oban_jobs_state_discarded_at_index",
            "oban_jobs_state_queue_priority_scheduled_at_id_index",
        ]
        cursor = await conn.execute("SELECT obj_description('public.oban_jobs'::regclass)")
        assert await cursor.fetchone() == ("14",)
        # One statement trigger per event (transition tables allow one event each).
        assert await OBAN.triggers(conn) == [
            ("system_stability_hint_delete", True),
            ("system_stability_hint_insert", True),
            ("system_stability_hint_truncate", True),
            ("system_stability_hint_update", True),
        ]


def test_the_profile_counts_the_issues_states_and_comments_on_every_one() -> None:
    (activity,) = OBAN.activities
    assert activity.table == "public.oban_jobs"
    assert set(activity.active_states) == ACTIVE
    assert activity.hint_triggers == ("insert", "update", "delete", "truncate")
    assert activity.hint_channels == ()
    assert OBAN.commented_states() == set(ENUM)


async def test_each_step_of_a_jobs_life_is_followed(oban_dsn: str) -> None:
    async with OBAN.session(oban_dsn) as (conn, relay):
        await insert(conn)  # available
        assert await exact(relay, conn) is True
        [(job, attempt)] = await fetch(conn)
        assert attempt == 1
        assert await exact(relay, conn) is True  # executing
        await complete(conn, job)
        assert await exact(relay, conn) is False

        await insert(conn, state="scheduled", delay="3600")
        assert await exact(relay, conn) is True  # not due, still work declared
        (scheduled,) = await ids_in(conn, "scheduled")
        await cancel(conn, scheduled)
        assert await exact(relay, conn) is False

        await insert(conn, state="suspended")
        assert await exact(relay, conn) is True
        await resume(conn)
        assert await exact(relay, conn) is True  # available now
        [(job, _)] = await fetch(conn)
        await error(conn, job, backoff="-1")  # backoff already over
        assert await exact(relay, conn) is True
        await stage(conn)
        [(job, attempt)] = await fetch(conn)
        assert attempt == 2
        await discard(conn, job)
        assert await exact(relay, conn) is False

        await retry(conn, job)  # discarded -> available by hand
        assert await exact(relay, conn) is True
        [(job, _)] = await fetch(conn)
        await cancel(conn, job)  # executing: cancelled at once, the producer signalled
        assert await exact(relay, conn) is False

        await insert(conn)
        [(job, _)] = await fetch(conn)
        await snooze(conn, job)
        assert await exact(relay, conn) is True
        await conn.execute("TRUNCATE public.oban_jobs")
        assert await exact(relay, conn) is False

        await insert(conn, count=2)
        await fetch(conn, limit=2)
        await rescue(conn)  # orphaned: back to available
        assert await exact(relay, conn) is True
        for job, _ in await fetch(conn, limit=2):
            await complete(conn, job)
        assert await exact(relay, conn) is False
        await prune(conn)
        assert await exact(relay, conn) is False


async def test_an_insert_is_seen_with_or_without_obans_own_notification(oban_dsn: str) -> None:
    """Oban notifies '<prefix>.oban_insert' for available inserts only, and only through its
    Postgres notifier with insert_trigger on: the profile does not listen to it, our insert
    trigger hints every insert."""
    async with OBAN.session(oban_dsn) as (conn, relay):
        for notify in (True, False):
            await insert(conn, notify=notify)
            assert await exact(relay, conn) is True
            await conn.execute("DELETE FROM public.oban_jobs")
            assert await exact(relay, conn) is False
        await insert(conn, state="suspended")  # Oban sends nothing for it
        assert await exact(relay, conn) is True


async def _step(conn: Conn, rng: random.Random) -> None:
    """One of Oban's nodes (rolled back by a deadlock or a serialization failure, Oban's
    plugins and producers try again on their next tick): inserts, works, fails, cancels,
    stages, prunes, at random."""
    roll = rng.random()
    if roll < 0.3:
        state = rng.choice(["available", "available", "scheduled", "suspended"])
        delay = "0.05" if state == "scheduled" else "0"
        await insert(
            conn, state=state, count=rng.randint(1, 3), delay=delay, notify=rng.random() < 0.5
        )
    elif roll < 0.65:
        for job, attempt in await fetch(conn, limit=rng.randint(1, 3)):
            outcome = rng.choice([complete, complete, error, discard, cancel, snooze])
            if outcome is error and attempt >= MAX_ATTEMPTS:
                await discard(conn, job)  # the executor discards a spent job
            elif outcome is error:
                await error(conn, job, backoff="0.02")
            elif outcome is snooze:
                await snooze(conn, job, seconds="0.02")
            else:
                await outcome(conn, job)
    elif roll < 0.75:
        await stage(conn)
    elif roll < 0.82:
        await resume(conn)
    elif roll < 0.9:
        picked = await OBAN.random_id(conn)
        if picked is not None:
            await (cancel(conn, picked) if rng.random() < 0.6 else retry(conn, picked))
    else:
        await prune(conn)


async def _drain_step(conn: Conn) -> bool:
    """Work everything off: stage what is due, resume the suspended, finish what executes."""
    await conn.execute(
        f"UPDATE public.oban_jobs SET scheduled_at = {NOW} - interval '1s'"
        " WHERE state IN ('retryable', 'scheduled')"
    )
    await stage(conn)
    await resume(conn)
    jobs = [job for job, _ in await fetch(conn, limit=50)]
    await conn.execute(
        f"UPDATE public.oban_jobs SET state = 'completed', completed_at = {NOW}"
        " WHERE state = 'executing'"
    )
    return bool(jobs)


async def test_concurrent_writers_settle_on_the_truth(oban_dsn: str) -> None:
    seen = await OBAN.writers_settle(oban_dsn, _step, _drain_step)
    assert True in seen  # the writers left work behind at least once; each drain, none
