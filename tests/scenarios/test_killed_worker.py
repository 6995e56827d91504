"""A CI wait on a queue whose worker died mid-job ends early instead of at its timeout.

A real procrastinate worker, in its own process, takes a long job and is killed with SIGKILL:
its job stays ``doing`` and its heartbeat goes stale. The relay's signals reader (the
procrastinate profile's ``stalled`` condition, its threshold made short here) sees the job
stalled; ``stability-relay wait`` (the real command, started before the kill) exits with the
stalled code and ``/wait`` answers 409 stalled. With a small ``overdue_after`` (and the
profile's own 60 s threshold, not reached here) the same wait exits with the overdue code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest

from relay.cli.wait import EXIT_OVERDUE, EXIT_STALLED
from relay.config import Config
from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import procrastinate_support as pq
from tests.state.test_waits import cli_wait, finished
from tests.support import base_url, eventually, fresh_database, relay_config, running_relay

REPO = Path(__file__).resolve().parents[2]
PROFILE = load_profile("procrastinate").activities
# The worker beats every 0.5 s; a job whose worker missed 3 s of beats is stalled.
HEARTBEAT_S = 0.5
SHORT_STALL = "interval '3 seconds'"
FAST_SIGNALS = {"interval": "0.5s", "read_timeout": "0.4s"}

# A worker as a user runs one: procrastinate's own worker, in a process of its own.
WORKER = f"""
import asyncio, sys
from tests import procrastinate_support as pq

async def main() -> None:
    app = pq.make_app(sys.argv[1])
    async with app.open_async():
        await app.run_worker_async(
            concurrency=1, wait=True, listen_notify=False, fetch_job_polling_interval=0.2,
            update_heartbeat_interval={HEARTBEAT_S}, install_signal_handlers=False,
        )

asyncio.run(main())
"""


def jobs_activity(**changes: Any) -> dict[str, Any]:
    return {**PROFILE[0].model_dump(), **changes}


def config(dsn: str, activity: dict[str, Any]) -> Config:
    return relay_config(dsn, profile="custom", activities=[activity], signals=FAST_SIGNALS)


@pytest.fixture
async def queue_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, "killed") as dsn:
        await pq.apply_schema(dsn)
        yield dsn


async def status_of(dsn: str, job: int) -> str | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (job,))
        row = await cursor.fetchone()
        return str(row[0]) if row else None


async def wait_answer(url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/api/system-status/wait", params=params) as response,
    ):
        return response.status, await response.json()


async def worker_takes_a_long_job(dsn: str) -> tuple[asyncio.subprocess.Process, int]:
    app = pq.make_app(dsn)
    async with app.open_async():
        job = await pq.defer(app, pq.SLEEP_TASK, seconds=3600)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        dsn,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    async def doing() -> bool:
        return await status_of(dsn, job) == "doing"

    await eventually(doing, timeout=30)
    return worker, job


async def kill(worker: asyncio.subprocess.Process) -> None:
    worker.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(worker.wait(), 10) == -signal.SIGKILL


async def test_a_wait_on_a_stalled_job_of_a_killed_worker_ends_with_the_stalled_code(
    queue_dsn: str,
) -> None:
    stalled = PROFILE[0].stalled
    assert stalled is not None and "interval '60 seconds'" in stalled
    activity = jobs_activity(stalled=stalled.replace("interval '60 seconds'", SHORT_STALL))
    cfg = config(queue_dsn, activity)
    await install(queue_dsn, activities=cfg.activities, profile="custom", park=False)
    async with running_relay(cfg) as relay:
        url = base_url(relay)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        worker, job = await worker_takes_a_long_job(queue_dsn)
        try:
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            # Alive and beating: a wait goes on (past several reads of the signals).
            status, body = await wait_answer(url, until="stable", timeout="4s")
            assert (status, body["result"]) == (408, "timeout")
            assert relay.stability.current.stalled == ()
            waiting = cli_wait(url, "--timeout", "10m")
        finally:
            await kill(worker)
        code, err = await finished(waiting, timeout=120)
        assert code == EXIT_STALLED, err
        assert "Running background jobs has" in err
        assert await status_of(queue_dsn, job) == "doing", "the killed worker's job stays doing"
        status, body = await wait_answer(url, until="stable", timeout="10m")
        assert (status, body["result"]) == (409, "stalled")
        assert body["signals"][0]["activity"] == "jobs"
        # Waiting anyway is still possible.
        status, body = await wait_answer(url, until="stable", timeout="1s", end_on="none")
        assert (status, body["result"]) == (408, "timeout")


async def test_a_wait_on_an_overdue_job_ends_with_the_overdue_code(queue_dsn: str) -> None:
    cfg = config(queue_dsn, jobs_activity(overdue_after="2s"))
    await install(queue_dsn, activities=cfg.activities, profile="custom", park=False)
    async with running_relay(cfg) as relay:
        url = base_url(relay)
        await eventually(lambda: relay.stability.current.state is State.STABLE)
        worker, _job = await worker_takes_a_long_job(queue_dsn)
        try:
            await eventually(lambda: relay.stability.current.state is State.PROCESSING)
            waiting = cli_wait(url, "--timeout", "10m")
        finally:
            await kill(worker)
        code, err = await finished(waiting, timeout=120)
        assert code == EXIT_OVERDUE, err
        assert "Running background jobs is overdue: running" in err
        assert "expected within 2 s" in err
        assert relay.stability.current.stalled == (), "60 s of silence not reached"
        status, body = await wait_answer(url, until="stable", timeout="10m")
        assert (status, body["result"]) == (409, "overdue")
        assert body["signals"][0]["bound_s"] == 2.0
