"""Longer variants of the fault suite: `make soak` (deselected from `make test`)."""

from __future__ import annotations

import random

import pytest

from relay.devtools.embedded import EmbeddedPostgres
from tests.scenarios.faults.test_faults import run_chaos, run_outages

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1800)]


async def test_soak_exact_after_chaos_1000_runs(secret_dsn: str) -> None:
    exact = await run_chaos(secret_dsn, random.Random(20261130), runs=1000, writers=12, kills=0.2)
    assert exact == 1000


async def test_soak_30_outages_under_2000_clients(
    restartable_pg: EmbeddedPostgres, secret_dsn: str
) -> None:
    assert await run_outages(restartable_pg, secret_dsn, clients=2000, cycles=30) >= 30
