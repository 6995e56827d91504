"""Statbus profile: how long a change takes to reach the relay, by what carries it.

On a reproduction of statbus's schema (tests/fixtures/statbus.sql), with the statbus profile
(no trigger of ours) and default settings (reconcile every 5 s), one real relay in this
process. Each trial makes one change and times commit → the relay's state:

- ``hinted``: a pipeline enqueued the way statbus does (its own NOTIFY on ``worker_tasks``);
- ``raw insert``: a task INSERTed without statbus's enqueue functions (no channel carries it);
- ``delete``: the pending task deleted (statbus notifies on task UPDATEs only).

The last two are caught by the reconcile alone. Each is made at a random moment of the
reconcile interval (as changes land in production), so its delay spreads over the interval;
the hinted one right after a read, so it also waits out ``min_read_interval`` (50 ms).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import psycopg

from bench.common import median, percentile
from relay.app import Relay
from relay.config import Config
from relay.config.profiles import load_profile
from relay.source.install import install
from relay.state.stability import State
from tests import statbus_driver as sb

KINDS = ("hinted", "raw insert", "delete")


@dataclass
class UnhintedResult:
    trials: int
    reconcile_s: float
    delays_ms: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, kind: str) -> tuple[float, float, float]:
        values = self.delays_ms[kind]
        return median(values), percentile(values, 90), max(values)


async def _until(relay: Relay, state: State, timeout: float) -> float:
    started = time.monotonic()
    while relay.stability.current.state is not state:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the relay did not report {state.value} within {timeout:g} s")
        await asyncio.sleep(0.002)
    return 1000 * (time.monotonic() - started)


async def _trials(dsn: str, trials: int) -> UnhintedResult:
    await sb.apply_statbus_fixture(dsn)
    await install(dsn, activities=load_profile("statbus").activities, profile="statbus")
    config = Config.model_validate(
        {
            "profile": "statbus",
            "database": {"dsn": dsn},
            "http": {"listen": "127.0.0.1:0"},
            "logging": {"level": "warning"},
        }
    )
    result = UnhintedResult(trials, config.stability.reconcile_interval, {k: [] for k in KINDS})
    relay = Relay(config)
    await relay.start()
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await _until(relay, State.STABLE, 30)
            interval = config.stability.reconcile_interval
            limit = 3 * interval
            rng = random.Random(7)
            for trial in range(trials):
                await sb.enqueue_collect_changes(conn, f"unit {trial}")
                result.delays_ms["hinted"].append(await _until(relay, State.PROCESSING, limit))
                await asyncio.sleep(rng.uniform(0, interval))
                await conn.execute("DELETE FROM worker.tasks")
                result.delays_ms["delete"].append(await _until(relay, State.STABLE, limit))
                await asyncio.sleep(rng.uniform(0, interval))
                await sb.insert_task_raw(conn, "collect_changes", "pending")
                delay = await _until(relay, State.PROCESSING, limit)
                result.delays_ms["raw insert"].append(delay)
                await conn.execute("DELETE FROM worker.tasks")
                await _until(relay, State.STABLE, limit)
    finally:
        await relay.aclose()
    return result


def run_unhinted(dsn: str, trials: int) -> UnhintedResult:
    result = asyncio.run(_trials(dsn, trials))
    for kind in KINDS:
        p50, p90, worst = result.summary(kind)
        print(f"  {kind:>10}: p50 {p50:7.1f} ms, p90 {p90:7.1f} ms, max {worst:7.1f} ms")
    return result
