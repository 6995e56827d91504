"""The procrastinate profile: its schema created by procrastinate's own package, jobs deferred
and run by its own worker, and the relay following them through our triggers alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import procrastinate_support as pq
from tests.support import HINTS_ONLY, eventually, fresh_database, relay_config, running_relay

ACTIVITIES = load_profile("procrastinate").activities


@pytest.fixture
async def queue_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "procrastinate") as dsn:
        await pq.apply_schema(dsn)
        await install(dsn, activities=ACTIVITIES, profile="procrastinate")
        yield dsn


def config(dsn: str) -> Any:
    return relay_config(
        dsn, profile="procrastinate", database=HINTS_ONLY, stability={"reconcile_interval": "60s"}
    )


async def test_install_hints_with_statement_triggers_on_the_jobs_table_only(queue_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(queue_dsn, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgtype & 1 = 0 FROM pg_trigger"
            " WHERE tgname LIKE 'system\\_stability\\_hint%' ORDER BY tgname"
        )
        assert await cursor.fetchall() == [
            ("procrastinate_jobs", f"system_stability_hint_{event}", True)
            for event in ("delete", "insert", "truncate", "update")
        ]


async def test_the_relay_follows_a_real_worker_through_its_jobs(queue_dsn: str) -> None:
    app = pq.make_app(queue_dsn)
    async with await psycopg.AsyncConnection.connect(queue_dsn, autocommit=True) as conn:
        async with running_relay(config(queue_dsn)) as relay, app.open_async():
            await eventually(lambda: relay.stability.current.state is State.STABLE)
            seen: list[State] = []
            relay.stability.subscribe(lambda snapshot: seen.append(snapshot.state))

            await pq.defer(app, pq.SLEEP_TASK, seconds=0.3)
            await pq.defer(app, pq.FAIL_TASK)
            flaky = await pq.defer(app, pq.FLAKY_TASK)
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            assert await pq.busy_truth(conn) is True

            await pq.run_worker_until_idle(app, None, timeout=20)
            assert await pq.busy_truth(conn) is False
            # The flaky job failed once, went back to todo (an UPDATE), and then succeeded.
            cursor = await conn.execute(
                "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", [flaky]
            )
            assert await cursor.fetchone() == ("succeeded", 2)  # two attempts
            await eventually(lambda: relay.stability.current.state is State.STABLE, timeout=5)
            assert dict(relay.stability.current.activities) == {"jobs": False}
            assert seen == [State.PROCESSING, State.STABLE]


async def test_a_scheduled_job_keeps_it_processing_until_cancelled(queue_dsn: str) -> None:
    app = pq.make_app(queue_dsn)
    async with running_relay(config(queue_dsn)) as relay, app.open_async():
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        job = await app.configure_task(pq.SLEEP_TASK, schedule_in={"hours": 1}).defer_async()
        await eventually(lambda: relay.stability.current.state is State.PROCESSING)
        await pq.run_worker_until_idle(app, None, timeout=10)  # not due: stays queued
        assert relay.stability.current.state is State.PROCESSING
        assert await app.job_manager.cancel_job_by_id_async(job) is True
        await eventually(lambda: relay.stability.current.state is State.STABLE)


async def test_concurrent_workers_and_deferrers_settle_on_the_truth(queue_dsn: str) -> None:
    app = pq.make_app(queue_dsn)
    async with await psycopg.AsyncConnection.connect(queue_dsn, autocommit=True) as conn:
        async with running_relay(config(queue_dsn)) as relay, app.open_async():
            for _round in range(3):
                deferrers = [pq.defer(app, pq.SLEEP_TASK, seconds=0.01) for _ in range(10)]
                await asyncio.gather(
                    *deferrers, pq.run_worker_until_idle(app, None, timeout=20, concurrency=3)
                )
                truth = await pq.busy_truth(conn)
                expected = State.PROCESSING if truth else State.STABLE
                await eventually(lambda e=expected: relay.stability.current.state is e)
            await pq.run_worker_until_idle(app, None, timeout=20)
            await eventually(lambda: relay.stability.current.state is State.STABLE)
