"""Smoke test of tests/procrastinate_support: procrastinate's own schema, jobs and worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import sql

from tests.procrastinate_support import (
    ACTIVE_STATES,
    FAIL_TASK,
    SLEEP_TASK,
    apply_schema,
    busy_truth,
    defer,
    make_app,
    run_worker_until_idle,
)
from tests.support import fresh_database


@pytest.fixture
async def procrastinate_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database with procrastinate's schema; dropped afterwards."""
    async with fresh_database(pg_admin_dsn, "procrastinate") as dsn:
        await apply_schema(dsn)
        yield dsn


async def statuses(conn: psycopg.AsyncConnection[Any]) -> dict[int, str]:
    cur = await conn.execute("SELECT id, status::text FROM public.procrastinate_jobs ORDER BY id")
    return {job_id: status for job_id, status in await cur.fetchall()}


async def test_schema_has_the_table_and_enum_the_profile_names(procrastinate_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typname = 'procrastinate_job_status'"
            " ORDER BY e.enumsortorder"
        )
        labels = [label for (label,) in await cur.fetchall()]
        assert set(ACTIVE_STATES) <= set(labels)
        assert {"succeeded", "failed", "cancelled", "aborted"} <= set(labels)
        cur = await conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.procrastinate_jobs'::regclass AND attname = 'status'"
        )
        assert await cur.fetchone() == ("procrastinate_job_status",)
        assert await busy_truth(conn) is False


REPO = Path(__file__).resolve().parents[2]


async def test_the_profile_reads_what_the_schema_has(procrastinate_dsn: str) -> None:
    profile = yaml.safe_load((REPO / "relay/config/profiles/procrastinate.yaml").read_text())
    (activity,) = profile["activities"]
    assert tuple(activity["active_states"]) == ACTIVE_STATES
    fields = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(sql.SQL(expr), sql.Identifier(out))
        for out, expr in activity["details"]["fields"].items()
    )
    schema, table = activity["table"].split(".")
    query = sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s) ORDER BY {}").format(
        fields,
        sql.Identifier(schema, table),
        sql.Identifier(activity["state_column"]),
        sql.SQL(activity["details"]["order_by"]),
    )
    app = make_app(procrastinate_dsn)
    async with (
        app.open_async(),
        await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn,
    ):
        job = await defer(app, SLEEP_TASK, queue="q2", seconds=0)
        cur = await conn.execute(query, (activity["active_states"],))
        assert [desc.name for desc in cur.description or ()] == list(activity["details"]["fields"])
        rows = await cur.fetchall()
        assert [row[:4] for row in rows] == [(job, "q2", SLEEP_TASK, "todo")]


async def test_a_real_worker_takes_jobs_from_todo_through_doing_to_their_end(
    procrastinate_dsn: str,
) -> None:
    app = make_app(procrastinate_dsn)
    async with (
        app.open_async(),
        await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as listener,
    ):
        await listener.execute(
            'LISTEN procrastinate_any_queue_v1; LISTEN "procrastinate_queue_v1#q1"'
        )

        ok = await defer(app, SLEEP_TASK, queue="q1", seconds=0.3)
        bad = await defer(app, FAIL_TASK, queue="q1", seconds=0.1)
        assert await statuses(conn) == {ok: "todo", bad: "todo"}
        assert await busy_truth(conn) is True

        worker = asyncio.create_task(run_worker_until_idle(app, ["q1"], timeout=30))
        seen: set[str] = set()
        while not worker.done():
            # One snapshot for both reads, so that busy_truth must agree with the statuses.
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                now = await statuses(conn)
                assert await busy_truth(conn) is any(s in ("todo", "doing") for s in now.values())
            seen |= set(now.values())
            await asyncio.sleep(0.02)
        await worker

        assert "doing" in seen
        assert await statuses(conn) == {ok: "succeeded", bad: "failed"}
        assert await busy_truth(conn) is False

        # procrastinate notifies on insert only: two jobs on two channels, nothing at their end.
        payloads = [
            (n.channel, json.loads(n.payload)) async for n in listener.notifies(timeout=0.5)
        ]
        assert sorted((channel, p["type"], p["job_id"]) for channel, p in payloads) == sorted(
            (channel, "job_inserted", job_id)
            for job_id in (ok, bad)
            for channel in ("procrastinate_any_queue_v1", "procrastinate_queue_v1#q1")
        )


async def test_a_job_scheduled_for_later_counts_as_queued(procrastinate_dsn: str) -> None:
    app = make_app(procrastinate_dsn)
    async with (
        app.open_async(),
        await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn,
    ):
        later = await app.configure_task(SLEEP_TASK, schedule_in={"hours": 1}).defer_async()
        started = time.monotonic()
        await run_worker_until_idle(app, None, timeout=30)  # nothing ready: returns at once
        assert time.monotonic() - started < 10
        assert await statuses(conn) == {later: "todo"}
        assert await busy_truth(conn) is True

        assert await app.job_manager.cancel_job_by_id_async(later)
        assert await statuses(conn) == {later: "cancelled"}
        assert await busy_truth(conn) is False


async def test_a_worker_past_its_timeout_is_stopped_and_aborts_its_job(
    procrastinate_dsn: str,
) -> None:
    app = make_app(procrastinate_dsn)
    async with (
        app.open_async(),
        await psycopg.AsyncConnection.connect(procrastinate_dsn, autocommit=True) as conn,
    ):
        job = await defer(app, SLEEP_TASK, seconds=60)
        with pytest.raises(TimeoutError):
            await run_worker_until_idle(app, ["default"], timeout=3)
        assert await statuses(conn) == {job: "aborted"}
        assert await busy_truth(conn) is False
