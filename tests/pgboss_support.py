"""pg-boss, driven through its own npm package, for the tests of its profile.

pg-boss runs in Node: tests/queues/pgboss/worker.mjs (ours) drives a real `PgBoss` instance with
its public API, one JSON command a line on stdin and one answer a line on stdout. The schema is
pg-boss's own (its `start()` creates it), jobs are sent, fetched, completed, failed, retried,
scheduled and cancelled by pg-boss itself: nothing of pg-boss is copied here. The package comes
from tests/queues/pgboss/package-lock.json (`make queue-packages`).

Two views of "nothing left to do" are read: `BossDriver.jobs()` asks pg-boss (getQueues() and
findJobs(), not getQueueStats(), whose counts are cached by its monitor for up to a minute), and
`states()` counts the rows of pgboss.job. Facts this relies on (pg-boss 12.38.1): enum
pgboss.job_state (created, retry, active, completed, cancelled, failed); work not yet done is
created (start_after ahead included), retry and active.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

FOLDER = Path(__file__).parent / "queues" / "pgboss"
DRIVER = FOLDER / "worker.mjs"
PACKAGE = FOLDER / "node_modules" / "pg-boss" / "package.json"
ACTIVE_STATES = ("created", "retry", "active")
ANSWER_TIMEOUT = 30.0  # seconds for one command (deleteQueue may retry busy locks)
STDERR_LINES = 200  # pg-boss's own events kept for an error message (the rest dropped)

# pg-boss's intervals, tuned down so that a test takes seconds: workers poll every half second
# (pg-boss's minimum; default 2 s). The supervisor and the rest keep their defaults unless a
# test says otherwise.
FAST = {"pollingIntervalSeconds": 0.5}


def require_pgboss() -> None:
    """Skip, saying why, when node, npm or the installed package is missing (under CI,
    `make queue-packages` fails instead, before the tests run)."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: pg-boss runs on Node.js (12.x declares 22.12+)"
        )
    if not PACKAGE.exists():
        pytest.skip(
            f"pg-boss is not installed in {FOLDER}: `make queue-packages` installs it "
            "(npm ci of its package-lock.json)"
        )


class BossError(Exception):
    """The driver answered a command with an error, or stopped answering."""


class BossDriver:
    """One `node worker.mjs` process: a pg-boss instance on the database of its `start`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._next = 0
        self._lock = asyncio.Lock()

    async def call(self, op: str, **args: Any) -> Any:
        """Run one command; its result, or BossError with pg-boss's message."""
        async with self._lock:
            assert self.process.stdin is not None and self.process.stdout is not None
            self._next += 1
            line = json.dumps({"n": self._next, "op": op, "args": args}) + "\n"
            self.process.stdin.write(line.encode())
            await self.process.stdin.drain()
            try:
                raw = await asyncio.wait_for(self.process.stdout.readline(), ANSWER_TIMEOUT)
            except TimeoutError:
                raise BossError(f"{op}: no answer in {ANSWER_TIMEOUT:g} s{self._tail()}") from None
            if not raw:
                raise BossError(f"{op}: the driver ended{self._tail()}")
            answer = json.loads(raw)
            assert answer["n"] == self._next, answer
            if not answer["ok"]:
                raise BossError(f"{op}: {answer['error']}")
            return answer["result"]

    def _tail(self) -> str:
        return "; pg-boss said:\n" + "\n".join(self.stderr) if self.stderr else ""

    async def send(self, queue: str, **options: Any) -> str:
        return str(await self.call("send", name=queue, options=options))

    async def jobs(self) -> dict[str, dict[str, int]]:
        """pg-boss's own view: per queue, its jobs per state (findJobs)."""
        return dict(await self.call("jobs"))

    async def busy(self) -> bool:
        """Whether pg-boss has anything left to do: a job created, to retry, or active."""
        counts = await self.jobs()
        return any(states.get(s, 0) for states in counts.values() for s in ACTIVE_STATES)

    async def ran(self) -> list[tuple[str, str, int]]:
        """(queue, job id, retry count) as handlers started."""
        return [(str(q), str(i), int(n)) for q, i, n in await self.call("ran")]


@contextlib.asynccontextmanager
async def running_boss(dsn: str, **options: Any) -> AsyncIterator[BossDriver]:
    """pg-boss started on `dsn` (its schema created or migrated), stopped after the block."""
    require_pgboss()
    process = await asyncio.create_subprocess_exec(
        "node",
        str(DRIVER),
        cwd=FOLDER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    driver = BossDriver(process)

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            driver.stderr.append(line.decode(errors="replace").rstrip())

    collector = asyncio.create_task(collect(), name="tests-pgboss-stderr")
    try:
        await driver.call("start", connection=connection(dsn), options={**FAST, **options})
        yield driver
    finally:
        with contextlib.suppress(BossError, ConnectionError):
            await driver.call("stop")
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.wait_for(collector, 5)


def connection(dsn: str) -> dict[str, Any]:
    """node-postgres's options for a libpq DSN (it parses URLs only, not key=value strings)."""
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    names = {"host": "host", "port": "port", "dbname": "database", "user": "user"}
    options: dict[str, Any] = {
        ours: parts[theirs] for theirs, ours in names.items() if theirs in parts
    }
    if "password" in parts:
        options["password"] = parts["password"]
    if "port" in options:
        options["port"] = int(options["port"])
    return options


async def states(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, int]]:
    """The rows of pgboss.job (every partition): per queue, its jobs per state."""
    cur = await conn.execute(
        "SELECT name, state::text, count(*) FROM pgboss.job GROUP BY name, state ORDER BY 1, 2"
    )
    counts: dict[str, dict[str, int]] = {}
    for name, state, count in await cur.fetchall():
        counts.setdefault(str(name), {})[str(state)] = int(count)
    return counts


def busy_in(counts: dict[str, dict[str, int]]) -> bool:
    return any(states.get(s, 0) for states in counts.values() for s in ACTIVE_STATES)


async def partitions(conn: psycopg.AsyncConnection[Any]) -> dict[str, str]:
    """pgboss.job's partitions: table -> its bound (FOR VALUES IN (...) or DEFAULT)."""
    cur = await conn.execute(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)"
        " FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'pgboss.job'::regclass ORDER BY 1"
    )
    return {str(table): str(bound) for table, bound in await cur.fetchall()}
