"""Longer variants of the fault suite: `make soak` (deselected from `make test`)."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.embedded import EmbeddedPostgres
from relay.stability import State
from tests.faults.test_faults import (
    FINISH_ALL,
    START,
    _chaos_transaction,
    all_see,
    start_watchers,
    stop_watchers,
)
from tests.support import eventually, execute, relay_config, running_relay, truth

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]


async def test_soak_exact_after_chaos_1000_runs(secret_dsn: str) -> None:
    rng = random.Random(20261130)
    config = relay_config(
        secret_dsn, database={"heartbeat_interval": "60s"}, stability={"reconcile_interval": "60s"}
    )
    async with running_relay(config) as relay:
        await eventually(lambda: relay.stability.current.stable is not None)
        for run in range(1000):
            work = [_chaos_transaction(secret_dsn, rng) for _ in range(rng.randint(2, 12))]
            if rng.random() < 0.2:
                work.append(
                    execute(
                        secret_dsn,
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'stability-relay'",
                    )
                )
            if run % 10 == 9:
                work.append(
                    execute(secret_dsn, FINISH_ALL, "UPDATE worker.tasks SET state = 'completed'")
                )
            await asyncio.gather(*work)
            expected = State.from_truth(await truth(secret_dsn))
            await eventually(lambda e=expected: relay.stability.current.state is e, timeout=10)


async def test_soak_30_outages_under_2000_clients(
    restartable_pg: EmbeddedPostgres, secret_dsn: str
) -> None:
    async with running_relay(relay_config(secret_dsn)) as relay:
        await eventually(lambda: relay.stability.current.stable is True)
        session, watchers = await start_watchers(relay, 2000)
        try:
            for cycle in range(30):
                restartable_pg.stop(mode="immediate")
                await eventually(all_see(watchers, None), timeout=60)
                restartable_pg.start()
                expected = cycle % 2 == 1
                await execute(
                    secret_dsn, FINISH_ALL if expected else START.format(slug=f"s{cycle}")
                )
                await eventually(all_see(watchers, expected), timeout=60)
        finally:
            await stop_watchers(session, watchers)
