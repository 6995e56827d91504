"""Longer variants of the fault suite: `make soak` (deselected from `make test`)."""

from __future__ import annotations

import random

import pytest

from relay.embedded import EmbeddedPostgres
from tests.faults.test_faults import (
    FINISH_ALL,
    START,
    all_see,
    run_chaos,
    start_watchers,
    stop_watchers,
)
from tests.support import eventually, execute, relay_config, running_relay

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]


async def test_soak_exact_after_chaos_1000_runs(secret_dsn: str) -> None:
    exact = await run_chaos(secret_dsn, random.Random(20261130), runs=1000, writers=12, kills=0.2)
    assert exact == 1000


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
