"""graphile-worker, driven through its own npm package, for the tests of its profile.

The package is installed by `make queue-packages` into tests/queues/graphile_worker/
(package-lock.json pins it); tests/queues/graphile_worker/worker.mjs is our driver of its
public API: `migrate` (runMigrations) and `run` (a worker pool with our four tasks, whose job
events it prints as JSON lines). Jobs are added with graphile's SQL API (add_job), and
"nothing left to do" is read as graphile-worker defines work not done, over its public view:
locked_at IS NOT NULL OR attempts < max_attempts.

Facts this relies on (graphile-worker 0.18.0, sql/000011-000020, dist/sql/*.js): jobs live in
graphile_worker._private_jobs; a worker locks a job (locked_at, locked_by, attempts + 1),
deletes it on success, and on failure unlocks it with run_at pushed back exp(min(attempts, 10))
seconds; one with attempts = max_attempts and no lock has failed for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

PACKAGE = Path(__file__).parent / "queues" / "graphile_worker"
DRIVER = PACKAGE / "worker.mjs"
SCHEMA = "graphile_worker"
# graphile-worker's own definition of work not done, over its public view.
UNDONE = "locked_at IS NOT NULL OR attempts < max_attempts"
EVENTS_KEPT = 1_000  # the driver's job events a test may look back on (bounded)
STDERR_KEPT = 50  # lines of the driver's stderr kept for a failure's message

OK, HOLD, FAIL, FLAKY = "ok", "hold", "fail", "flaky"  # the driver's tasks

Conn = psycopg.AsyncConnection[Any]


def missing() -> str | None:
    """Why the package cannot run here, or None."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are missing (Node.js 20 or later)"
    if not (PACKAGE / "node_modules" / "graphile-worker" / "package.json").exists():
        return f"graphile-worker is not installed in {PACKAGE}: run `make queue-packages`"
    return None


def _env(dsn: str, **settings: str) -> dict[str, str]:
    """node-postgres takes a URL; the tests' DSNs may be key=value strings."""
    parts = {k: str(v) for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()}
    user = quote(parts.get("user", ""), safe="")
    password = f":{quote(parts['password'], safe='')}" if "password" in parts else ""
    host, port = parts.get("host", "127.0.0.1"), parts.get("port", "5432")
    url = f"postgresql://{user}{password}@{host}:{port}/{quote(parts['dbname'], safe='')}"
    return {**os.environ, "DATABASE_URL": url, **settings}


async def migrate(dsn: str) -> None:
    """graphile-worker's own migrations (runMigrations), as the role of ``dsn``."""
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        "migrate",
        cwd=PACKAGE,
        env=_env(dsn),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    if process.returncode != 0:
        raise RuntimeError(f"graphile-worker migrate failed: {err.decode()}{out.decode()}")


@dataclass
class Worker:
    """A graphile-worker pool in a node process of its own (our driver's `run`)."""

    process: asyncio.subprocess.Process
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_KEPT))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pools: set[str] = field(default_factory=set)  # the ids that lock its jobs (locked_by)

    async def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        await self.process.stdin.drain()

    async def close_gate(self) -> None:
        """`hold` jobs started from now on wait (run, locked) until open_gate."""
        await self.command("close")

    async def open_gate(self) -> None:
        await self.command("open")

    def seen(self, event: str, job: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event and e["id"] == str(job)]

    def completed(self, job: int, *, failed: bool, times: int = 1) -> bool:
        return sum(e["failed"] is failed for e in self.seen("complete", job)) >= times

    def describe(self) -> str:
        return "\n".join(self.stderr)


async def _read(worker: Worker) -> None:
    assert worker.process.stdout is not None and worker.process.stderr is not None

    async def out() -> None:
        assert worker.process.stdout is not None
        async for line in worker.process.stdout:
            event = json.loads(line)
            if event["event"] == "ready":
                worker.ready.set()
            else:
                worker.events.append(event)
                if "pool" in event:
                    worker.pools.add(event["pool"])

    async def err() -> None:
        assert worker.process.stderr is not None
        async for line in worker.process.stderr:
            worker.stderr.append(line.decode(errors="replace").rstrip())

    await asyncio.gather(out(), err())


@contextlib.asynccontextmanager
async def running_worker(
    dsn: str, *, poll_interval: timedelta = timedelta(milliseconds=200), concurrency: int = 4
) -> AsyncIterator[Worker]:
    """A worker pool until the block ends (then stopped gracefully, or killed if it hangs).
    It hears graphile's jobs:insert at once, and polls every ``poll_interval`` for the rest
    (run_at come due, retries)."""
    settings = {
        "GW_POLL_INTERVAL": str(int(poll_interval.total_seconds() * 1000)),
        "GW_CONCURRENCY": str(concurrency),
    }
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        "run",
        cwd=PACKAGE,
        env=_env(dsn, **settings),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    worker = Worker(process)
    reader = asyncio.create_task(_read(worker), name="tests-graphile-worker-output")
    try:
        async with asyncio.timeout(30):
            waiting = asyncio.create_task(worker.ready.wait(), name="tests-graphile-ready")
            await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
        if not worker.ready.is_set():
            raise RuntimeError(f"graphile-worker did not start:\n{worker.describe()}")
        yield worker
    finally:
        if process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await worker.command("open")
                await worker.command("stop")
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()
        await reader


async def kill(worker: Worker) -> None:
    """SIGKILL, as a crash or an OOM kill would end it: no cleanup, its locks stay."""
    worker.process.kill()
    await worker.process.wait()


async def connect(dsn: str) -> Conn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def add_job(
    conn: Conn,
    task: str,
    *,
    run_at: timedelta | None = None,
    max_attempts: int | None = None,
    queue: str | None = None,
) -> int:
    """graphile's SQL API, add_job: one job of ``task``, due ``run_at`` from now (None: now)."""
    cursor = await conn.execute(
        f"SELECT id FROM {SCHEMA}.add_job(%(task)s, queue_name => %(queue)s,"
        " run_at => now() + %(after)s, max_attempts => %(max)s)",
        {"task": task, "queue": queue, "after": run_at or timedelta(0), "max": max_attempts},
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def undone(conn: Conn) -> int:
    """How many jobs graphile-worker has not done, by its own definition, over its view."""
    cursor = await conn.execute(f"SELECT count(*) FROM {SCHEMA}.jobs WHERE {UNDONE}")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def jobs(conn: Conn) -> dict[int, tuple[str, int, int, bool]]:
    """Every job left: id -> (task, attempts, max_attempts, locked)."""
    cursor = await conn.execute(
        f"SELECT id, task_identifier, attempts, max_attempts, locked_at IS NOT NULL"
        f" FROM {SCHEMA}.jobs ORDER BY id"
    )
    return {
        int(r[0]): (str(r[1]), int(r[2]), int(r[3]), bool(r[4])) for r in await cursor.fetchall()
    }


async def locked(conn: Conn) -> set[int]:
    return {job for job, (_, _, _, is_locked) in (await jobs(conn)).items() if is_locked}
