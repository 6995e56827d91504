"""procrastinate, driven through its own package, for the tests of its profile.

The schema is procrastinate's own (`App.schema_manager`), jobs are deferred and run by its own
API and worker: nothing of procrastinate is copied here. `busy_truth` is the tests' ground truth,
read straight from the jobs table.

Facts this relies on (procrastinate 3.x, `procrastinate/sql/schema.sql`):
- jobs live in `procrastinate_jobs` (created in the first schema of the search path: `public`
  in the tests' fresh databases), state in `status`, of enum `procrastinate_job_status`:
  todo, doing, succeeded, failed, cancelled, aborting (legacy), aborted;
- queued = 'todo' (including jobs whose `scheduled_at` is still ahead, e.g. retries waiting
  out their backoff), running = 'doing'; 'aborting' was "running, abort requested" before 3.0
  and is still counted as running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import procrastinate
import psycopg
from procrastinate.app import WorkerOptions

JOBS_TABLE = "public.procrastinate_jobs"
ACTIVE_STATES = ("todo", "doing", "aborting")  # as in busy_truth's query

SLEEP_TASK = "relay_tests.sleep"
FAIL_TASK = "relay_tests.fail"
FLAKY_TASK = "relay_tests.flaky"  # fails its first attempt, retried at once, then succeeds


class TaskFailedOnPurpose(Exception):
    """Raised by the FAIL_TASK job, so that procrastinate marks it 'failed'."""


def make_app(dsn: str) -> procrastinate.App:
    """An app on `dsn` with three tasks: SLEEP_TASK(seconds), FAIL_TASK(seconds) and
    FLAKY_TASK (one retry, no wait: procrastinate puts it back to todo after its first failure).

    Open it (`async with app.open_async():`) before deferring jobs or running a worker.
    """
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=4)
    )

    @app.task(name=SLEEP_TASK)
    async def sleep(seconds: float = 0.1) -> None:
        await asyncio.sleep(seconds)

    @app.task(name=FAIL_TASK)
    async def fail(seconds: float = 0.0) -> None:
        await asyncio.sleep(seconds)
        raise TaskFailedOnPurpose(f"{FAIL_TASK} fails by design")

    @app.task(
        name=FLAKY_TASK,
        pass_context=True,
        retry=procrastinate.RetryStrategy(max_attempts=1, wait=0),
    )
    async def flaky(context: procrastinate.JobContext) -> None:
        assert context.job is not None
        if context.job.attempts == 0:
            raise TaskFailedOnPurpose(f"{FLAKY_TASK} fails its first attempt")

    return app


async def apply_schema(dsn: str) -> None:
    """Create procrastinate's tables, types, functions and triggers in the database of `dsn`."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=1)
    )
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def defer(app: procrastinate.App, task: str, queue: str = "default", **kwargs: Any) -> int:
    """Defer one job of the registered `task` on `queue`; its id. `app` must be open."""
    deferrer = app.configure_task(task, allow_unknown=False, queue=queue)
    return await deferrer.defer_async(**kwargs)


async def run_worker_until_idle(
    app: procrastinate.App,
    queues: Iterable[str] | None,
    timeout: float,
    *,
    concurrency: int = 1,
) -> None:
    """Run a real worker on `queues` (None: all) until no job is ready to be fetched and the
    ones it started have ended; TimeoutError after `timeout` seconds. `app` must be open.

    Jobs in 'todo' whose `scheduled_at` is still ahead are not ready: they stay queued.
    """
    options: WorkerOptions = {
        # Stop as soon as a fetch finds no job ready, once the started ones have ended...
        "wait": False,
        # ...so the worker never waits for a notification: no LISTEN connection needed.
        "listen_notify": False,
        "concurrency": concurrency,
        "install_signal_handlers": False,
        # On the timeout the worker is cancelled: abort its jobs instead of waiting for them.
        "shutdown_graceful_timeout": 1.0,
    }
    if queues is not None:  # left out, the worker takes jobs from every queue
        options["queues"] = list(queues)
    await asyncio.wait_for(app.run_worker_async(**options), timeout)


async def busy_truth(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether any job is queued or running, read from the jobs table on `conn`.

    Use an autocommit connection, so that each call sees the latest commits.
    """
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM public.procrastinate_jobs"
        " WHERE status IN ('todo', 'doing', 'aborting'))"
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row[0])
