"""pgqueuer, driven through its own package, for the tests of its profile.

The schema is pgqueuer's own (`Queries.install()`, what `pgq install` runs), jobs are enqueued,
run, retried, held, re-queued and cancelled by its own API and worker (`QueueManager`): nothing
of pgqueuer is copied here. Two views of "nothing left to do" are read for the tests:
`pgqueuer_idle` asks pgqueuer itself (`Queries.queue_size()`), `busy_truth` counts the rows.

Facts this relies on (pgqueuer 1.6.x, `pgqueuer/domain/schema/`, `adapters/persistence/qb.py`):
- jobs live in `pgqueuer` (created in the first schema of the search path: `public` in the
  tests' fresh databases), state in `status`, of enum `pgqueuer_status`: queued, picked,
  successful, exception, canceled, deleted, failed; the table holds queued, picked and
  (jobs held after failing for good) failed; a job that ends is deleted into `pgqueuer_log`;
- queued = waiting, `execute_after` ahead included (retries waiting out their delay);
  picked = claimed by a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from pgqueuer import DatabaseRetryEntrypointExecutor, Job, PsycopgDriver, Queries, QueueManager
from pgqueuer.executors import EntrypointExecutorParameters

CHANNEL = "ch_pgqueuer"  # pgqueuer's default (DBSettings.channel)
ACTIVE_STATES = ("queued", "picked")  # as in busy_truth's query

OK = "relay_tests.ok"  # waits for the worker's gate, then succeeds
FAIL = "relay_tests.fail"  # raises: deleted into the log as 'exception' (on_failure="delete")
FLAKY = "relay_tests.flaky"  # fails once, retried by pgqueuer's DatabaseRetryEntrypointExecutor
HOLD = "relay_tests.hold"  # waits for the gate; fails the first time (on_failure="hold")


class FailedOnPurpose(Exception):
    """Raised by the failing entrypoints."""


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection, as pgqueuer's PsycopgDriver requires."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def install_schema(dsn: str) -> None:
    """Create pgqueuer's tables, type, function and trigger in the database of `dsn`."""
    async with await connect(dsn) as conn:
        await Queries(PsycopgDriver(conn)).install()


@dataclass
class Worker:
    """A real pgqueuer worker (QueueManager) on its own connection, run as a task.

    OK and HOLD jobs wait for `gate` (open at first): close it to hold them in 'picked'.
    """

    manager: QueueManager
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    ran: list[tuple[str, int]] = field(default_factory=list)  # (entrypoint, job id) as started


def _register(worker: Worker) -> None:
    qm = worker.manager
    held_once: set[int] = set()

    @qm.entrypoint(OK)
    async def ok(job: Job) -> None:
        worker.ran.append((OK, job.id))
        await worker.gate.wait()

    @qm.entrypoint(FAIL)
    async def fail(job: Job) -> None:
        worker.ran.append((FAIL, job.id))
        raise FailedOnPurpose(f"{FAIL} fails by design")

    @qm.entrypoint(HOLD, on_failure="hold")
    async def hold(job: Job) -> None:
        worker.ran.append((HOLD, job.id))
        await worker.gate.wait()
        if job.id not in held_once:  # succeeds once re-queued
            held_once.add(job.id)
            raise FailedOnPurpose(f"{HOLD} fails the first time")

    def retrying(parameters: EntrypointExecutorParameters) -> DatabaseRetryEntrypointExecutor:
        return DatabaseRetryEntrypointExecutor(
            parameters=parameters, max_attempts=3, initial_delay=timedelta(milliseconds=200)
        )

    @qm.entrypoint(FLAKY, executor_factory=retrying)
    async def flaky(job: Job) -> None:
        worker.ran.append((FLAKY, job.id))
        if job.attempts == 0:
            raise FailedOnPurpose(f"{FLAKY} fails its first attempt")


@contextlib.asynccontextmanager
async def running_worker(
    dsn: str, dequeue_timeout: timedelta = timedelta(seconds=30)
) -> AsyncIterator[Worker]:
    """A worker running continuously (pgqueuer's default mode) until the block ends.

    It wakes on pgqueuer's channel (an insert, a delete) and otherwise polls every
    `dequeue_timeout` (pgqueuer's default: 30 s), or when a queued job's execute_after is due.
    """
    async with await connect(dsn) as conn:
        worker = Worker(QueueManager(Queries(PsycopgDriver(conn))))
        worker.gate.set()
        _register(worker)
        task = asyncio.create_task(
            worker.manager.run(dequeue_timeout=dequeue_timeout, batch_size=5),
            name="tests-pgqueuer-worker",
        )
        try:
            yield worker
        finally:
            worker.gate.set()
            worker.manager.shutdown.set()
            await asyncio.wait_for(task, timeout=15)


async def enqueue(queries: Queries, entrypoint: str, after: timedelta | None = None) -> int:
    """One job of `entrypoint`, due `after` from now (None: now); its id."""
    ids = await queries.enqueue(entrypoint, None, execute_after=after)
    return int(ids[0])


async def pgqueuer_idle(queries: Queries) -> bool:
    """pgqueuer's own view: its queue_size() counts no job queued or picked."""
    sizes = await queries.queue_size()
    return not any(size.count for size in sizes if size.status in ACTIVE_STATES)


async def busy_truth(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether any job is queued or picked, read from the jobs table on `conn` (autocommit)."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM public.pgqueuer WHERE status IN ('queued', 'picked'))"
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row[0])


async def statuses(conn: psycopg.AsyncConnection[Any]) -> dict[int, str]:
    """Every row of the jobs table: id -> status."""
    cur = await conn.execute("SELECT id, status::text FROM public.pgqueuer ORDER BY id")
    return {int(row[0]): str(row[1]) for row in await cur.fetchall()}


def operation(payload: str) -> str:
    """The `operation` of a table_changed_event pgqueuer's trigger sent; else its `type`."""
    event = json.loads(payload)
    return str(event.get("operation", event["type"]))
